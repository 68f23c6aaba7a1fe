"""Free generation with memory: does the greedy answer say what memory says? (issue 11)

    python -m bench.generation --split dev --decoder hybrid
    python -m bench.generation --split heldout --decoder context --filler 1000

Every item's fact (bench/generation/items.py) goes into one memory of the service's editor, in process and
through the same path as ``POST /query``: scope detector, readout, decoder, greedy answer of the default
length. Then each item's question, paraphrase and cloze is asked, and the unrelated prompts with memory on
(auto) and off. An answer succeeds when it contains the item's object (case-insensitive); an unrelated
prompt when its answer is exactly the memory-off one. Each failure gets its cause: out of scope, the fact
not among those recalled, or the model not using a fact it was shown. ``--filler`` writes CounterFact
training-range facts first, so the items sit in a larger memory.

On an LLM engine: ``LARIMAR_LLM_URL=http://127.0.0.1:8080/v1 python -m bench.generation --tag engine`` (what
the engine is sent and answers, as through the service; the answer bias stays out). Another LLM:
``LARIMAR_LLM=<gguf or HF dir> python -m bench.generation --tag <name>`` (a model without a trained
adapter gets context decoding). Results: ``bench/results/generation/<split>-<decoder>[-<tag>].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from bench.baselines.rag import SYSTEMS as RAG_SYSTEMS
from bench.baselines.rag import Pipeline, pipeline
from bench.generation import fluency
from bench.generation.items import FORMS, SPLITS, Item, build, same_subject, unrelated
from bench.tables import fmt
from bench.tables import table as md_table
from models.decoders import Readout
from models.device import describe_machine
from models.llm import GREEDY, CausalLM
from models.loading import load_llm, load_models
from models.scope import MENTION_RULE
from service.app import build_editor
from service.editor import Editor
from service.engine import PROMPTS
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

log = logging.getLogger("bench.generation")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "generation"
MEMORY = "generation"
SYSTEMS = ("larimar", *RAG_SYSTEMS)


def contains(answer: str, obj: str) -> bool:
    return obj.lower() in answer.lower()


class Answerer(Protocol):
    """What answers the suite's prompts: the service's editor, or a baseline users would build instead."""

    name: str

    def write(self, facts: list[tuple[str, dict[str, Any] | None]]) -> None: ...

    def recall(self, prompt: str, mode: str) -> Recalled: ...

    def generate(self, asks: list[tuple[str, Readout | None]], n: int) -> list[Any]: ...


@dataclass(frozen=True)
class Recalled:
    """What a prompt reads from memory: whether it is in scope, the readout shown to the LLM, the facts' texts."""

    in_scope: bool
    readout: Readout | None
    recalled: list[str]


class ServiceAnswerer:
    """The /query route's path in process: scope rule, readout, decoder (or the engine with LARIMAR_LLM_URL)."""

    def __init__(self, editor: Editor) -> None:
        self.editor, self.name = editor, editor.decoder.name

    def write(self, facts: list[tuple[str, dict[str, Any] | None]]) -> None:
        self.editor.add_facts(MEMORY, facts)

    def recall(self, prompt: str, mode: str) -> Recalled:
        r = self.editor.recall(MEMORY, prompt, mode)  # type: ignore[arg-type]
        return Recalled(r.in_scope, r.readout, [f.text for f in r.facts])

    def generate(self, asks: list[tuple[str, Readout | None]], n: int) -> list[Any]:
        """Greedy answers as the /query route gives them: the decoder's in process, or, with LARIMAR_LLM_URL,
        the engine's for the same conversation with the recalled facts (service/engine.py), one at a time."""
        editor = self.editor
        if editor.engine is None:
            return editor.decoder.generate_batch(editor.llm, asks, n)
        return [editor.engine.generate(PROMPTS.generation_messages(p, r), n, GREEDY) for p, r in asks]


class RagAnswerer:
    """Retrieval into the prompt (``bench.baselines.rag``) through the service's context decoder."""

    def __init__(self, llm: CausalLM, pipeline: Pipeline) -> None:
        self.llm, self.pipeline, self.name = llm, pipeline, pipeline.name

    def write(self, facts: list[tuple[str, dict[str, Any] | None]]) -> None:
        self.pipeline.rag.add([t for t, _ in facts])

    def recall(self, prompt: str, mode: str) -> Recalled:
        readout = self.pipeline.readout(prompt) if mode != "off" else None
        return Recalled(readout is not None, readout, list(readout.facts) if readout else [])

    def generate(self, asks: list[tuple[str, Readout | None]], n: int) -> list[Any]:
        return self.pipeline.decoder.generate_batch(self.llm, asks, n)


