"""Does an answer read as English? A judge that needs no network, chosen against answers labelled by hand.

``fluency_labels.jsonl`` holds 200 answers from the generation suite's dev-split runs (five runs, with and
without the answer bias; up to 8 per run that the old rule called not fluent, the rest drawn at random, seed
26), each labelled by hand: fluent when it is a well-formed sentence, question or bare phrase, whatever its
content and wherever the length limit cut it; not fluent when words are missing or out of order ("Jane Austen
was born Shanghai", "works as chemist"), a name or word repeats ("Edinburgh Edinburgh"), words are glued or
garbled ("Brenclur Barcelona", "Naples Mandela was born in Naples.") or the answer is a fragment of the
question ("Senrho Analytics as its chief executive."). 30 of the 200 are not fluent.

Judges compared (``python -m bench.generation.fluency``; bench/results/generation/fluency_judge.json):
- ``rule``: the suite's first check: not empty, no word twice in a row, not only the prompt's words.
- ``llm-mean``: the base LLM's mean log-probability per token of the answer, read as the answer to the
  question with the recalled facts shown as the decoder showed them but with no answer bias: words copied from
  a fact cost little, so a low score measures the wording, not the rarity of a made-up name.
- ``llm-min``: the least log-probability of any token after the first, read the same way: one missing word
  or one glued name is one very unlikely token, which a mean over a long answer hides; the first token is
  left out because it only says whether the answer opens as a sentence or as a bare object ("drums").
Thresholds are chosen on the even-numbered labels and checked on the odd ones; ``JUDGE`` is the judge with the
best balanced accuracy on the checked half.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from models.decoders import ContextDecoder, Readout
from models.llm import CausalLM
from models.text import stem, words

LABELS = Path(__file__).with_name("fluency_labels.jsonl")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "generation" / "fluency_judge.json"
JUDGE, THRESHOLD = "llm-min", -7.7  # chosen by ``python -m bench.generation.fluency``


def _stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def rule(prompt: str, answer: str) -> bool:
    """Not empty, no word said twice in a row ("born Vienna Vienna"), and not only the prompt's own words
    said back ("When does Acme's fiscal year ends?"). Repeats compare words, not stems: "as a" stems to
    "a a" (until 2026-12-03 that counted "works as a chemist" as a repeat and "works chemist" as fluent)."""
    said = [w.lower() for w in words(answer)]
    if not said or any(a == b for a, b in zip(said, said[1:], strict=False)):
        return False
    return bool(set(_stems(answer)) - set(_stems(prompt)))


@dataclass(frozen=True)
class Asked:
    prompt: str
    answer: str
    recalled: Sequence[str]  # the facts the LLM was shown, best first (none: the plain LLM answered)


def token_logprobs(llm: CausalLM, asked: Asked) -> list[float]:
    """Log-probability of each answer token after its conversation, facts shown, no bias."""
    readout = Readout(torch.empty(0), tuple(asked.recalled)) if asked.recalled else None
    prefix = llm.token_ids(ContextDecoder().generation_text(llm, asked.prompt, readout))
    answer = llm.tokenizer(asked.answer or " ", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + answer], device=llm.device)  # (1, P + A)
    with torch.inference_mode():
        logits = llm.model(ids).logits[0, len(prefix) - 1 : -1].float()  # (A, V) predicting each answer token
    return logits.log_softmax(-1)[torch.arange(len(answer)), torch.tensor(answer)].tolist()


def scores(llm: CausalLM, asked: Sequence[Asked]) -> dict[str, list[float]]:
    """Per judge that reads the LLM, its score of each answer (higher: more fluent)."""
    tokens = [token_logprobs(llm, a) for a in asked]
    return {"llm-mean": [sum(t) / len(t) for t in tokens],
            "llm-min": [min(t[1:]) if len(t) > 1 else 0.0 for t in tokens]}


def judged(llm: CausalLM, asked: Sequence[Asked]) -> list[bool]:
    """``JUDGE``'s verdicts: fluent or not, per answer."""
    return [s >= THRESHOLD for s in scores(llm, asked)[JUDGE]]


def describe() -> dict[str, object]:
    """What a results file records of the judge that filled its fluent column."""
    return {"judge": JUDGE, "threshold": THRESHOLD, "labels": LABELS.name}


def load_labels(path: Path = LABELS) -> list[tuple[Asked, bool]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(Asked(r["prompt"], r["answer"], r["recalled"]), r["fluent"]) for r in rows]


def _balanced(pred: Sequence[bool], gold: Sequence[bool]) -> float:
    pos = [p for p, g in zip(pred, gold, strict=True) if g]
    neg = [not p for p, g in zip(pred, gold, strict=True) if not g]
    return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


def choose(llm: CausalLM, path: Path = LABELS) -> dict:
    labels = load_labels(path)
    asked, gold = [a for a, _ in labels], [g for _, g in labels]
    by_judge = {"rule": [float(rule(a.prompt, a.answer)) for a in asked], **scores(llm, asked)}
    fit, test = range(0, len(labels), 2), range(1, len(labels), 2)
    out: dict = {"labels": len(labels), "not_fluent": gold.count(False), "judges": {}}
    for name, score in by_judge.items():
        def acc(t: float, idx: range, score: list[float] = score) -> float:
            return _balanced([score[i] >= t for i in idx], [gold[i] for i in idx])

        t = max(sorted({round(x, 1) for x in score}), key=lambda t: acc(t, fit))
        v = [x >= t for x in score]
        out["judges"][name] = {
            "threshold": t, "balanced_accuracy_fit": round(acc(t, fit), 3),
            "balanced_accuracy_test": round(acc(t, test), 3), "accuracy_all": sum(map(bool.__eq__, v, gold)) / len(v),
            "missed": [asked[i].answer for i in range(len(v)) if v[i] and not gold[i]],
            "false_alarms": [asked[i].answer for i in range(len(v)) if not v[i] and gold[i]]}
    out["chosen"] = max(out["judges"], key=lambda k: out["judges"][k]["balanced_accuracy_test"])
    return out


def main() -> None:
    from models.device import describe_machine
    from models.loading import load_llm
    from service.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    res = choose(load_llm(Settings()), args.labels)
    res["machine"] = describe_machine()
    args.out.write_text(json.dumps(res, indent=1))
    for kind, r in res["judges"].items():
        print(kind, {k: v for k, v in r.items() if k not in ("missed", "false_alarms")},
              "missed", len(r["missed"]), "false alarms", len(r["false_alarms"]))
    print("chosen:", res["chosen"])


if __name__ == "__main__":
    main()
