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
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.generation.items import FORMS, SPLITS, Item, build, same_subject, unrelated
from bench.tables import fmt
from bench.tables import table as md_table
from models.device import describe_machine
from models.llm import GREEDY
from models.loading import load_models
from models.scope import MENTION_RULE
from models.text import stem, words
from service.app import build_editor
from service.editor import Editor
from service.engine import PROMPTS
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

log = logging.getLogger("bench.generation")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "generation"
MEMORY = "generation"


def contains(answer: str, obj: str) -> bool:
    return obj.lower() in answer.lower()


def _stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def fluent(prompt: str, answer: str) -> bool:
    """Not empty, no word said twice in a row ("born Vienna Vienna"), and not only the prompt's own words
    said back ("When does Acme's fiscal year ends?"). Repeats compare words, not stems: "as a" stems to
    "a a" (until 2026-12-03 that counted "works as a chemist" as a repeat and "works chemist" as fluent)."""
    said = [w.lower() for w in words(answer)]
    if not said or any(a == b for a, b in zip(said, said[1:], strict=False)):
        return False
    return bool(set(_stems(answer)) - set(_stems(prompt)))


def answers(editor: Editor, prompts: list[str], mode: str, batch: int) -> list[dict[str, Any]]:
    """The /query route's answers, a batch at a time (the decoders' batched path gives the same answers)."""
    n = editor.settings.default_max_new_tokens
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=f"answers (memory {mode})", unit="batch"):
        chunk = prompts[i : i + batch]
        recalls = [editor.recall(MEMORY, p, mode) for p in chunk]  # type: ignore[arg-type]
        asks = [(p, r.readout) for p, r in zip(chunk, recalls, strict=True)]
        gens = generated(editor, asks, n)
        out += [{"prompt": p, "answer": g.text, "in_scope": r.in_scope, "recalled": [f.text for f in r.facts]}
                for p, r, g in zip(chunk, recalls, gens, strict=True)]
    return out


def generated(editor: Editor, asks: list[tuple[str, Any]], n: int) -> list[Any]:
    """Greedy answers as the /query route gives them: the decoder's in process, or, with LARIMAR_LLM_URL, the
    engine's for the same conversation with the recalled facts (service/engine.py), one at a time."""
    if editor.engine is None:
        return editor.decoder.generate_batch(editor.llm, asks, n)
    return [editor.engine.generate(PROMPTS.generation_messages(p, readout), n, GREEDY) for p, readout in asks]


def unchanged(editor: Editor, prompts: list[str], batch: int) -> list[dict[str, Any]]:
    """Prompts whose answer must be the memory-off one: each answered with memory auto and off."""
    on, off = answers(editor, prompts, "auto", batch), answers(editor, prompts, "off", batch)
    return [{**a, "memory_off": b["answer"], "same": a["answer"] == b["answer"]} for a, b in zip(on, off, strict=True)]


def judge(item: Item, form: str, a: dict[str, Any]) -> dict[str, Any]:
    ok = contains(a["answer"], item.object)
    cause = None if ok else ("out of scope" if not a["in_scope"] else
                             "fact not recalled" if item.fact not in a["recalled"] else "fact shown, not used")
    return {**a, "relation": item.relation, "kind": item.kind, "form": form, "object": item.object,
            "correct": ok, "fluent": fluent(a["prompt"], a["answer"]), "cause": cause}


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


def rescore(path: Path) -> None:
    """A results file judged again from its stored answers (after a change to the judging, not the answers)."""
    res = json.loads(path.read_text())
    for r in res["rows"]:
        r["fluent"] = fluent(r["prompt"], r["answer"])
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
        for path in args.rescore:
            rescore(path)
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
    editor = build_editor(settings, load_models(settings))
    items = build(args.split)
    if args.filler:
        filler = [c.fact for c in counterfact(args.data, "train")[: args.filler]]
        for i in tqdm(range(0, len(filler), 256), desc="filler", unit="batch"):
            editor.add_facts(MEMORY, [(t, None) for t in filler[i : i + 256]])
    editor.add_facts(MEMORY, [(it.fact, {"relation": it.relation, "kind": it.kind}) for it in items])
    t0 = time.perf_counter()
    asked = [(it, form) for it in items for form in FORMS]
    got = answers(editor, [it.prompt(form) for it, form in asked], "auto", args.batch)
    rows = [judge(it, form, a) for (it, form), a in zip(asked, got, strict=True)]
    unrelated_rows = unchanged(editor, unrelated(args.split), args.batch)
    same_subject_rows = unchanged(editor, same_subject(args.split), args.batch)
    res = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "split": args.split, "llm": settings.llm, "decoder": editor.decoder.name,
           "scope_threshold": editor.rule.threshold,
           "answer_bias": settings.answer_bias, "scope_requires_mention": settings.scope_requires_mention,
           "mention_rule": MENTION_RULE,
           "relation_gate": editor.rule.relation.describe() if editor.rule.relation else None,
           "facts_in_memory": len(items) + args.filler, "filler": args.filler,
           "max_new_tokens": settings.default_max_new_tokens, "seconds": round(time.perf_counter() - t0, 1),
           "summary": summarize(rows, unrelated_rows, same_subject_rows), "rows": rows, "unrelated": unrelated_rows,
           "same_subject": same_subject_rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.split}-{editor.decoder.name}" + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    log.info("%s: %s", name, json.dumps(res["summary"]))


if __name__ == "__main__":
    main()
