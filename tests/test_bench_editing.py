"""The editing benchmark harness: data splits, metrics, protocols, and HTTP agreeing with in-process runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from larimar_client import Larimar

from bench.baselines.rag import RAG_THRESHOLD, Rag, pipeline
from bench.editing.metrics import evaluate, failure_causes, reference, summarize
from bench.editing.protocols import CaseLog, forgetting, sequential, single
from bench.editing.systems import Http, Oracle, Retrieval, Service, TextSystem
from bench.generation import fluency
from models.loading import LoadedModels
from service.settings import Settings
from training import data

needs_data = pytest.mark.skipif(not data.DEFAULT_DATA.exists(),
                                reason="no benchmark data: ../shared/data is missing and LARIMAR_BENCH_DATA is unset")


@needs_data
def test_splits_follow_the_reported_dev_train_ranges() -> None:
    report = data.load("counterfact", data.DEFAULT_DATA, "report")
    assert [c.case_id for c in report] == list(range(2000))
    dev = data.load("counterfact", data.DEFAULT_DATA, "dev")
    assert min(c.case_id for c in dev) == 2000 and max(c.case_id for c in dev) == 9999
    assert len(data.load("zsre", data.DEFAULT_DATA, "report")) == 500
    assert [c.case_id for c in data.load("zsre", data.DEFAULT_DATA, "dev")][:1] == [500]
    rome = data.load("counterfact", data.DEFAULT_DATA, "report", schema="rome")
    assert rome and all(c.case_id < 2000 and len(c.neighbours) == 10 for c in rome)
    # The ROME-format file lost its accents upstream; rewrite fields come from the flat files.
    flat = {c.case_id: c for c in report}
    assert all(c.request == flat[c.case_id].request for c in rome)
    assert report[0].fact == "The mother tongue of Danielle Darrieux is English."


def test_paraphrase_failures_are_split_by_cause() -> None:
    def row(ok: bool, scope: bool, got: bool) -> dict:
        return {"ok": ok, "in_scope": scope, "retrieved": got}

    records = [{"paraphrase": [row(True, True, True)]}, {"paraphrase": [row(False, False, False)]},
               {"paraphrase": [row(False, True, False)]}, {"paraphrase": [row(False, True, True)]}]
    assert failure_causes(records) == {"ok": 1, "out_of_scope": 1, "not_retrieved": 1, "llm_ignored_fact": 1}


@pytest.fixture
def cases() -> list[data.Case]:
    return data.load("counterfact", data.DEFAULT_DATA, "report")[:3]


@needs_data
def test_oracle_beats_the_unedited_model_on_efficacy(models: LoadedModels, cases: list[data.Case]) -> None:
    plain = TextSystem(models.llm)
    ref = reference(plain, cases, 4)
    base = summarize(evaluate(plain, cases, ref, 4), "counterfact")
    oracle = summarize(evaluate(Oracle(models.llm), cases, ref, 4), "counterfact")
    assert oracle["ES"] > base["ES"]
    # The unedited model answers its own neighbourhood prompts exactly as the reference does.
    assert base["gen_neighbour_same"] == 100.0


@needs_data
def test_http_and_in_process_runs_agree(models: LoadedModels, make_client, tmp_path: Path,
                                        cases: list[data.Case]) -> None:
    plain = TextSystem(models.llm)
    ref = reference(plain, cases, 4)
    inproc = Service(models, Settings(store_url=f"file://{tmp_path / 'a'}"))
    log_a = CaseLog(tmp_path / "a.jsonl")
    sequential(inproc, cases, cases, ref, 4, log_a)
    with make_client(f"file://{tmp_path / 'b'}") as client:
        log_b = CaseLog(tmp_path / "b.jsonl")
        sequential(Http(Larimar(http=client)), cases, cases, ref, 4, log_b)
        assert client.get("/v1/memories").json()["memories"] == []  # the run cleans up after itself
    a, b = log_a.records, log_b.records
    assert [r["rewrite"][0]["ok"] for r in a] == [r["rewrite"][0]["ok"] for r in b]
    assert [r["paraphrase"][0]["in_scope"] for r in a] == [r["paraphrase"][0]["in_scope"] for r in b]
    s = summarize(log_a.records, "counterfact")
    assert s["scope"]["rewrite"] == 100.0 and s["retrieved"]["rewrite"] == 100.0
    assert s["ES"] == 100.0


@needs_data
def test_single_runs_resume_from_their_case_log(models: LoadedModels, tmp_path: Path, cases: list[data.Case]) -> None:
    class Counting(Service):
        edits = 0

        def edit(self, case: data.Case) -> None:
            Counting.edits += 1
            super().edit(case)

    ref = reference(TextSystem(models.llm), cases, 4)
    system = Counting(models, Settings(store_url=f"file://{tmp_path / 's'}"))
    single(system, cases[:2], ref, 4, CaseLog(tmp_path / "single.jsonl"))
    log = CaseLog(tmp_path / "single.jsonl")
    times = single(system, cases, ref, 4, log)
    assert Counting.edits == 3 and len(times) == 3  # the third case only was edited again
    assert [r["case_id"] for r in log.records] == [c.case_id for c in cases]
    # One edit at a time in an empty memory: the service always finds the case's own fact.
    assert all(r["rewrite"][0]["retrieved"] for r in log.records)


@needs_data
def test_forgetting_returns_forgotten_facts_to_the_unedited_model(models: LoadedModels, tmp_path: Path) -> None:
    cases = data.load("counterfact", data.DEFAULT_DATA, "report")[:4]
    system = Service(models, Settings(store_url=f"file://{tmp_path / 'f'}"))
    out = forgetting(system, cases, TextSystem(models.llm), sample=2)
    assert out["before"]["to_forget"]["ES"] == 100.0 and out["before"]["kept"]["ES"] == 100.0
    # Forgotten facts are out of the memory, so the model answers as it did unedited; the kept ones still hold.
    assert out["forget_half"]["forgotten"]["ES"] == out["unedited"]["forgotten_sample"]["ES"]
    assert out["forget_half"]["kept"]["ES"] == 100.0
    assert not system.fact_ids  # the run resets its memory at the end


def test_the_rag_baseline_retrieves_by_cosine_forgets_and_thresholds(models: LoadedModels) -> None:
    """The retrieval pipeline users would build instead (issue 26): exact top k, ids removable, a threshold."""
    facts = ["The capital of Veldoria is Marrow.", "Quill Hatter plays the cello.", "Omsk Foods was founded in 1901."]
    rag = Rag(models.encoder, k=2)
    ids = rag.add(facts)
    near = rag.nearest(["What is the capital of Veldoria?"])[0]
    assert near[0][0] == facts[0] and len(near) == 2 and near[0][1] > near[1][1]
    assert rag.recall("Which instrument does Quill Hatter play?")[0] == facts[1]
    rag.forget(ids[1])
    assert facts[1] not in rag.recall("Which instrument does Quill Hatter play?")
    strict = Rag(models.encoder, k=3, threshold=RAG_THRESHOLD)
    strict.add(facts)
    assert strict.recall("What is the capital of Veldoria?") == [facts[0]]
    assert strict.recall("How do I bake sourdough bread at home?") == []  # plain RAG would paste k facts here


@needs_data
def test_the_retrieval_system_shows_its_facts_to_the_llm(models: LoadedModels, cases: list[data.Case]) -> None:
    plain = Retrieval(models.llm, pipeline("rag", models.encoder, Settings(recalled_facts=3)), batch=4)
    for c in cases:
        plain.edit(c)
    cond = plain.condition(cases[0], cases[0].paraphrases[0])
    assert cond.retrieved and cond.readout is not None and len(cond.readout.facts) == 3
    plain.forget(cases[0])
    assert not plain.condition(cases[0], cases[0].paraphrases[0]).retrieved
    biased = Retrieval(models.llm, pipeline("rag-bias", models.encoder, Settings(answer_bias=12.0)))
    assert biased.name == "rag-bias" and biased.config()["answer_bias"] == 12.0


def test_the_fluency_judge_tells_salad_from_sentences(models: LoadedModels) -> None:
    """The chosen judge against its own hand labels, and on answers it never saw."""
    labels = fluency.load_labels()
    assert len(labels) == 200 and 20 <= sum(not g for _, g in labels) <= 60
    fact = ("Jane Austen was born in Shanghai.",)
    asked = [fluency.Asked("Where was Jane Austen born?", a, fact) for a in
             ("Jane Austen was born in Shanghai.", "Shanghai", "Jane Austen born Shanghai Austen born.",
              "Shanghai Jane was Austen born in.")]
    assert fluency.judged(models.llm, asked) == [True, True, False, False]
