"""The answer bias: a logits processor that steers generation to the words a recalled fact adds.

It is a policy over token ids, not part of the LLM: the decoders decide which spans to push (from the
fact and the prompt) and the LLM only applies it while decoding, so it lives apart from both.
"""

from __future__ import annotations

from torch import Tensor
from transformers import LogitsProcessor

Spelling = tuple[int, ...]  # one way to write a phrase as tokens
Span = tuple[Spelling, ...]  # a phrase and its spellings (alone, as a turn's first word, or after a space)


class AnswerBias(LogitsProcessor):
    """Adds ``strength`` to the logit of the next token of each row's answer spans, one span token at a time.

    What a recalled fact says that the question does not is where the answer is; a 135M model shown the
    fact still often restates the question or its old belief. A span's first token (in any spelling) is
    boosted until it is said; then only its next token, and so on. The span is done when it is complete
    or when the answer leaves it, so it is never pushed twice ("Vienna Vienna"). Rows without spans are
    untouched: an out-of-scope answer stays the plain model's to the bit.

    Two rules keep the answer a sentence (issue 26: measured with ``bench.generation.fluency``, 40 of 282
    held-out answers read as salad without them): a spelling that opens without a space (``glued``, a span
    as the answer's first word) may start only the answer, never inside a word ("Dor" + "geologist"); and
    once one span is said in full the row's other spans are left alone, so the words the question lacks
    besides the answer are not pushed after it ("Veou Wytalmar CEO", "currency pound ... the pound").
    """

    def __init__(self, spans: list[list[Span]], strength: float, glued: frozenset[int] = frozenset()) -> None:
        self.spans = spans  # per row, its answer spans
        self.strength = strength
        self.glued = glued  # first tokens of spellings without a leading space: only the answer's first token
        # per row and span: (which spelling is under way or None, tokens of it said, done)
        self.state = [[(None, 0, False)] * len(row) for row in spans]
        self.started = False

    def _advance(self, last: list[int]) -> None:
        for row, spans in enumerate(self.spans):
            for j, span in enumerate(spans):
                spelling, k, done = self.state[row][j]
                if done:
                    continue
                if spelling is None:
                    hit = next((i for i, sp in enumerate(span) if sp[0] == last[row]), None)
                    if hit is not None:
                        self.state[row][j] = (hit, 1, len(span[hit]) == 1)
                elif span[spelling][k] == last[row]:
                    self.state[row][j] = (spelling, k + 1, k + 1 == len(span[spelling]))
                else:  # the answer went another way: leave it be
                    self.state[row][j] = (spelling, k, True)
            if any(sp is not None and k == len(span[sp]) for span, (sp, k, _) in zip(spans, self.state[row],
                                                                                      strict=True)):
                self.state[row] = [(sp, k, True) for sp, k, _ in self.state[row]]  # one span said: the answer

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # input_ids: (B, T) prompt and answer so far, scores: (B, V)
        first = not self.started  # the first call sees the prompt only
        if not first:
            self._advance(input_ids[:, -1].tolist())
        self.started = True
        for row, spans in enumerate(self.spans):
            toks: set[int] = set()
            for span, (spelling, k, done) in zip(spans, self.state[row], strict=True):
                if not done and spelling is None:
                    toks |= {sp[0] for sp in span if first or sp[0] not in self.glued}
                elif not done:
                    toks.add(span[spelling][k])
            toks = {t for t in toks if t < scores.shape[1]}
            if toks:
                scores[row, sorted(toks)] += self.strength
        return scores
