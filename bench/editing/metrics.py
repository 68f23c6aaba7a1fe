"""Per-case measurements and their summary, as defined in larimar.md section 7.

CounterFact, per prompt: success (ES/PS: mean token log-likelihood of target_new above target_true; NS: the
true neighbour answer still above target_new), magnitude (the same difference in probability, with
P = exp(mean token log-likelihood)), and generation (the greedy answer contains target_new; for a
neighbourhood prompt it is the answer the unedited model gives).
zsRE, per prompt: token accuracy of ``alt`` after ``src`` / ``rephrase`` (teacher forced, argmax), and
locality: the share of ``loc_ans`` positions where the edited model's argmax equals the unedited one's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import harmonic_mean, mean

from bench.editing.systems import Answer, Scored, ScoreItem, System
from training.data import Case

KINDS = ("rewrite", "paraphrase", "neighbour")


@dataclass(frozen=True)
class Reference:
    """What the unedited model does on the neighbourhood prompts, needed by generation and zsRE locality."""

    answers: dict[str, str]  # neighbourhood prompt -> unedited greedy answer
    predicted: dict[str, list[int]]  # zsRE "loc prompt\tloc_ans" -> unedited argmax tokens over loc_ans


def prompts(case: Case) -> dict[str, tuple[str, ...]]:
    return {"rewrite": (case.request.prompt,), "paraphrase": case.paraphrases, "neighbour": case.neighbours}


def candidates(case: Case, kind: str) -> list[str]:
    if kind == "neighbour":
        return [case.neighbour_truth] if case.dataset == "zsre" else [case.neighbour_truth, case.request.target_new]
    return [case.request.target_new, case.request.target_true]


def reference(system: System, cases: Sequence[Case], gen_tokens: int) -> Reference:
    """Run on the unedited system, before any edit."""
    items = [(c, p) for c in cases for p in c.neighbours]
    if not items:
        return Reference({}, {})
    answers = {p: a.text for (_, p), a in zip(items, system.generate(items, gen_tokens), strict=True)}
    loc = [ScoreItem(c, p, candidates(c, "neighbour")) for c in cases if c.dataset == "zsre" for p in c.neighbours]
    predicted = {_loc_key(it.prompt, it.case): list(s.scores[0].predicted)
                 for it, s in zip(loc, system.score(loc), strict=True)}
    return Reference(answers, predicted)


def _loc_key(prompt: str, case: Case) -> str:
    return f"{prompt}\t{case.neighbour_truth}"


def _one(case: Case, kind: str, prompt: str, scored: Scored, answer: Answer, ref: Reference) -> dict:
    first = scored.scores[0]
    row: dict = {"in_scope": scored.in_scope, "retrieved": scored.retrieved}
    if case.dataset == "zsre":
        if kind == "neighbour":
            want = ref.predicted[_loc_key(prompt, case)]
            row["acc"] = sum(p == q for p, q in zip(first.predicted, want, strict=True)) / max(len(want), 1)
        else:
            row["acc"] = first.token_accuracy
        row["gen"] = (answer.text == ref.answers[prompt]) if kind == "neighbour" else _contains(answer.text, case)
        return row
    a, b = first.mean_logprob, scored.scores[1].mean_logprob
    row["ok"] = a > b
    row["mag"] = math.exp(a) - math.exp(b)  # P = exp(mean token log-likelihood)
    row["gen"] = (answer.text == ref.answers[prompt]) if kind == "neighbour" else _contains(answer.text, case)
    return row


def _contains(answer: str, case: Case) -> bool:
    return case.request.target_new.lower() in answer.lower()


def evaluate(system: System, cases: Sequence[Case], ref: Reference, gen_tokens: int) -> list[dict]:
    """Score and generate every prompt of every case on the system as it is now; one record per case."""
    items = [(c, k, p) for c in cases for k in KINDS for p in prompts(c)[k]]
    scored = system.score([ScoreItem(c, p, candidates(c, k)) for c, k, p in items])
    answers = system.generate([(c, p) for c, _, p in items], gen_tokens)
    records: dict[int, dict] = {c.case_id: {"case_id": c.case_id, **{k: [] for k in KINDS}} for c in cases}
    for (c, k, p), s, a in zip(items, scored, answers, strict=True):
        records[c.case_id][k].append(_one(c, k, p, s, a, ref) | {"answer": a.text})
    return list(records.values())


def _pct(values: list[float]) -> float | None:
    return round(100 * mean(values), 2) if values else None


def summarize(records: Sequence[dict], dataset: str) -> dict:
    """Case-averaged metrics (a case with several paraphrases counts once, as in ROME's tables)."""

    def per_case(kind: str, key: str) -> list[float]:
        return [mean(float(r[key]) for r in rec[kind]) for rec in records if rec[kind]]

    out: dict = {"n_cases": len(records)}
    if dataset == "zsre":
        out |= {"rel": _pct(per_case("rewrite", "acc")), "gen": _pct(per_case("paraphrase", "acc")),
                "loc": _pct(per_case("neighbour", "acc"))}
        main = ("rel", "gen", "loc")
    else:
        out |= {"ES": _pct(per_case("rewrite", "ok")), "PS": _pct(per_case("paraphrase", "ok")),
                "NS": _pct(per_case("neighbour", "ok")), "EM": _pct(per_case("rewrite", "mag")),
                "PM": _pct(per_case("paraphrase", "mag")), "NM": _pct(per_case("neighbour", "mag"))}
        main = ("ES", "PS", "NS")
    vals = [out[k] for k in main]
    out["score"] = round(harmonic_mean([max(v, 1e-9) for v in vals]), 2) if all(v is not None for v in vals) else None
    out |= {"gen_rewrite": _pct(per_case("rewrite", "gen")), "gen_paraphrase": _pct(per_case("paraphrase", "gen")),
            "gen_neighbour_same": _pct(per_case("neighbour", "gen"))}
    if any(r["in_scope"] is not None for rec in records for r in rec["rewrite"]):
        out["scope"] = {k: _pct([float(r["in_scope"]) for rec in records for r in rec[k]]) for k in KINDS}
        out["retrieved"] = {k: _pct([float(bool(r["retrieved"])) for rec in records for r in rec[k]])
                            for k in ("rewrite", "paraphrase")}
        if dataset == "counterfact":
            out["paraphrase_failures"] = failure_causes(records)
    return out


def failure_causes(records: Sequence[dict]) -> dict[str, int]:
    """Why paraphrase prompts fail: out of scope, the fact not retrieved, or the LLM ignoring the fact it read."""
    causes = {"out_of_scope": 0, "not_retrieved": 0, "llm_ignored_fact": 0, "ok": 0}
    for rec in records:
        for r in rec["paraphrase"]:
            if r["ok"]:
                causes["ok"] += 1
            elif not r["in_scope"]:
                causes["out_of_scope"] += 1
            elif not r["retrieved"]:
                causes["not_retrieved"] += 1
            else:
                causes["llm_ignored_fact"] += 1
    return causes
