"""Peer editing methods, benchmark-only: they edit the LLM's weights and never enter the service.

Every baseline edits one shared ``models.llm.CausalLM`` in place and is evaluated
through that same model (``llm.score`` / ``llm.generate``), exactly as the
unedited model is, so the only difference between rows is the edit method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EditRequest:
    """One fact to teach: ``prompt`` (subject already filled in) should continue with ``target_new``."""

    prompt: str  # "The mother tongue of Danielle Darrieux is"
    subject: str  # "Danielle Darrieux" (a substring of prompt; ROME edits at its last token)
    target_new: str  # "English"
    target_true: str  # "French" (what the model should stop saying; may be "" when unknown)


class WeightEditor(Protocol):
    """A method that changes the model's weights (or hooks) to make an edit."""

    name: str

    def apply(self, request: EditRequest) -> None:
        """Make one edit on top of all earlier ones (sequential editing calls this N times)."""

    def reset(self) -> None:
        """Undo every edit: the model is bit-for-bit the unedited one again."""
