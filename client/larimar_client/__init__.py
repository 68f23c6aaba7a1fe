"""Typed client for the Larimar service: ``Larimar`` (sync) and ``AsyncLarimar`` (async), one method per route.

    from larimar_client import Larimar
    with Larimar("http://127.0.0.1:8000", api_key=None) as lm:
        lm.write("demo", "The capital of France is Lyon.")
        print(lm.query("demo", "What is the capital of France?").answer)

Every error response raises ``LarimarError`` carrying the status and the service's message.
"""

from larimar_client.client import AsyncLarimar, Larimar
from larimar_client.types import (
    Answer,
    CandidateScore,
    Document,
    Fact,
    FactPage,
    LarimarError,
    MemoryInfo,
    MemorySummary,
    RecalledFact,
    Scores,
)

__all__ = ["Answer", "AsyncLarimar", "CandidateScore", "Document", "Fact", "FactPage", "Larimar", "LarimarError",
           "MemoryInfo", "MemorySummary", "RecalledFact", "Scores"]