def answers(who: Answerer, prompts: list[str], mode: str, batch: int, n: int,
            recall_ms: list[float] | None = None) -> list[dict[str, Any]]:
    """The answers, a batch at a time (the decoders' batched path gives the same answers as one at a time);
    ``recall_ms`` collects what reading memory cost each prompt."""
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=f"answers (memory {mode})", unit="batch"):
        chunk = prompts[i : i + batch]
        recalls = []
        for p in chunk:
            t0 = time.perf_counter()
            recalls.append(who.recall(p, mode))
            if recall_ms is not None:
                recall_ms.append(1000 * (time.perf_counter() - t0))
        gens = who.generate([(p, r.readout) for p, r in zip(chunk, recalls, strict=True)], n)
        out += [{"prompt": p, "answer": g.text, "in_scope": r.in_scope, "recalled": r.recalled}
                for p, r, g in zip(chunk, recalls, gens, strict=True)]
    return out


def unchanged(who: Answerer, prompts: list[str], batch: int, n: int) -> list[dict[str, Any]]:
    """Prompts whose answer must be the memory-off one: each answered with memory auto and off."""
    on, off = answers(who, prompts, "auto", batch, n), answers(who, prompts, "off", batch, n)
    return [{**a, "memory_off": b["answer"], "same": a["answer"] == b["answer"]} for a, b in zip(on, off, strict=True)]


def judge(item: Item, form: str, a: dict[str, Any]) -> dict[str, Any]:
    ok = contains(a["answer"], item.object)
    cause = None if ok else ("out of scope" if not a["in_scope"] else
                             "fact not recalled" if item.fact not in a["recalled"] else "fact shown, not used")
    return {**a, "relation": item.relation, "kind": item.kind, "form": form, "object": item.object,
            "correct": ok, "fluent_rule": fluency.rule(a["prompt"], a["answer"]), "cause": cause}


def judge_fluency(llm: CausalLM, rows: list[dict[str, Any]]) -> None:
    """Each row's ``fluent``: the judge chosen against hand labels (``bench.generation.fluency``)."""
    verdicts = fluency.judged(llm, [fluency.Asked(r["prompt"], r["answer"], r["recalled"]) for r in rows])
    for r, v in zip(rows, verdicts, strict=True):
        r["fluent"] = v


