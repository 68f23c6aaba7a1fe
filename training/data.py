"""Edit cases from ../shared/data, one shape for CounterFact and zsRE, with the project's splits.

The one loader of the public data: the benchmarks evaluate on it and training learns from it, and the
splits keep the two apart.

Splits (never choose settings on the reported ones):
- CounterFact, by case_id over the three flat files: 0-1999 reported (the paper's Table 2 set),
  2000-9999 development, 10000+ training.
- zsRE eval records (by position): 0-499 reported, 500-1036 development; the 1,000 train records are training.

CounterFact comes in two schemas: "flat" (EasyEdit's files: all 21,919 cases, one paraphrase and one
neighbourhood prompt each) and "rome" (the 1,129 cases kept in ROME's full format: 2 paraphrases and
10 neighbourhood prompts each). The ROME-format file lost its non-ASCII characters upstream, so its
rewrite fields are taken from the flat files, which match it otherwise.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Dataset = Literal["counterfact", "zsre"]
Split = Literal["report", "dev", "train"]

# ../shared/data next to the repository, as this project lays it out; LARIMAR_BENCH_DATA points elsewhere.
DEFAULT_DATA = Path(os.environ.get("LARIMAR_BENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CF_FLAT = ("counterfact-edit.json.gz", "counterfact-train.json.gz", "counterfact-val.json.gz")
CF_ROME = ("counterfact_portability_gpt4.json.gz", "counterfact_subject_replace.json")
CF_SPLITS: dict[str, tuple[int, int]] = {"report": (0, 2000), "dev": (2000, 10000), "train": (10000, 10**9)}
ZSRE_EVAL, ZSRE_TRAIN = "zsre_mend_eval_portability_gpt4.json", "zsre_mend_train-1k.json"
ZSRE_SPLITS: dict[str, tuple[int, int]] = {"report": (0, 500), "dev": (500, 10**9)}
KNOWN, WIKITEXT = "known_1000.json", ("wikitext2_raw_valid.txt", "wikitext2_raw_test.txt")


def fact_sentence(prompt: str, target: str) -> str:
    """An edit as the one sentence the service stores: "prompt target." (no second full stop)."""
    return f"{prompt} {target}" + ("" if target.endswith((".", "?", "!")) else ".")


@dataclass(frozen=True)
class EditRequest:
    """One fact to teach: ``prompt`` (subject already filled in) should continue with ``target_new``."""

    prompt: str  # "The mother tongue of Danielle Darrieux is"
    subject: str  # "Danielle Darrieux" (a substring of prompt; ROME edits at its last token)
    target_new: str  # "English"
    target_true: str  # "French" (what the model should stop saying; may be "" when unknown)


@dataclass(frozen=True)
class Case:
    """One edit and the prompts that test it."""

    dataset: Dataset
    case_id: int
    request: EditRequest  # what is written: prompt + target_new
    paraphrases: tuple[str, ...]  # should now answer target_new
    neighbours: tuple[str, ...]  # should keep answering neighbour_truth
    neighbour_truth: str

    @property
    def fact(self) -> str:
        """The edit as one sentence, as the service stores it."""
        return fact_sentence(self.request.prompt, self.request.target_new)


def _read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _flat_counterfact(data: Path) -> dict[int, dict]:
    return {r["case_id"]: r for name in CF_FLAT for r in _read(data / name)}


def counterfact(data: Path, split: Split, schema: Literal["flat", "rome"] = "flat") -> list[Case]:
    lo, hi = CF_SPLITS[split]
    flat = _flat_counterfact(data)
    cases = []
    if schema == "flat":
        for cid in sorted(c for c in flat if lo <= c < hi):
            r = flat[cid]
            req = EditRequest(r["prompt"], r["subject"], r["target_new"], r["ground_truth"])
            cases.append(Case("counterfact", cid, req, (r["rephrase_prompt"],), (r["locality_prompt"],),
                              r["locality_ground_truth"]))
        return cases
    full = {r["case_id"]: r for name in CF_ROME for r in _read(data / name)}
    for cid in sorted(c for c in full if lo <= c < hi):
        r, f = full[cid], flat[cid]  # flat holds the rewrite fields with their accents intact
        req = EditRequest(f["prompt"], f["subject"], f["target_new"], f["ground_truth"])
        cases.append(Case("counterfact", cid, req, tuple(r["paraphrase_prompts"]), tuple(r["neighborhood_prompts"]),
                          f["ground_truth"]))
    return cases


def zsre(data: Path, split: Split) -> list[Case]:
    if split == "train":
        records, lo, hi = _read(data / ZSRE_TRAIN), 0, 10**9
    else:
        records, (lo, hi) = _read(data / ZSRE_EVAL), ZSRE_SPLITS[split]
    return [
        Case("zsre", i, EditRequest(r["src"], r["subject"], r["alt"], r["pred"]), (r["rephrase"],), (r["loc"],),
             r["loc_ans"])
        for i, r in enumerate(records)
        if lo <= i < hi
    ]


def load(dataset: Dataset, data: Path, split: Split, schema: Literal["flat", "rome"] = "flat") -> list[Case]:
    return counterfact(data, split, schema) if dataset == "counterfact" else zsre(data, split)


def wiki_sentences(path: Path, n: int | None, seed: int) -> list[str]:
    """Plain sentences of 8-30 words from WikiText-2, with its tokenisation (" , " and "@-@") undone."""
    text = path.read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        line = re.sub(r" @(.)@ ", r"\1", line)
        line = re.sub(r" ([,.;:!?)'])", r"\1", line).replace("( ", "(")
        out += [s for s in re.split(r"(?<=[.!?])\s+", line) if 8 <= len(s.split()) <= 30]
    random.Random(seed).shuffle(out)
    return out[:n]


FILLER_SOURCES = ("CounterFact case_id 2000+ (dev, then train)", "zsRE train and dev", "known_1000",
                  "WikiText-2 raw validation and test sentences", "synthetic facts about generated names")
_SYNTHETIC = (("{s} was born in {o}.", ("Lagos", "Osaka", "Quito", "Tunis", "Perth", "Riga", "Hanoi", "Leeds")),
              ("{s} works as a {o}.", ("nurse", "welder", "tailor", "potter", "jeweller", "courier", "curator")),
              ("The headquarters of {s} are in {o}.", ("Oslo", "Lima", "Accra", "Graz", "Kyiv", "Porto", "Cork")),
              ("{s} speaks {o}.", ("Welsh", "Tamil", "Basque", "Zulu", "Icelandic", "Malay", "Latvian")),
              ("{s} plays the {o}.", ("lute", "sitar", "tuba", "bassoon", "marimba", "ukulele", "viola")))
_SYLLABLES = ("bre", "ta", "kon", "mi", "lus", "pe", "dra", "ven", "os", "qui", "ral", "so", "tem", "ub", "ny",
              "fa", "gor", "hel", "ix", "jun", "ked", "lam", "nop", "ert")


def _synthetic(seed: int = 0) -> Iterator[str]:
    """Endless distinct facts about generated names, in the relational shape of real ones."""
    rng = random.Random(seed)
    for i in itertools.count():
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
        surname = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize() + f"-{i}"
        template, objects = _SYNTHETIC[i % len(_SYNTHETIC)]
        yield template.format(s=f"{name} {surname}", o=rng.choice(objects))


def filler_facts(data: Path, n: int) -> list[str]:
    """``n`` facts that are not reported records, to put a benchmark's edits among many others (FILLER_SOURCES, in
    that order: the first 10,000 are CounterFact's own kind, the hardest neighbours for the scope detector)."""
    real = (c.fact for c in itertools.chain(counterfact(data, "dev"), counterfact(data, "train"),
                                            zsre(data, "train"), zsre(data, "dev")))
    known = (fact_sentence(k["prompt"], k["attribute"]) for k in json.loads((data / KNOWN).read_text()))
    wiki = (s for name in WIKITEXT for s in wiki_sentences(data / name, None, 0))
    return list(itertools.islice(itertools.chain(real, known, wiki, _synthetic()), n))
