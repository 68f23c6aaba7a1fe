"""Sentences of a text: the one splitter the scope detector (a prompt's sentences) and documents (a text's
pieces) both use, so a sentence is the same thing wherever it is read.

A sentence ends at . ! or ? (and a closing quote or bracket) before space, or before a capital with no space
at all (joined text: "accelerating.We wouldn't"); a blank line ends one too (headings, lists). A full stop
after a title, a suffix or a Latin abbreviation ends none ("Martin Luther King Jr. speaks", "Quill Co. in
Oslo"); initials and "No." do, as CounterFact prompts follow such fragments ("Main, J. In Kalajoki, the
language spoken is").
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|(?<=[a-z][.!?])(?=[A-Z][a-z])|\n\s*\n")
_CLOSERS = "\"'”’)]"
# checked against the last few characters of a sentence only (``_TAIL``), so joining runs in linear time
# whatever the text ("Dr. " a million times)
_ABBREVIATION = re.compile(r"(?<![^\s(])(?:Mr|Mrs|Ms|Dr|Prof|Jr|Sr|St|Inc|Ltd|Co|Corp|vs|etc|e\.g|i\.e)\.$")
_TAIL = 8  # longer than any abbreviation above, with the character before it


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, stripped of surrounding white space, in order."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in [*_BOUNDARY.finditer(text), None]:
        end = m.start() if m is not None else len(text)
        if m is not None and m.group(0)[:1] in _CLOSERS:  # a closing quote belongs to its sentence
            end += len(m.group(0)) - len(m.group(0).lstrip(_CLOSERS))
        seg = text[pos:end]
        s, e = pos + len(seg) - len(seg.lstrip()), pos + len(seg.rstrip())
        if e > s:
            if spans and _ABBREVIATION.search(text, max(spans[-1][0], spans[-1][1] - _TAIL), spans[-1][1]):
                spans[-1] = (spans[-1][0], e)  # "Dr. Smith" is not two sentences
            else:
                spans.append((s, e))
        pos = m.end() if m is not None else len(text)
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences' texts; a text with none (white space only) is its own one sentence."""
    return [text[s:e] for s, e in sentence_spans(text)] or [text]