def summarize(rows: list[dict[str, Any]], unrelated_rows: list[dict[str, Any]],
              same_subject_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    def pct(xs: list[bool]) -> float:
        return round(100.0 * sum(xs) / len(xs), 1) if xs else float("nan")

    out: dict[str, Any] = {}
    for kind in ("novel", "counterfactual", "all"):
        for form in FORMS:
            sel = [r for r in rows if r["form"] == form and kind in ("all", r["kind"])]
            out[f"{kind}/{form}"] = {"correct": pct([r["correct"] for r in sel]),
                                     "fluent": pct([r["fluent"] for r in sel]), "n": len(sel)}
    out["causes"] = dict(Counter(r["cause"] for r in rows if r["cause"]))
    out["unrelated_unchanged"] = pct([u["same"] for u in unrelated_rows])
    out["unrelated_in_scope"] = pct([u["in_scope"] for u in unrelated_rows])
    out["unrelated_n"] = len(unrelated_rows)
    if same_subject_rows is not None:  # results from before 2026-12-03 have none
        out["same_subject_unchanged"] = pct([u["same"] for u in same_subject_rows])
        out["same_subject_in_scope"] = pct([u["in_scope"] for u in same_subject_rows])
        out["same_subject_n"] = len(same_subject_rows)
    return out


def rescore(path: Path, llm: CausalLM) -> None:
    """A results file judged again from its stored answers (after a change to the judging, not the answers)."""
    res = json.loads(path.read_text())
    for r in res["rows"]:
        r["fluent_rule"] = fluency.rule(r["prompt"], r["answer"])
    judge_fluency(llm, res["rows"])
    res["fluency_judge"] = fluency.describe()
    res["summary"] = summarize(res["rows"], res["unrelated"], res.get("same_subject"))
    path.write_text(json.dumps(res, indent=1))
    log.info("%s rescored: %s", path.name, json.dumps(res["summary"]))


def table(paths: list[Path]) -> str:
    """The docs' generation table, one row per results file: correct % (novel / counterfactual) per form."""
    head = ["run", "facts in memory", "question novel / counterf.", "paraphrase novel / counterf.",
            "cloze novel / counterf.", "fluent", "unrelated unchanged", "same subject, other relation unchanged"]
    rows = []
    for path in paths:
        res = json.loads(path.read_text())
        s = res["summary"]
        cells = [f"{fmt(s[f'novel/{f}']['correct'])} / {fmt(s[f'counterfactual/{f}']['correct'])}" for f in FORMS]
        flu = [r["fluent"] for r in res["rows"]]
        rows.append([path.stem, f"{res['facts_in_memory']:,}", *cells, fmt(100 * sum(flu) / len(flu)),
                     f"{fmt(s['unrelated_unchanged'])} ({s['unrelated_n']})",
                     f"{fmt(s['same_subject_unchanged'])} ({s['same_subject_n']})" if "same_subject_n" in s else "–"])
    return md_table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=SPLITS, default="dev")
    ap.add_argument("--decoder", default="auto", help="context, latent, hybrid, or auto (the service default)")
    ap.add_argument("--system", choices=SYSTEMS, default="larimar",
                    help="the service (larimar) or the retrieval baseline users would build instead (rag...)")
    ap.add_argument("--filler", type=int, default=0, help="CounterFact training-range facts written first")
    ap.add_argument("--answer-bias", type=float, help="LARIMAR_ANSWER_BIAS for this run (default: the setting's)")
    ap.add_argument("--no-mention", action="store_true", help="LARIMAR_SCOPE_REQUIRES_MENTION off for this run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tag", default="", help="appended to the results file's name")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rescore", type=Path, nargs="+", help="judge these results files again, run nothing")
    ap.add_argument("--table", type=Path, nargs="+", help="print the markdown table of these results files")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rescore:
        llm = load_llm(Settings())
        for path in args.rescore:
            rescore(path, llm)
    if args.table:
        print(table(args.table))
    if args.rescore or args.table:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    extra: dict[str, Any] = {} if args.answer_bias is None else {"answer_bias": args.answer_bias}
    if args.no_mention:
        extra["scope_requires_mention"] = False
    settings = Settings(store_url=f"file://{tempfile.mkdtemp(prefix='larimar-generation-')}", decoder=args.decoder,
                        **extra)
    models = load_models(settings)
    who: Answerer
    if args.system == "larimar":
        editor = build_editor(settings, models)
        who = ServiceAnswerer(editor)
        config: dict[str, Any] = {
            "decoder": editor.decoder.name, "scope_threshold": editor.rule.threshold,
            "answer_bias": settings.answer_bias, "scope_requires_mention": settings.scope_requires_mention,
            "mention_rule": MENTION_RULE,
            "relation_gate": editor.rule.relation.describe() if editor.rule.relation else None}
    else:
        rag = pipeline(args.system, models.encoder, settings)
        who = RagAnswerer(models.llm, rag)
        config = {"system": rag.name, **rag.config()}
    n = settings.default_max_new_tokens
    items = build(args.split)
    if args.filler:
        filler = [c.fact for c in counterfact(args.data, "train")[: args.filler]]
        for i in tqdm(range(0, len(filler), 256), desc="filler", unit="batch"):
            who.write([(t, None) for t in filler[i : i + 256]])
    who.write([(it.fact, {"relation": it.relation, "kind": it.kind}) for it in items])
    t0 = time.perf_counter()
    asked = [(it, form) for it in items for form in FORMS]
    recall_ms: list[float] = []
    got = answers(who, [it.prompt(form) for it, form in asked], "auto", args.batch, n, recall_ms)
    rows = [judge(it, form, a) for (it, form), a in zip(asked, got, strict=True)]
    judge_fluency(models.llm, rows)
    unrelated_rows = unchanged(who, unrelated(args.split), args.batch, n)
    same_subject_rows = unchanged(who, same_subject(args.split), args.batch, n)
    res = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "split": args.split, "llm": settings.llm, **config,
           "facts_in_memory": len(items) + args.filler, "filler": args.filler,
           "max_new_tokens": n, "fluency_judge": fluency.describe(), "seconds": round(time.perf_counter() - t0, 1),
           "recall_ms_median": round(statistics.median(recall_ms), 2),
           "summary": summarize(rows, unrelated_rows, same_subject_rows), "rows": rows, "unrelated": unrelated_rows,
           "same_subject": same_subject_rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.split}-{who.name}" + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    log.info("%s: %s", name, json.dumps(res["summary"]))

if __name__ == "__main__":
    main()
