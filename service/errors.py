"""The refusals every layer raises, and the HTTP status each becomes (``service/app.py`` maps them).

They live apart from the code that raises them so that routes, MCP, the OpenAI surface, transfer and
documents can name a refusal without importing the editor or the registry.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """The request is well-formed JSON but breaks a limit or rule: 422, nothing changed."""


class NotFound(LookupError):
    """No such memory, fact or document: 404."""


class Conflict(ValueError):
    """The request clashes with what the memory holds (an imported fact id it already has): 409, nothing
    changed."""


class Busy(RuntimeError):
    """Every LLM slot is taken and the queue is full (``service.admission``): 503 with ``Retry-After``, nothing
    changed."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds


class Lagging(Busy):
    """A request asked for a memory at an operation the store does not hold yet (``Larimar-Seq``,
    service/replicas.py): 503 with ``Retry-After``."""


class NoMemory(LookupError):
    """A write that may not create its memory found none (deleted meanwhile)."""


class DuplicateFact(ValueError):
    """A fact written under an id the memory already holds (imports and document pieces keep their ids)."""


def no_such_memory(memory: str) -> NotFound:
    """The 404 for a memory that does not exist, worded once."""
    return NotFound(f"memory {memory!r} does not exist (it is created by its first write)")
