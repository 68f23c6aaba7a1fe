"""Peer editing methods, benchmark-only: they edit the LLM's weights and never enter the service.

Every baseline edits one shared ``models.llm.CausalLM`` in place and is evaluated
through that same model (``llm.score_batch`` / ``llm.generate_batch``), exactly as the
unedited model is, so the only difference between rows is the edit method.
"""

from __future__ import annotations

from typing import Protocol

from training.data import EditRequest


class WeightEditor(Protocol):
    """A method that changes the model's weights (or hooks) to make an edit."""

    name: str

    def apply(self, request: EditRequest) -> None:
        """Make one edit on top of all earlier ones (sequential editing calls this N times)."""

    def reset(self) -> None:
        """Undo every edit: the model is bit-for-bit the unedited one again."""
