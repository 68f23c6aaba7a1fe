"""The systems under test, behind one small interface so every protocol and metric is shared.

A system edits (one case at a time), forgets where it can, resets to the unedited model, and
answers two kinds of evaluation calls in bulk: score candidates after a prompt, and generate a
greedy answer. Systems that only change what the LLM reads (unedited, oracle, the service's
context decoding, weight editors) are ``TextSystem``s and share batched LLM calls; the HTTP
system sends the service's own routes one request at a time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from larimar_client import Larimar
from tqdm import tqdm

from bench.baselines import WeightEditor
from bench.baselines.rag import Pipeline
from models.decoders import ContextDecoder, Decoder, Readout
from models.llm import CausalLM, ContinuationScore
from models.loading import LoadedModels
from service.app import build_editor, decoder_choice
from service.editor import Editor
from service.settings import Settings
from training.data import Case


@dataclass(frozen=True)
class ScoreItem:
    case: Case
    prompt: str
    candidates: list[str]


@dataclass(frozen=True)
class Scored:
    scores: list[ContinuationScore]
    in_scope: bool | None = None  # None: the system has no scope decision
    retrieved: bool | None = None  # whether the case's own fact reached the LLM (service only)


@dataclass(frozen=True)
class Answer:
    text: str
    in_scope: bool | None = None
    retrieved: bool | None = None


class System(Protocol):
    name: str

    def edit(self, case: Case) -> None: ...

    def forget(self, case: Case) -> None: ...

    def reset(self) -> None: ...

    def fill(self, texts: Sequence[str]) -> None: ...

    def score(self, items: Sequence[ScoreItem]) -> list[Scored]: ...

    def generate(self, items: Sequence[tuple[Case, str]], max_new_tokens: int) -> list[Answer]: ...


def chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@dataclass(frozen=True)
class Conditioning:
    readout: Readout | None
    in_scope: bool | None = None
    retrieved: bool | None = None


class TextSystem:
    """A system whose edits change only what the (possibly weight-edited) LLM reads: batched evaluation."""

    name = "unedited"

    def __init__(self, llm: CausalLM, batch: int = 32, decoder: Decoder | None = None) -> None:
        self.llm, self.batch = llm, batch
        self.decoder: Decoder = decoder or ContextDecoder()

    def condition(self, case: Case, prompt: str) -> Conditioning:
        return Conditioning(None)

    def edit(self, case: Case) -> None:
        pass

    def forget(self, case: Case) -> None:
        raise NotImplementedError(f"{self.name} cannot forget one edit")

    def reset(self) -> None:
        pass

    def fill(self, texts: Sequence[str]) -> None:
        raise NotImplementedError(f"{self.name} has no memory to fill")

    def score(self, items: Sequence[ScoreItem]) -> list[Scored]:
        out = []
        for part in chunks(items, self.batch):
            conds = [self.condition(it.case, it.prompt) for it in part]
            reqs = [(it.prompt, it.candidates, c.readout) for it, c in zip(part, conds, strict=True)]
            for s, c in zip(self.decoder.score_batch(self.llm, reqs), conds, strict=True):
                out.append(Scored(s, c.in_scope, c.retrieved))
        return out

    def generate(self, items: Sequence[tuple[Case, str]], max_new_tokens: int) -> list[Answer]:
        out = []
        for part in chunks(items, self.batch):
            conds = [self.condition(case, prompt) for case, prompt in part]
            reqs = [(prompt, c.readout) for (_, prompt), c in zip(part, conds, strict=True)]
            for g, c in zip(self.decoder.generate_batch(self.llm, reqs, max_new_tokens), conds, strict=True):
                out.append(Answer(g.text, c.in_scope, c.retrieved))
        return out


class Oracle(TextSystem):
    """The case's own new fact always in the prompt: context decoding with perfect scope and retrieval."""

    name = "oracle"

    def condition(self, case: Case, prompt: str) -> Conditioning:
        return Conditioning(Readout(torch.empty(0), (case.fact,)))


class Service(TextSystem):
    """The service's editor in process: real memory, scope detector, store and its decoder (context by default)."""

    def __init__(self, models: LoadedModels, settings: Settings | None = None, batch: int = 32,
                 decoder: str = "context") -> None:
        self.settings = settings or Settings(store_url=f"file://{tempfile.mkdtemp(prefix='larimar-bench-')}",
                                             decoder=decoder)
        self.editor: Editor = build_editor(self.settings, models)
        self.choice = decoder_choice(self.settings)  # which adapter, for the run's record
        super().__init__(models.llm, batch, self.editor.decoder)
        self.name = f"larimar-{self.editor.decoder.name}"
        self.memory, self.generation, self.fact_ids, self.filled = "bench-0", 0, {}, False

    def edit(self, case: Case) -> None:
        (fact,) = self.editor.add_facts(self.memory, [(case.fact, {"case_id": case.case_id})]).facts
        self.fact_ids[case.case_id] = fact.id

    def forget(self, case: Case) -> None:
        self.editor.forget(self.memory, self.fact_ids.pop(case.case_id))

    def reset(self) -> None:
        if self.fact_ids or self.filled:
            self.editor.delete_memory(self.memory)
        self.generation += 1
        self.memory, self.fact_ids, self.filled = f"bench-{self.generation}", {}, False

    def fill(self, texts: Sequence[str]) -> None:
        """Facts that are no edit of the run, written in batches as the batch route writes them."""
        for part in tqdm(list(chunks(texts, self.settings.max_batch_facts)), desc="filler", unit="batch"):
            self.editor.add_facts(self.memory, [(t, None) for t in part])
        self.filled = True

    def condition(self, case: Case, prompt: str) -> Conditioning:
        if not self.fact_ids:
            return Conditioning(None, False, False)
        recall = self.editor.recall(self.memory, prompt, "auto")
        retrieved = case.fact in recall.readout.facts if recall.readout else False
        return Conditioning(recall.readout, recall.in_scope, retrieved)


