"""Document pieces as facts: their ids, the source keys of their metadata, and which piece continues which.

The writer (``service.documents``) and the reader (``service.recall``) both use this module, so a piece is
named, described and linked to the piece before it in one place.

Piece ``i`` of document ``d`` is the fact ``d-i`` with metadata ``{document, title, piece, start, end}``
(``text[start:end]`` is the piece), plus ``continues: i - 1`` when it opens with a pronoun in the paragraph of
the piece before it ("Orla Fennimore grew up in Oslo. She learned the bassoon in Reykjavik."): a query reads
it with that piece, which names what "She" is.
"""

from __future__ import annotations

from typing import Any

from models.chunking import PARAGRAPH, Piece
from models.text import opens_with_pronoun

SOURCE_KEYS = ("document", "title", "piece", "start", "end", "continues")  # where a piece came from


def piece_id(doc_id: str, i: int) -> str:
    """The fact id of a document's piece ``i`` (fixed, so a resumed ingest writes each piece exactly once)."""
    return f"{doc_id}-{i}"


def piece_metadata(doc_id: str, title: str | None, pieces: list[Piece], i: int, text: str) -> dict[str, Any]:
    """The metadata piece ``i`` of ``pieces`` (split from ``text``) is written with."""
    p = pieces[i]
    return {"document": doc_id, "title": title, "piece": i, "start": p.start, "end": p.end} | (
        {"continues": i - 1} if _continues(pieces, i, text) else {})


def _continues(pieces: list[Piece], i: int, text: str) -> bool:
    """Whether piece ``i`` opens with a pronoun in the paragraph of the piece before it."""
    if i == 0 or not opens_with_pronoun(pieces[i].text):
        return False
    return not PARAGRAPH.search(text[pieces[i - 1].end : pieces[i].start])


def is_piece(metadata: dict[str, Any]) -> bool:
    """Whether metadata is a piece's, as ``piece_metadata`` writes it (clients cannot set ``document``:
    ``service.limits``; a fact stored before that rule with a ``document`` key of its own is no piece)."""
    return (isinstance(metadata.get("document"), str)
            and all(type(metadata.get(k)) is int for k in ("piece", "start", "end"))
            and (metadata.get("title") is None or isinstance(metadata.get("title"), str)))


def source_of(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """What an answer cites of a recalled fact: its ``SOURCE_KEYS`` for a piece, None for a plain fact."""
    return {k: metadata.get(k) for k in SOURCE_KEYS} if is_piece(metadata) else None


def continued_id(metadata: dict[str, Any]) -> str | None:
    """The id of the piece a piece continues (None: it stands alone, or is no piece)."""
    before = metadata.get("continues")
    return piece_id(metadata["document"], before) if type(before) is int and is_piece(metadata) else None
