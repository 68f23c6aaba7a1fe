"""What the latent decoder learns from: facts as the service would store them, and the prompts that test them.

Sources (``../shared/data``), never the reported records:
- CounterFact case_id >= 10000: a counterfactual edit, its paraphrase and a neighbourhood prompt
  (another subject, same relation) whose answer must stay the true one.
- The 1,000 zsRE training records: a question, its new answer, a rephrasing and an unrelated question.
- ROME's known_1000: true facts, so that memory agreeing with the model keeps it where it was.
- WikiText-2 (raw validation text): sentences to reconstruct from their own latents (the paper's term).

Each example yields rows (context text, target text, weight) for the decoder its adapter serves: "latent"
(the bare prompt; only the prefix knows the fact) or "hybrid" (the facts also in the prompt, as the context
decoder shows them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.decoders import ContextDecoder, Readout
from models.llm import CausalLM
from training.data import KNOWN, WIKITEXT, counterfact, fact_sentence, wiki_sentences, zsre


@dataclass(frozen=True)
class Example:
    """One fact to write and the prompts that test it."""

    text: str  # the sentence written into memory; its latent conditions the decoder
    prompt: str
    target: str  # what memory says
    paraphrase: str | None = None
    neighbour: str | None = None
    neighbour_truth: str | None = None
    question: bool = False  # a question (zsRE): a chat answer is the target alone


@dataclass(frozen=True)
class Row:
    example: int  # index of the example whose fact's latent conditions this row
    context: str
    target: str
    weight: float = 1.0


def load_examples(data: Path, wikitext_sentences: int = 2000, seed: int = 0) -> list[Example]:
    examples = []
    for c in counterfact(data, "train") + zsre(data, "train"):
        r = c.request
        examples.append(Example(c.fact, r.prompt, r.target_new, c.paraphrases[0], c.neighbours[0],
                                c.neighbour_truth, question=c.dataset == "zsre"))
    for k in json.loads((data / KNOWN).read_text()):
        examples.append(Example(fact_sentence(k["prompt"], k["attribute"]), k["prompt"], k["attribute"]))
    examples += [Example(s, "", s) for s in wiki_sentences(data / WIKITEXT[0], wikitext_sentences, seed)]
    return examples


class RowBuilder:
    """Training rows for one example, as the decoder will see it at run time."""

    def __init__(self, llm: CausalLM, examples: list[Example]) -> None:
        self.llm, self.examples, self.text = llm, examples, ContextDecoder()
        self.start = llm.tokenizer.bos_token or llm.tokenizer.eos_token or "\n"

    def latent_rows(self, i: int) -> list[Row]:
        f = self.examples[i]
        if not f.prompt:  # reconstruction of a plain sentence from its latent alone
            return [Row(i, self.start, f.target, 0.5)]
        rows = [Row(i, f.prompt, f.target), Row(i, self.start, f.text, 0.25)]
        rows += self._tests(i, None)
        return rows

    def hybrid_rows(self, i: int, distractor: int | None) -> list[Row]:
        f = self.examples[i]
        shown = (f.text,) if distractor is None else (f.text, self.examples[distractor].text)
        readout = Readout(latent=None, facts=shown)  # type: ignore[arg-type] - only the texts are read here
        rows = [Row(i, self.text.scoring_prefix(self.llm, f.prompt, readout), f.target)]
        return rows + self._tests(i, readout)

    def _tests(self, i: int, readout: Readout | None) -> list[Row]:
        """The fact's paraphrase, a neighbour that must keep its true answer, and a chat-form answer."""
        f, rows = self.examples[i], []
        if f.paraphrase:
            rows.append(Row(i, self.text.scoring_prefix(self.llm, f.paraphrase, readout), f.target))
        if f.neighbour and f.neighbour_truth:
            rows.append(Row(i, self.text.scoring_prefix(self.llm, f.neighbour, readout), f.neighbour_truth))
        answer = f.target if f.question else fact_sentence(f.prompt, f.target)
        eot = self.llm.tokenizer.eos_token or ""  # the chat turn ends, so answers stop where the base model's do
        rows.append(Row(i, self.text.generation_text(self.llm, f.prompt, readout), answer + eot))
        return rows