class Retrieval(TextSystem):
    """The retrieval pipeline users would build instead (``bench.baselines.rag``): the top facts by cosine in the
    prompt of every query, through the service's context decoder, with or without its answer bias."""

    def __init__(self, llm: CausalLM, pipeline: Pipeline, batch: int = 32) -> None:
        super().__init__(llm, batch, pipeline.decoder)
        self.pipeline, self.rag, self.name, self.fact_ids = pipeline, pipeline.rag, pipeline.name, {}

    def config(self) -> dict:
        return self.pipeline.config()

    def edit(self, case: Case) -> None:
        (self.fact_ids[case.case_id],) = self.rag.add([case.fact])

    def forget(self, case: Case) -> None:
        self.rag.forget(self.fact_ids.pop(case.case_id))

    def reset(self) -> None:
        self.rag.reset()
        self.fact_ids = {}

    def fill(self, texts: Sequence[str]) -> None:
        for part in tqdm(list(chunks(texts, 256)), desc="filler", unit="batch"):
            self.rag.add(part)

    def condition(self, case: Case, prompt: str) -> Conditioning:
        readout = self.pipeline.readout(prompt)
        return Conditioning(readout, readout is not None, readout is not None and case.fact in readout.facts)


class WeightEdited(TextSystem):
    """A peer method that edits the LLM's weights; evaluated through the same plain LLM calls as the base."""

    def __init__(self, llm: CausalLM, method: WeightEditor, batch: int = 32) -> None:
        super().__init__(llm, batch)
        self.method, self.name = method, method.name

    def config(self) -> dict:
        """The method's scalar settings, recorded with every run so a result names what produced it."""
        return {k: v for k, v in vars(self.method).items() if isinstance(v, int | float | str) and k != "name"}

    def edit(self, case: Case) -> None:
        self.method.apply(case.request)

    def reset(self) -> None:
        self.method.reset()


class Http:
    """The running service over its REST routes, through the Python client: the same protocol, checkable
    from outside."""

    name = "larimar-http"

    def __init__(self, client: Larimar, memory_mode: str = "auto") -> None:
        self.memory_mode = memory_mode  # "off" asks the same server for the unedited model's answers
        self.client = client
        self.memory, self.generation, self.fact_ids, self.filled = "bench-http-0", 0, {}, False
        if memory_mode == "off":  # the routes need an existing memory even when they do not read it
            self.memory = "bench-http-unedited"
            client.write(self.memory, "This memory only exists so the benchmark can query with memory off.")

    @staticmethod
    def connect(url: str, api_key: str | None = None, timeout: float = 120.0) -> Larimar:
        return Larimar(url, api_key=api_key, timeout=timeout)

    def edit(self, case: Case) -> None:
        self.fact_ids[case.case_id] = self.client.write(self.memory, case.fact).id

    def forget(self, case: Case) -> None:
        self.client.forget(self.memory, self.fact_ids.pop(case.case_id))

    def reset(self) -> None:
        if self.fact_ids or self.filled:
            self.client.delete_memory(self.memory)
        self.generation += 1
        self.memory, self.fact_ids, self.filled = f"bench-http-{self.generation}", {}, False

    def fill(self, texts: Sequence[str], batch: int = 256) -> None:
        for part in tqdm(list(chunks(texts, batch)), desc="filler", unit="batch"):
            self.client.write_batch(self.memory, part)
        self.filled = True

    def score(self, items: Sequence[ScoreItem]) -> list[Scored]:
        out = []
        for it in items:
            r = self.client.score(self.memory, it.prompt, it.candidates, self.memory_mode)
            scores = [ContinuationScore(s.candidate, s.logprob, s.n_tokens, tuple(s.predicted_token_ids),
                                        round(s.token_accuracy * s.n_tokens)) for s in r.scores]
            out.append(Scored(scores, r.in_scope, any(f.text == it.case.fact for f in r.facts)))
        return out

    def generate(self, items: Sequence[tuple[Case, str]], max_new_tokens: int) -> list[Answer]:
        out = []
        for case, prompt in items:
            r = self.client.query(self.memory, prompt, max_new_tokens, self.memory_mode)
            out.append(Answer(r.answer, r.in_scope, any(f.text == case.fact for f in r.facts)))
        return out
