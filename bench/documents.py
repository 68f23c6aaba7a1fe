"""Long inputs: recall from documents written into memory, against the same model reading them in its prompt.

- **Needle in a haystack.** Paul Graham's essays (``../shared/data/paul_graham_essays.txt``, repeated past
  its ~150k tokens for the longest) cut to 1k ... 256k tokens of the LLM's tokenizer; ten made-up facts (the
  needles) put at ten depths, 0 to 100 %; each asked as a question. The service ingests the haystack as one
  document (POST .../documents) and answers through POST .../query (flat and hierarchical reads of the same
  memory); the baseline is the base LLM with as much of the haystack as fits its window (8,192 tokens for
  SmolLM2, less the question and the answer) in its prompt, same questions, same greedy decoding.
- **Many facts.** 16 to 1,024 CounterFact development facts (case_id 2000-9999) given as one passage; a
  sample of them asked as their cloze prompts; the same against the passage in context.
- Ingest speed (tokens/s, LLM tokens) and query latency against haystack size, from the same runs.

A hit is the expected answer inside the generated one (case and punctuation aside). ``--needles dev`` uses
five other needles, for choices (chunking, flat vs hierarchical); the reported run uses the ten. ``--needles
multi`` (and ``multi-dev``) states each needle in two sentences, the answer in the second, which opens with a
pronoun ("Orla Fennimore grew up in Oslo. She learned to play the bassoon in Reykjavik.").

    python -m bench.documents [--lengths 1000 4000 16000 64000 256000] [--facts 16 64 256 1024]
        [--needles report|dev|multi|multi-dev] [--chunking sentences|chunks] [--no-baseline] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from tqdm import tqdm
from transformers import DynamicCache

from models.device import describe_machine
from models.loading import LoadedModels, load_models
from service.app import create_app
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

log = logging.getLogger("bench.documents")
RESULTS = Path(__file__).resolve().parent / "results"
ESSAYS = "paul_graham_essays.txt"
MAX_NEW_TOKENS = 24
READS = ("flat", "hierarchical")


@dataclass(frozen=True)
class Needle:
    fact: str
    question: str
    answer: str


NEEDLES = {
    "report": [
        Needle("The secret ingredient in Marlowe Quint's lemonade is smoked paprika.",
               "What is the secret ingredient in Marlowe Quint's lemonade?", "smoked paprika"),
        Needle("The Velstrand Bridge was painted bright orange by Ottilie Brask in 1931.",
               "Who painted the Velstrand Bridge?", "Ottilie Brask"),
        Needle("Professor Hanne Lidgard keeps her spare house key inside a hollow copy of Moby-Dick.",
               "Where does Professor Hanne Lidgard keep her spare house key?", "Moby-Dick"),
        Needle("The mascot of the Quarrington Rowing Club is a blue heron named Percival.",
               "What is the name of the Quarrington Rowing Club's mascot?", "Percival"),
        Needle("The favourite board game of Ilse Varga is Carcassonne.",
               "What is Ilse Varga's favourite board game?", "Carcassonne"),
        Needle("The annual Tollbridge Cheese Festival takes place in the town of Wexmoor.",
               "In which town does the Tollbridge Cheese Festival take place?", "Wexmoor"),
        Needle("Captain Ruben Ashdown named his sailboat the Silver Marten.",
               "What did Captain Ruben Ashdown name his sailboat?", "Silver Marten"),
        Needle("The password to the Kelderman Archive is tangerine47.",
               "What is the password to the Kelderman Archive?", "tangerine47"),
        Needle("Orla Fennimore learned to play the bassoon in Reykjavik.",
               "Where did Orla Fennimore learn to play the bassoon?", "Reykjavik"),
        Needle("The largest telescope of the Brightwater Observatory is called Old Magnus.",
               "What is the largest telescope of the Brightwater Observatory called?", "Old Magnus"),
    ],
    "dev": [
        Needle("Tomasz Reingold's pet tortoise is called Biscuit.", "What is Tomasz Reingold's pet tortoise called?",
               "Biscuit"),
        Needle("The Harwick Lighthouse was built by the engineer Mabel Strand.", "Who built the Harwick Lighthouse?",
               "Mabel Strand"),
        Needle("Greta Lindqvist's favourite soup is roasted pumpkin.", "What is Greta Lindqvist's favourite soup?",
               "pumpkin"),
        Needle("The Ostrava Chess Society meets every Thursday in the back room of the Blue Anchor pub.",
               "Where does the Ostrava Chess Society meet every Thursday?", "Blue Anchor"),
        Needle("Felix Amberley wrote his first novel on a typewriter he found in Lisbon.",
               "Where did Felix Amberley find the typewriter he wrote his first novel on?", "Lisbon"),
    ],
    # two sentences each, the answer in the second, which opens with a pronoun (a fact as documents state them)
    "multi": [
        Needle("Marlowe Quint sells lemonade at the county fair. His secret ingredient is smoked paprika.",
               "What is Marlowe Quint's secret ingredient?", "smoked paprika"),
        Needle("Ottilie Brask was a painter from Velstrand. She painted the old bridge bright orange in 1931.",
               "What colour did Ottilie Brask paint the old bridge?", "orange"),
        Needle("Professor Hanne Lidgard teaches medieval history. She keeps her spare house key inside a hollow copy "
               "of Moby-Dick.", "Where does Professor Hanne Lidgard keep her spare house key?", "Moby-Dick"),
        Needle("The Quarrington Rowing Club was founded in 1887. Its mascot is a blue heron named Percival.",
               "What is the name of the Quarrington Rowing Club's mascot?", "Percival"),
        Needle("Ilse Varga works as a radio engineer. Her favourite board game is Carcassonne.",
               "What is Ilse Varga's favourite board game?", "Carcassonne"),
        Needle("The Tollbridge Cheese Festival attracts visitors every October. It takes place in the town of "
               "Wexmoor.", "In which town does the Tollbridge Cheese Festival take place?", "Wexmoor"),
        Needle("Captain Ruben Ashdown sailed around Iceland last summer. He named his sailboat the Silver Marten.",
               "What did Captain Ruben Ashdown name his sailboat?", "Silver Marten"),
        Needle("The Kelderman Archive holds the letters of a forgotten poet. Its password is tangerine47.",
               "What is the password of the Kelderman Archive?", "tangerine47"),
        Needle("Orla Fennimore grew up in Oslo. She learned to play the bassoon in Reykjavik.",
               "Where did Orla Fennimore learn to play the bassoon?", "Reykjavik"),
        Needle("The Brightwater Observatory sits on a hill above the valley. Its largest telescope is called Old "
               "Magnus.", "What is the largest telescope of the Brightwater Observatory called?", "Old Magnus"),
    ],
    "multi-dev": [
        Needle("Tomasz Reingold moved to the coast in 1998. He keeps a pet tortoise called Biscuit.",
               "What is Tomasz Reingold's pet tortoise called?", "Biscuit"),
        Needle("Mabel Strand trained as a civil engineer in Glasgow. She later designed the Harwick Lighthouse.",
               "Which lighthouse did Mabel Strand design?", "Harwick"),
        Needle("Greta Lindqvist runs a small cafe near the harbour. Her favourite soup is roasted pumpkin.",
               "What is Greta Lindqvist's favourite soup?", "pumpkin"),
        Needle("The Ostrava Chess Society was founded by railway workers. It meets every Thursday at the Blue Anchor "
               "pub.", "Where does the Ostrava Chess Society meet every Thursday?", "Blue Anchor"),
        Needle("Felix Amberley spent a winter in Portugal. He found the typewriter for his first novel in Lisbon.",
               "Where did Felix Amberley find the typewriter for his first novel?", "Lisbon"),
    ],
}


def normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def hit(answer: str, expected: str) -> bool:
    return f" {normal(expected)} " in f" {normal(answer)} "


# --- haystacks ---------------------------------------------------------------------------


def haystack(corpus: str, tokens: int, needles: list[Needle], tokenizer: Any) -> tuple[str, list[int]]:
    """``tokens`` LLM tokens of the corpus (repeated as often as needed), the needles at evenly spaced depths,
    each at the sentence boundary after its depth. Returns the text and each needle's character offset."""
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    reps = -(-tokens // len(ids))
    text = "\n\n".join([corpus] * reps)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    text = text[: offsets[min(tokens, len(offsets)) - 1][1]]
    depths = [i / max(1, len(needles) - 1) for i in range(len(needles))] if len(needles) > 1 else [0.5]
    at = []
    for d in depths:
        pos = int(d * len(text))
        nxt = text.find(". ", pos)
        at.append(text.rfind(". ") + 1 if d >= 1.0 or nxt < 0 else nxt + 1)  # the end: after the last whole sentence
    out, last, starts = [], 0, []
    for pos, n in sorted(zip(at, needles, strict=True), key=lambda x: x[0]):
        out.append(text[last:pos])
        starts.append(sum(len(o) for o in out) + 1)
        out.append(f" {n.fact} ")
        last = pos
    out.append(text[last:])
    order = sorted(range(len(needles)), key=lambda i: at[i])
    placed = [0] * len(needles)
    for rank, i in enumerate(order):
        placed[i] = starts[rank]
    return "".join(out), placed


# --- the in-context baseline -----------------------------------------------------------------


class InContext:
    """The base LLM with a passage in its prompt: the passage's key/values computed once, then each question
    decoded greedily after it (the questions share the passage, so each costs only its own tokens)."""

    def __init__(self, models: LoadedModels) -> None:
        self.llm = models.llm
        self.window = int(self.llm.model.config.max_position_embeddings)

    def fit(self, passage: str, longest_question: str) -> str:
        """As much of the passage as fits the window with the question, its template and the answer."""
        ids = self.llm.tokenizer(passage, add_special_tokens=False)["input_ids"]
        room = self.window - len(self.llm.token_ids(self.prompt("", longest_question))) - MAX_NEW_TOKENS - 8
        return passage if len(ids) <= room else self.llm.tokenizer.decode(ids[:room])

    def prompt(self, passage: str, question: str) -> str:
        return self.llm.render([{"role": "user", "content": f"Text:\n{passage}\n\nUsing the text, answer: {question}"}])

    @torch.inference_mode()
    def answers(self, passage: str, questions: list[str]) -> list[str]:
        rendered = [self.prompt(passage, q) for q in questions]
        rows = [self.llm.token_ids(r) for r in rendered]
        shared = 0
        while all(len(r) > shared + 1 and r[shared] == rows[0][shared] for r in rows):
            shared += 1
        cache = DynamicCache()
        head = torch.tensor([rows[0][:shared]], device=self.llm.device)
        self.llm.model(input_ids=head, past_key_values=cache, use_cache=True)
        out = []
        for r in rows:
            ids = torch.tensor([r], device=self.llm.device)
            gen = self.llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          past_key_values=cache, max_new_tokens=MAX_NEW_TOKENS,
                                          do_sample=False, pad_token_id=self.llm.tokenizer.pad_token_id)
            out.append(self.llm.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
            cache.crop(shared - cache.get_seq_length())  # back to the passage alone for the next question
        return out


# --- the service ---------------------------------------------------------------------------


class Service:
    """The app in process, through its HTTP interface (httpx's ASGI transport)."""

    def __init__(self, client: TestClient) -> None:
        self.c = client

    def ingest(self, memory: str, text: str, title: str) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        r = self.c.post(f"/v1/memories/{memory}/documents", json={"text": text, "title": title})
        assert r.status_code in (201, 202), r.text
        doc = r.json()
        with tqdm(total=doc["pieces"], desc=f"ingest {memory}", unit="piece", leave=False) as bar:
            while doc["status"] == "ingesting":
                time.sleep(0.05)
                doc = self.c.get(f"/v1/memories/{memory}/documents/{doc['id']}").json()
                bar.update(doc["written"] - bar.n)
        assert doc["status"] == "ready", doc
        return doc, time.perf_counter() - t0

    def ask(self, memory: str, question: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = self.c.post(f"/v1/memories/{memory}/query", json={"prompt": question, "max_new_tokens": MAX_NEW_TOKENS})
        assert r.status_code == 200, r.text
        return r.json() | {"latency_s": time.perf_counter() - t0}

    def set_read(self, read: str) -> None:
        self.c.app.state.settings.memory_read = read


def needle_run(svc: Service, base: InContext | None, corpus: str, lengths: list[int], needles: list[Needle],
               tokenizer: Any) -> list[dict[str, Any]]:
    rows = []
    for length in tqdm(lengths, desc="haystacks"):
        text, starts = haystack(corpus, length, needles, tokenizer)
        memory = f"haystack-{length}"
        doc, seconds = svc.ingest(memory, text, f"essays, {length} tokens")
        row: dict[str, Any] = {"tokens": length, "chars": len(text), "pieces": doc["pieces"], "ingest_s": seconds,
                               "ingest_tokens_per_s": length / seconds, "questions": []}
        for read in READS:
            svc.set_read(read)
            for n, start in zip(needles, starts, strict=True):
                r = svc.ask(memory, n.question)
                cited = any(f["source"] and f["source"]["start"] < start + len(n.fact) and start < f["source"]["end"]
                            for f in r["facts"])  # a piece overlapping the needle
                row["questions"].append({"read": read, "needle": n.answer, "offset": start, "answer": r["answer"],
                                         "hit": hit(r["answer"], n.answer), "cited": cited,
                                         "in_scope": r["in_scope"], "latency_s": r["latency_s"],
                                         "timings_ms": r["timings_ms"]})
        svc.set_read("flat")
        if base is not None:
            window = base.fit(text, max((n.question for n in needles), key=len))
            row["baseline_tokens"] = len(tokenizer(window, add_special_tokens=False)["input_ids"])
            for n, a in zip(needles, base.answers(window, [n.question for n in needles]), strict=True):
                row["questions"].append({"read": "in-context", "needle": n.answer, "answer": a,
                                         "hit": hit(a, n.answer)})
        svc.c.delete(f"/v1/memories/{memory}")
        for read in (*READS, "in-context"):
            qs = [q for q in row["questions"] if q["read"] == read]
            if qs:
                row[f"recall_{read}"] = sum(q["hit"] for q in qs) / len(qs)
            if qs and "latency_s" in qs[0]:
                row[f"latency_s_{read}"] = statistics.median(q["latency_s"] for q in qs)
                row[f"retrieval_ms_{read}"] = statistics.median(  # the memory's part: encode, scope, read
                    sum(q["timings_ms"].get(k, 0.0) for k in ("encode", "scope", "read")) for q in qs)
        log.info("%d tokens: %s", length, {k: v for k, v in row.items() if k.startswith(("recall", "ingest_tok"))})
        rows.append(row)
    return rows


def facts_run(svc: Service, base: InContext | None, sizes: list[int], questions: int, data: Path
              ) -> list[dict[str, Any]]:
    cases = counterfact(data, "dev")
    random.Random(0).shuffle(cases)
    rows = []
    for n in tqdm(sizes, desc="passages"):
        chosen = cases[:n]
        passage = " ".join(c.fact for c in chosen)
        asked = random.Random(n).sample(chosen, min(questions, n))
        memory = f"facts-{n}"
        doc, seconds = svc.ingest(memory, passage, f"{n} CounterFact dev facts")
        row: dict[str, Any] = {"facts": n, "pieces": doc["pieces"], "questions": []}
        for c in asked:
            r = svc.ask(memory, c.request.prompt)
            row["questions"].append({"read": "flat", "case_id": c.case_id, "answer": r["answer"],
                                     "hit": hit(r["answer"], c.request.target_new)})
        if base is not None:
            window = base.fit(passage, max((c.request.prompt for c in asked), key=len))
            row["baseline_tokens"] = len(base.llm.tokenizer(window, add_special_tokens=False)["input_ids"])
            row["passage_tokens"] = len(base.llm.tokenizer(passage, add_special_tokens=False)["input_ids"])
            for c, a in zip(asked, base.answers(window, [c.request.prompt for c in asked]), strict=True):
                row["questions"].append({"read": "in-context", "case_id": c.case_id, "answer": a,
                                         "hit": hit(a, c.request.target_new)})
        svc.c.delete(f"/v1/memories/{memory}")
        for read in ("flat", "in-context"):
            qs = [q for q in row["questions"] if q["read"] == read]
            if qs:
                row[f"recall_{read}"] = sum(q["hit"] for q in qs) / len(qs)
        log.info("%d facts: %s", n, {k: v for k, v in row.items() if k.startswith("recall")})
        rows.append(row)
    return rows


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facts = res.get("facts") or []
    fig, axes = plt.subplots(1, 3 if facts else 2, figsize=(15 if facts else 10, 4.2))
    if not facts:
        axes = [axes[0], None, axes[1]]
    colours = {"flat": "#1f77b4", "hierarchical": "#ff7f0e", "in-context": "#2ca02c"}
    names = {"flat": "service, flat read", "hierarchical": "service, hierarchical read",
             "in-context": "SmolLM2-135M, haystack in its 8k window"}
    needle = res["needle"]
    x = [r["tokens"] for r in needle]
    style = {"flat": dict(marker="s", ms=9, lw=3), "hierarchical": dict(marker="o", ms=5, ls="--", lw=1.5),
             "in-context": dict(marker="o", ms=6, lw=2)}  # flat drawn wide: the two reads may coincide
    for read in (*READS, "in-context"):
        if all(f"recall_{read}" in r for r in needle):
            axes[0].plot(x, [r[f"recall_{read}"] for r in needle], color=colours[read], label=names[read],
                         **style[read])
    n = sum(q["read"] == "flat" for q in needle[0]["questions"])
    kind = {"multi": ", two sentences each", "multi-dev": ", two sentences each"}.get(res["needles"], "")
    axes[0].set(xscale="log", xlabel="haystack (LLM tokens)", ylabel="needle recall", ylim=(-0.03, 1.03),
                title=f"Needles ({n} depths{kind})")
    axes[0].axhline(0.9, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    if facts:
        xf = [r["facts"] for r in facts]
        for read in ("flat", "in-context"):
            if all(f"recall_{read}" in r for r in facts):
                axes[1].plot(xf, [r[f"recall_{read}"] for r in facts], color=colours[read], label=names[read],
                             **style[read])
        axes[1].set(xscale="log", xlabel="facts in the passage", ylabel="recall", ylim=(-0.03, 1.03),
                    title="Many facts in one passage (CounterFact dev)")
        axes[1].legend(fontsize=8)
    for read in READS:
        axes[2].plot(x, [r[f"retrieval_ms_{read}"] for r in needle], color=colours[read], label=f"{read} read",
                     **style[read])
    axes[2].set(xscale="log", yscale="log", xlabel="haystack (LLM tokens)",
                ylabel="median ms per query (encode + scope + read)",
                title="Retrieval time (answers add ~0.6 s)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1000, 4000, 16000, 64000, 256000])
    ap.add_argument("--facts", type=int, nargs="*", default=[16, 64, 256, 1024])
    ap.add_argument("--questions", type=int, default=32, help="facts asked per passage")
    ap.add_argument("--needles", choices=tuple(NEEDLES), default="report")
    ap.add_argument("--chunking", choices=("sentences", "chunks"))
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {"chunking": args.chunking} if args.chunking else {}
    settings = Settings(store_url=f"file://{tempfile.mkdtemp(prefix='larimar-documents-')}",
                        **{f"document_{k}": v for k, v in overrides.items()})
    models = load_models(settings)
    corpus = (args.data / ESSAYS).read_text(encoding="utf-8")
    base = None if args.no_baseline else InContext(models)
    out = args.out or RESULTS / {"report": "documents.json", "multi": "documents-multi.json"}.get(
        args.needles, f"documents-{args.needles}-{settings.document_chunking}.json")
    res: dict[str, Any] = {"machine": describe_machine(), "needles": args.needles,
                           "chunking": settings.document_chunking, "piece_tokens": settings.document_piece_tokens,
                           "read_segment": settings.read_segment, "max_new_tokens": MAX_NEW_TOKENS}
    with TestClient(create_app(settings, models)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.1)
        svc = Service(client)
        res["needle"] = needle_run(svc, base, corpus, args.lengths, NEEDLES[args.needles], models.llm.tokenizer)
        out.write_text(json.dumps(res, indent=1))
        if args.facts:
            res["facts"] = facts_run(svc, base, args.facts, args.questions, args.data)
    out.write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    print(json.dumps({k: [{kk: vv for kk, vv in r.items() if kk != "questions"} for r in v]
                      for k, v in res.items() if k in ("needle", "facts")}, indent=1))


def replot(path: Path) -> None:
    """The plot again from a results file (``python -c "from bench.documents import replot; replot(...)"``)."""
    plot(json.loads(path.read_text()), path.with_suffix(".png"))


if __name__ == "__main__":
    main()
