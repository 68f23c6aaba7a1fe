"""Streaming against whole answers on /v1/chat/completions: time to the first piece of text, and to the end.

Every heldout generation fact (bench/generation/items.py) goes into one memory of an in-process service;
each of the first ``--n`` direct questions is asked three times in turn: not streamed, streamed (time to the
first content chunk and to ``[DONE]``), and through /query, all greedy with the same token budget.

    python -m bench.chat_stream [--n 30] [--max-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from bench.generation.items import build
from models.device import describe_machine
from service.app import create_app
from service.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "chat_stream.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    items = build("heldout")
    settings = Settings(store_url=f"file://{tempfile.mkdtemp(prefix='larimar-chat-')}")
    times: dict[str, list[float]] = {"whole_s": [], "stream_first_s": [], "stream_done_s": [], "query_s": []}
    same = 0
    with TestClient(create_app(settings)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.1)
        c.post("/v1/memories/bench/facts/batch", json={"facts": [{"text": it.fact} for it in items]})
        for it in items[: args.n]:
            ask = {"model": "larimar/bench", "max_tokens": args.max_tokens,
                   "messages": [{"role": "user", "content": it.prompt("question")}]}
            t0 = time.perf_counter()
            whole = c.post("/v1/chat/completions", json=ask).json()["choices"][0]["message"]["content"]
            times["whole_s"].append(time.perf_counter() - t0)
            t0, first, text = time.perf_counter(), None, ""
            with c.stream("POST", "/v1/chat/completions", json=ask | {"stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"]
                        piece = delta[0]["delta"].get("content") if delta else None
                        if piece and first is None:
                            first = time.perf_counter() - t0
                        text += piece or ""
            times["stream_done_s"].append(time.perf_counter() - t0)
            times["stream_first_s"].append(first if first is not None else times["stream_done_s"][-1])
            same += text == whole
            t0 = time.perf_counter()
            c.post("/v1/memories/bench/query",
                   json={"prompt": it.prompt("question"), "max_new_tokens": args.max_tokens})
            times["query_s"].append(time.perf_counter() - t0)
    res = {"machine": describe_machine(), "n": len(times["whole_s"]), "max_tokens": args.max_tokens,
           "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
           "streamed_text_equals_whole": same}
    RESULTS.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
