"""A long text -> pieces the encoder reads whole, each with its character offsets in the text.

Two ways, chosen by ``bench.documents`` (docs/benchmarks.md, "Long inputs"):

- ``sentences``: one piece per sentence. A fact stated in one sentence gets a latent of its own, which the
  query lands next to; a sentence past the encoder's window is cut at word boundaries into windows.
- ``chunks``: sentences packed, in order, into pieces of at most ``max_tokens`` encoder tokens (fewer
  pieces, each latent an average over more text).

Offsets are into the text as given (``text[start:end] == piece.text``), so a recalled piece cites the exact
span it came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from models.sentences import sentence_spans

Chunking = Literal["sentences", "chunks"]
CountTokens = Callable[[list[str]], list[int]]  # texts -> how many tokens the encoder reads of each

_WORD = re.compile(r"\S+")
PARAGRAPH = re.compile(r"\n\s*\n")  # what separates paragraphs
MIN_WORDS = 4  # a shorter sentence ("[1]", "Thanks.") joins the next: alone it is a latent about nothing


@dataclass(frozen=True)
class Piece:
    text: str
    start: int  # offset of its first character in the document
    end: int  # one past its last


def _joined_short(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sentences of fewer than ``MIN_WORDS`` words joined to the next (the last ones to the one before)."""
    merged: list[tuple[int, int]] = []
    carry: int | None = None  # start of short sentences waiting for the next
    for s, e in spans:
        s = s if carry is None else carry
        if len(_WORD.findall(text[s:e])) < MIN_WORDS:
            carry = s
            continue
        carry = None
        merged.append((s, e))
    if carry is not None:  # short sentences at the end: onto the last piece, or alone if there is none
        merged = [*merged[:-1], (merged[-1][0], spans[-1][1])] if merged else [(carry, spans[-1][1])]
    return merged


def _windows(text: str, start: int, end: int, max_tokens: int, count: CountTokens) -> list[tuple[int, int]]:
    """A span past ``max_tokens`` cut at word boundaries into consecutive spans that fit."""
    words = [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]
    per_word = count([text[s:e] for s, e in words])
    out, first, used = [], 0, 0
    for i, n in enumerate(per_word):
        if used + n > max_tokens and i > first:
            out.append((words[first][0], words[i - 1][1]))
            first, used = i, 0
        used += n
    out.append((words[first][0], words[-1][1]))
    return out


def _char_windows(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """A span past ``max_chars`` cut into consecutive spans that fit, at the last white space that keeps each
    within the limit (a run of more than ``max_chars`` without one is cut where the limit falls). Each step
    looks at ``max_chars`` characters once: linear in the span."""
    out: list[tuple[int, int]] = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        cut = max(cut, text.rfind("\n", start + 1, start + max_chars + 1))
        stop = cut if cut > start else start + max_chars
        out.append((start, stop))
        start = stop
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        out.append((start, end))
    return out


def split_document(text: str, chunking: Chunking, max_tokens: int, count: CountTokens,
                   max_chars: int | None = None) -> list[Piece]:
    """The pieces of ``text``, in order, none over ``max_tokens`` by ``count`` (the encoder's tokenizer) nor
    over ``max_chars`` characters (a fact's limit: a "word" of a million characters is one unknown token to the
    encoder, but every prompt that recalls it would carry all of it)."""
    spans = _joined_short(text, sentence_spans(text))
    if max_chars is not None:
        spans = [w for s, e in spans for w in _char_windows(text, s, e, max_chars)]
    sizes = count([text[s:e] for s, e in spans]) if spans else []
    fitted: list[tuple[int, int, int]] = []  # (start, end, tokens), each within max_tokens
    for (s, e), n in zip(spans, sizes, strict=True):
        if n <= max_tokens:
            fitted.append((s, e, n))
        else:
            cut = _windows(text, s, e, max_tokens, count)
            fitted += [(a, b, m) for (a, b), m in zip(cut, count([text[a:b] for a, b in cut]), strict=True)]
    if chunking == "chunks":
        packed: list[tuple[int, int, int]] = []
        for s, e, n in fitted:
            if packed and packed[-1][2] + n <= max_tokens and (max_chars is None or e - packed[-1][0] <= max_chars):
                packed[-1] = (packed[-1][0], e, packed[-1][2] + n)
            else:
                packed.append((s, e, n))
        fitted = packed
    return [Piece(text[s:e], s, e) for s, e, _ in fitted]
