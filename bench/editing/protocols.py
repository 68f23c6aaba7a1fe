"""Single, sequential and forgetting protocols, with resumable per-case result files.

Every run writes ``<stem>.cases.jsonl`` (one evaluated case per line, appended as it goes, so a rerun
skips what is done) and ``<stem>.json`` (the summary: metrics, time per edit, peak memory, machine).
A rerun of a sequential or forgetting run replays its edits first: their state lives in the process.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import torch
from tqdm import tqdm

from bench.editing.metrics import Reference, candidates, evaluate
from bench.editing.systems import ScoreItem, System, chunks
from training.data import Case

log = logging.getLogger(__name__)


def peak_memory_mib() -> dict[str, float]:
    out = {"rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class CaseLog:
    """Append-only JSONL of evaluated cases; what is already in it is not evaluated again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        self.done = {r["case_id"] for r in self.records}

    def add(self, records: Sequence[dict]) -> None:
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        self.records += records
        self.done |= {r["case_id"] for r in records}


def _timed_edit(system: System, case: Case) -> float:
    t = time.perf_counter()
    system.edit(case)
    return time.perf_counter() - t


def single(system: System, cases: Sequence[Case], ref: Reference, gen_tokens: int, log_: CaseLog,
           deadline: float = math.inf) -> list[float]:
    """Each edit alone on the unedited model, evaluated, then undone (the papers' main tables).

    Stops starting new cases at ``deadline`` (time.time()); the log keeps what was done for a later resume.
    """
    times = [r["edit_s"] for r in log_.records]
    for case in tqdm([c for c in cases if c.case_id not in log_.done], desc=f"{system.name} single"):
        if time.time() > deadline:
            break
        system.reset()
        dt = _timed_edit(system, case)
        log_.add([evaluate(system, [case], ref, gen_tokens)[0] | {"edit_s": dt}])
        times.append(dt)
    system.reset()
    return times


def sequential(system: System, cases: Sequence[Case], eval_cases: Sequence[Case], ref: Reference, gen_tokens: int,
               log_: CaseLog, batch_cases: int = 32, deadline: float = math.inf,
               filler: Sequence[str] = ()) -> list[float]:
    """All edits into one model or memory, one at a time, then every evaluated case (the hard setting).

    ``filler`` facts go into the memory first, so the edits are read back from among that many others.
    Past ``deadline`` no further edit starts; the cases edited by then are all evaluated, and the caller
    reports the N actually reached.
    """
    system.reset()
    if filler:
        system.fill(filler)
    times = []
    for case in tqdm(cases, desc=f"{system.name} edits"):
        if time.time() > deadline:
            break
        times.append(_timed_edit(system, case))
    edited = {c.case_id for c in cases[: len(times)]}
    todo = [c for c in eval_cases if c.case_id not in log_.done and c.case_id in edited]
    for part in tqdm(list(chunks(todo, batch_cases)), desc=f"{system.name} evaluate"):
        log_.add(evaluate(system, part, ref, gen_tokens))
    system.reset()
    return times


def forgetting(system: System, cases: Sequence[Case], unedited: System, sample: int) -> dict:
    """Write N facts, forget one, then half: recall of the forgotten should fall to the unedited level."""
    system.reset()
    times = [_timed_edit(system, c) for c in tqdm(cases, desc=f"{system.name} edits")]
    half = len(cases) // 2
    forgotten, kept = cases[:half], cases[half:]
    step = max(1, half // sample)
    f_sample, k_sample = forgotten[::step][:sample], kept[::step][:sample]

    def recall(which: Sequence[Case], on: System) -> dict:
        """ES on the rewrite prompts only: whether each fact is still (or no longer) what the model says."""
        items = [ScoreItem(c, c.request.prompt, candidates(c, "rewrite")) for c in which]
        wins = [s.scores[0].mean_logprob > s.scores[1].mean_logprob for s in on.score(items)]
        return {"n_cases": len(wins), "ES": round(100 * sum(wins) / len(wins), 2)}

    out: dict = {"n_written": len(cases), "before": {"to_forget": recall(f_sample, system),
                                                     "kept": recall(k_sample, system)}}
    t = time.perf_counter()
    system.forget(cases[0])
    forget_s = time.perf_counter() - t
    out["forget_one"] = {"forgotten": recall([cases[0]], system), "kept": recall(k_sample, system),
                         "forget_s": round(forget_s, 5)}
    t = time.perf_counter()
    for c in tqdm(forgotten[1:], desc=f"{system.name} forget half"):
        system.forget(c)
    per_fact = (time.perf_counter() - t) / max(half - 1, 1)
    out["forget_half"] = {"forgotten": recall(f_sample, system), "kept": recall(k_sample, system),
                          "forget_s_per_fact": round(per_fact, 5)}
    out["unedited"] = {"forgotten_sample": recall(f_sample, unedited)}
    out["edit_s_median"] = round(median(times), 5)
    system.reset()
    return out
