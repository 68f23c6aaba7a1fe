"""Markdown tables and the number formats every report in bench/ (and the model cards) shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def fmt(v: float | None, digits: int = 1) -> str:
    """A number with fixed digits; a dash for a value that was not measured."""
    return "–" if v is None else f"{v:.{digits}f}"


def ms(seconds: float | None) -> str:
    """A duration given in seconds, as milliseconds under a second and as seconds above."""
    return "–" if seconds is None else (f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s")


def table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the header, its rule, one line per row (cells are str()-ed)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
