"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis + Hypothesis).

Why: the unit tests send the inputs their authors thought of; this sends what the schema allows (positive
mode) and what it forbids (negative mode) to a real ``larimar serve`` with the real models, and holds every
answer to two rules: no server error (a 5xx, except a 503 with Retry-After, which is admission control saying
"busy" and is counted apart), and a response whose status the schema documents matches the schema given for it.
Statuses the schema does not document (404, 409, 413, 429...) are counted per operation as information, not as
failures: schemathesis's ``response_schema_conformance`` skips them, only ``status_code_conformance`` (not
asserted here) would flag them.

A memory is seeded with a few facts and a document, and a share of the generated requests is pointed at it
(its name, its fact and document ids, its model name for chat, its export as an import body), so the routes
are reached with real data rather than answering 404 to random names. A fixed list of hand-made probes (deep
JSON nesting, lone surrogates, huge integers, odd content types, an over-long chunked body) runs after the
generated requests, under the same checks: those are inputs Hypothesis does not generate from the schema.

    python -m bench.fuzz --requests 2000 [--seed N] [--max-seconds 900] [--out bench/results/fuzz.json]

The server runs with default settings and a file store in a temporary directory, except the per-client rate
limit, raised (LARIMAR_RATE_PER_S / LARIMAR_RATE_BURST, recorded in the results) so a single fuzzing client
is not answered 429 once it outruns 100 requests a second; tests/test_rate_limits.py covers the limiter.
Generated ``max_new_tokens``-like fields inside the accepted range are cut to ``--token-cap`` (CPU generation
is slow; values beyond the range, which are refused before the LLM runs, are sent as generated).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation, BaseSchema

from bench.processes import REPO, ServiceProcess

log = logging.getLogger("bench.fuzz")

RESULTS = REPO / "bench" / "results"
SEEDED = "fuzz-seeded"  # the memory that generated requests are pointed at (a share of them)
SEED_FACTS = [
    "The capital of France is Lyon.",
    "Marie Curie was born in Warsaw.",
    "The Eiffel Tower is located in Rome.",
    "Python was created by Guido van Rossum.",
    "The mother tongue of Danielle Darrieux is English.",
]
SEED_DOCUMENT = ("Larimar is a blue stone. It is found in the Dominican Republic. "
                 "Miners dig it from volcanic rock near Barahona.")
# Body fields that set how many tokens the LLM generates, and the server's default limit for them
# (Settings.max_new_tokens): values in (cap, limit] are cut to the cap, the rest sent as generated.
TOKEN_FIELDS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
TOKEN_LIMIT = 256
MUTATING_METHODS = ("DELETE", "PUT", "POST")  # after these, on the seeded memory, it is re-read
FUZZ_ENV = {"LARIMAR_RATE_PER_S": "1000", "LARIMAR_RATE_BURST": "10000"}


# --------------------------------------------------------------------------------------------- configuration


@dataclass
class FuzzConfig:
    """What one run sends; the defaults are the 2,000-request benchmark run's."""

    requests: int = 2000  # generated requests to send, spread round-robin over operations and modes
    seed: int = 0  # Hypothesis seed of the first batch (each batch derives its own from it)
    max_seconds: float = 900.0  # stop generating once this much time has passed, even short of `requests`
    batch: int = 10  # examples drawn for one (operation, mode) before moving to the next
    real_share: float = 0.6  # share of requests whose path (and chat model) is pointed at the seeded memory
    token_cap: int = 8  # generated max_new_tokens-like values in (cap, TOKEN_LIMIT] are cut to this
    probes: bool = True  # run the hand-made probes after the generated requests
    slow_probes: bool = True  # and those among them that keep the LLM busy for minutes on a CPU
    request_timeout: float = 120.0
    progress: bool = True


# --------------------------------------------------------------------------------------------------- records


@dataclass
class FailureRecord:
    """One distinct failure, keyed by (operation, check, status); the shortest reproduction seen is kept."""

    operation: str
    check: str
    status: int | None
    count: int
    title: str
    message: str
    request: dict[str, Any]
    response: dict[str, Any]
    server_log: str = ""
    source: str = "generated"  # or the probe's name
    # distinct causes merged under this key (the server's exception line, or the check's first message line),
    # each with a count and one request that showed it: one key can hide several bugs
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cause(self) -> str:
        """What went wrong, in a form shared by every request that hit the same bug: variants are keyed by it."""
        if self.check == "transport":
            return f"{self.title}: {self.message.splitlines()[0][:150]}"
        if self.server_log and tracebacks(self.server_log):
            last = [line for line in self.server_log.splitlines() if line and not line[0].isspace()]
            if last:
                return last[-1][:200]
        if self.check == "response_schema_conformance":  # the rule broken and where, not the value that broke it
            lines = self.message.splitlines()
            first = re.sub(r"^(\".*\"|\{.*\}|\[.*\]|[-\w.]+) is ", "<value> is ", lines[0] if lines else self.title)
            where = next((line.rstrip(":") for line in lines if line.startswith("Schema at ")), "")
            return f"{first[:150]} ({where})" if where else first[:200]
        return (self.message.splitlines() or [self.title])[0][:200]

    @property
    def key(self) -> tuple[str, str, int | None]:
        return self.operation, self.check, self.status

    def size(self) -> int:
        return len(self.request.get("url", "")) + len(self.request.get("body") or "")


@dataclass
class FuzzReport:
    """What a run sent and what came back; ``failures`` are what the test asserts empty."""

    requests: int = 0  # generated requests sent
    probe_requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: dict[str, Counter[int]] = field(default_factory=dict)
    undocumented: dict[str, Counter[int]] = field(default_factory=dict)  # status_code_conformance, informational
    admission_503: int = 0  # 503 with Retry-After: accepted, counted apart
    reached_seeded: int = 0  # requests pointed at the seeded memory
    duplicates_skipped: int = 0
    reseeds: int = 0
    connection_retries: list[str] = field(default_factory=list)
    probe_results: list[dict[str, Any]] = field(default_factory=list)  # each probe's status (None: no answer)
    slowest: list[tuple[float, str, int, str, str]] = field(default_factory=list)  # (s, op, status, source, url)
    generation_errors: dict[str, str] = field(default_factory=dict)
    check_errors: dict[str, str] = field(default_factory=dict)
    failures: dict[tuple[str, str, int | None], FailureRecord] = field(default_factory=dict)
    stopped_by: str = ""
    server_died: bool = False

    @property
    def server_errors(self) -> list[FailureRecord]:
        return [f for f in self.failures.values() if f.check in ("not_a_server_error", "transport")]

    @property
    def schema_violations(self) -> list[FailureRecord]:
        return [f for f in self.failures.values() if f.check == "response_schema_conformance"]

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "probe_requests": self.probe_requests, "seconds": round(self.seconds, 1),
            "requests_per_s": round((self.requests + self.probe_requests) / self.seconds, 2) if self.seconds else 0,
            "stopped_by": self.stopped_by, "server_died": self.server_died,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "admission_503_with_retry_after": self.admission_503,
            "reached_seeded_memory": self.reached_seeded, "duplicates_skipped": self.duplicates_skipped,
            "reseeds": self.reseeds, "connection_retries": self.connection_retries,
            "server_errors": len(self.server_errors), "schema_violations": len(self.schema_violations),
            "failures": [asdict(f) for f in sorted(self.failures.values(), key=lambda f: f.key[:2])],
            "per_operation": {op: {str(k): v for k, v in sorted(c.items())}
                              for op, c in sorted(self.per_operation.items())},
            "undocumented_statuses": {op: {str(k): v for k, v in sorted(c.items())}
                                      for op, c in sorted(self.undocumented.items()) if c},
            "slowest": [dict(zip(("seconds", "operation", "status", "source", "request"), s, strict=True))
                        for s in self.slowest],
            "probe_results": self.probe_results,
            "generation_errors": self.generation_errors, "check_errors": self.check_errors,
        }


# --------------------------------------------------------------------------------------------------- helpers


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """POST .../import takes JSON Lines, which schemathesis has no serializer for: a list is one value a line,
    anything else one line; bytes (the seeded memory's export, a probe) go as they are."""
    if isinstance(value, bytes):
        return value
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def machine() -> dict[str, Any]:
    """Where the numbers came from: results are compared across machines and commits."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git("rev-parse", "HEAD"),
            "git_uncommitted": changed, "schemathesis": schemathesis.__version__,
            "hypothesis": hypothesis.__version__, "loadavg_start": os.getloadavg()}


def tracebacks(text: str) -> list[str]:
    """The Python tracebacks in a piece of server log (with their chained causes), each as one string."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if "Traceback (most recent call last)" not in lines[i]:
            i += 1
            continue
        block = [lines[i]]
        i += 1
        while i < len(lines):
            line = lines[i]
            block.append(line)
            i += 1
            if line and not line[0].isspace() and not line.startswith(("Traceback", "During handling",
                                                                          "The above exception")):
                nxt = next((x for x in lines[i:i + 3] if x.strip()), "")
                if not nxt.startswith(("During handling", "The above exception")):
                    break
        out.append("\n".join(block))
    return out


def _text(data: bytes | str | None, limit: int) -> str | None:
    """A body for a report: readable whatever its bytes, and short (a probe's body can be 200 KB)."""
    if data is None:
        return None
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars in all)"


# ---------------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def fuzz_server(workdir: Path, **env: str) -> Iterator[ServiceProcess]:
    """``larimar serve`` with default settings, a file store under ``workdir`` and FUZZ_ENV (raised rate limits),
    ready; stopped gracefully after."""
    proc = ServiceProcess(workdir / "server.log", LARIMAR_STORE_URL=f"file://{workdir / 'store'}", **(FUZZ_ENV | env))
    try:
        seconds = proc.start(timeout=600)
        log.info("server ready on %s after %.0f s (log %s)", proc.base, seconds, proc.log_path)
        yield proc
    finally:
        proc.stop()


def load_schema(base: str) -> BaseSchema:
    """The served /openapi.json, generating both valid and invalid data."""
    config = schemathesis.Config.from_dict({"generation": {"mode": "all"}})
    return schemathesis.openapi.from_url(f"{base}/openapi.json", config=config, timeout=30)


def _retrying(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """A housekeeping request (not counted, not judged), tried once more on a fresh connection: the server may
    close a kept-alive connection after refusing a probe's body unread."""
    try:
        return session.request(method, url, **kwargs)
    except requests.ConnectionError:
        session.close()
        return session.request(method, url, **kwargs)


@dataclass
class Seeded:
    """The seeded memory's live ids, re-read when a request may have changed them."""

    name: str = SEEDED
    fact_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    export: bytes = b""
    stale: bool = True

    def refresh(self, session: requests.Session, base: str) -> bool:
        """Re-read (and re-seed if the fuzzing forgot or deleted most of it); True when it had to re-seed."""
        url = f"{base}/v1/memories/{self.name}"
        r = _retrying(session, "GET", f"{url}/facts", params={"limit": 1000}, timeout=60)
        reseeded = r.status_code == 404 or (r.ok and r.json()["total"] < len(SEED_FACTS))
        if reseeded:
            facts = [{"text": t, "metadata": {"seed": i}} for i, t in enumerate(SEED_FACTS)]
            _retrying(session, "POST", f"{url}/facts/batch", json={"facts": facts}, timeout=120).raise_for_status()
            _retrying(session, "POST", f"{url}/documents", json={"text": SEED_DOCUMENT, "title": "seed"},
                      timeout=120).raise_for_status()
            r = _retrying(session, "GET", f"{url}/facts", params={"limit": 1000}, timeout=60)
        r.raise_for_status()
        self.fact_ids = [f["id"] for f in r.json()["facts"]]
        docs = _retrying(session, "GET", f"{url}/documents", timeout=60)
        self.doc_ids = [d["id"] for d in docs.json().get("documents", [])] if docs.ok else []
        if not self.export:
            e = _retrying(session, "GET", f"{url}/export", timeout=60)
            self.export = e.content if e.ok else b""
        self.stale = False
        return reseeded


# ---------------------------------------------------------------------------------------------- the fuzzer

CHECKS: list[tuple[str, Callable[..., Any]]] = [
    ("not_a_server_error", schemathesis.checks.not_a_server_error),
    ("response_schema_conformance", schemathesis.checks.response_schema_conformance),
]
STATUS_CHECK = schemathesis.checks.status_code_conformance  # informational: undocumented statuses


class Fuzzer:
    """Sends cases to one server and judges the answers; ``report`` accumulates across ``run`` and ``probe``."""

    def __init__(self, base: str, schema: BaseSchema, config: FuzzConfig, log_path: Path | None = None) -> None:
        self.base, self.schema, self.config, self.log_path = base, schema, config, log_path
        self.session = requests.Session()
        self.report = FuzzReport()
        self.seeded = Seeded()
        self.seen: set[tuple[str, ...]] = set()
        self.deadline = 0.0
        self.bar: Any = None

    # ------------------------------------------------------------------ generated requests

    def run(self) -> FuzzReport:
        """Round-robin over every (operation, mode): ``batch`` Hypothesis examples each, until ``requests``
        were sent, ``max_seconds`` passed, or no unit produces a request it has not sent already."""
        cfg, t0 = self.config, time.perf_counter()
        self.deadline = time.monotonic() + cfg.max_seconds
        self._refresh()
        operations = [r.ok() for r in self.schema.get_all_operations() if isinstance(r, Ok)]
        units = [(op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        log.info("%d operations, %d (operation, mode) units, %d requests to send", len(operations), len(units),
                 cfg.requests)
        self.bar = _progress(cfg.requests, cfg.progress)
        round_no = 0
        while units and not self._done():
            for unit in list(units):
                if self._done():
                    break
                if not self._batch(*unit, seed=cfg.seed * 1_000_003 + round_no * 7919 + units.index(unit)):
                    units.remove(unit)  # exhausted: nothing new to send (or it cannot be generated)
            round_no += 1
        self.report.stopped_by = ("requests" if self.report.requests >= cfg.requests else
                                  "time" if time.monotonic() >= self.deadline else "exhausted")
        self.bar.close()
        self.report.seconds += time.perf_counter() - t0
        return self.report

    def _done(self) -> bool:
        return (self.report.requests >= self.config.requests or time.monotonic() >= self.deadline
                or self.report.server_died)

    def _batch(self, op: APIOperation, mode: GenerationMode, seed: int) -> bool:
        """Up to ``batch`` examples of one operation in one mode; False when it sent nothing new."""
        sent_before = self.report.requests
        label = f"{op.label} [{mode.value}]"

        @hypothesis.settings(max_examples=self.config.batch, database=None, deadline=None, phases=[Phase.generate],
                             suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                             report_multiple_bugs=False)
        @hypothesis.seed(seed)
        @hypothesis.given(case=op.as_strategy(generation_mode=mode), dice=st.integers(0, 2**32 - 1))
        def examples(case: Case, dice: int) -> None:
            if self._done():
                return
            try:
                self.send(case, random.Random(dice))
            except Exception as e:  # never raised to Hypothesis: it would shrink, sending the request again
                self.report.check_errors.setdefault(f"{label} (fuzzer)", f"{type(e).__name__}: {str(e)[:300]}")

        try:
            examples()
        except Unsatisfiable:
            return False  # e.g. no way to make GET /healthz invalid
        except Exception as e:  # a case schemathesis cannot build or serialize: recorded, the unit dropped
            self.report.generation_errors[label] = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("generation error for %s: %s", label, self.report.generation_errors[label])
            return False
        return self.report.requests > sent_before

    def point_at_seeded(self, case: Case, rnd: random.Random) -> bool:
        """For a share of cases, the seeded memory's name, a fact or document of it, its chat model name and its
        export as an import body, in place of what was generated; True when the case names that memory."""
        if rnd.random() >= self.config.real_share:
            return False
        if self.seeded.stale:
            self._refresh()
        params = dict(case.path_parameters or {})
        if "memory" in params:
            params["memory"] = self.seeded.name
            if "fact_id" in params and self.seeded.fact_ids and rnd.random() < 0.7:
                params["fact_id"] = rnd.choice(self.seeded.fact_ids)
            if "doc_id" in params and self.seeded.doc_ids and rnd.random() < 0.7:
                params["doc_id"] = rnd.choice(self.seeded.doc_ids)
            case.path_parameters = params
            if case.path.endswith("/import") and self.seeded.export and rnd.random() < 0.5:
                case.body = self.seeded.export
            return True
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = rnd.choice([f"larimar/{self.seeded.name}", "larimar"])
            return case.body["model"] != "larimar"
        return False

    def tame(self, case: Case) -> None:
        """Generation-length fields in the accepted range cut to ``token_cap``: bounds the time an LLM call takes."""
        if isinstance(case.body, dict):
            for key in TOKEN_FIELDS:
                value = case.body.get(key)
                if type(value) is int and self.config.token_cap < value <= TOKEN_LIMIT:
                    case.body[key] = self.config.token_cap

    def send(self, case: Case, rnd: random.Random) -> None:
        """One generated request: pointed at the seeded memory or not, sent once (duplicates skipped), judged."""
        seeded = self.point_at_seeded(case, rnd)
        self.tame(case)
        key = (case.method, case.formatted_path, repr(sorted((case.query or {}).items(), key=str)),
               repr(dict(case.headers or {})), repr(case.body))
        if key in self.seen:
            self.report.duplicates_skipped += 1
            return
        self.seen.add(key)
        self.report.requests += 1
        self.report.reached_seeded += seeded
        self.execute(case, lambda: case.call(base_url=self.base, session=self.session,
                                             timeout=self.config.request_timeout), "generated", retry=True)
        if seeded and case.method in MUTATING_METHODS:
            self.seeded.stale = True
        if self.report.requests % 100 == 0:  # progress in a log too (tqdm is off when stderr is no terminal)
            log.info("%d/%d requests, %.0f s, statuses %s, %d distinct failures", self.report.requests,
                     self.config.requests, self.config.max_seconds - (self.deadline - time.monotonic()),
                     dict(sorted(self.report.statuses.items())), len(self.report.failures))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failures=len(self.report.failures), s5xx=sum(
                v for k, v in self.report.statuses.items() if k >= 500), refresh=False)

    # ------------------------------------------------------------------ judging

    def execute(self, case: Case, call: Callable[[], Any], source: str, retry: bool = False) -> int | None:
        """Make the call, count its status, run the checks, record failures with their server log. ``retry``: a
        connection reset is tried once more on a fresh connection (counted): a reset of a kept-alive connection
        belongs to the request before, not this one; a second failure is recorded as a transport failure."""
        label = case.operation.label
        offset = self._log_size()
        try:
            try:
                response = call()
            except requests.ConnectionError as e:
                if not retry:
                    raise
                self.session.close()
                self.report.connection_retries.append(f"{label}: {str(e)[:200]}")
                response = call()
        except requests.RequestException as e:
            alive = self._alive()
            self.report.server_died = not alive
            self._record(FailureRecord(
                operation=label, check="transport", status=None, count=1, title=type(e).__name__,
                message=f"{e}"[:800] + ("" if alive else "\nthe server no longer answers /healthz"),
                request=_request_of(case, getattr(e, "request", None), self.base), response={},
                server_log=self._log_since(offset), source=source))
            return None
        status = response.status_code
        self.report.slowest.append((round(response.elapsed, 2), label, status, source,
                                    f"{response.request.method} {response.request.path_url}"[:200]))
        self.report.slowest = sorted(self.report.slowest, reverse=True)[:10]
        self.report.statuses[status] += 1
        self.report.per_operation.setdefault(label, Counter())[status] += 1
        admission = status == 503 and "retry-after" in response.headers
        self.report.admission_503 += admission
        for name, check in CHECKS:
            if admission and name == "not_a_server_error":
                continue
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup as group:
                for failure in group.exceptions:
                    self._record(FailureRecord(
                        operation=label, check=name, status=status, count=1, title=failure.title,
                        message=failure.message[:1500], request=_request_of(case, response.request, self.base),
                        response={"status": status, "headers": _headers(response.headers),
                                  "body": _text(response.content, 300)},
                        server_log=self._log_since(offset) if status >= 500 else "", source=source))
            except Exception as e:  # a check that could not run: reported, never silent
                self.report.check_errors.setdefault(f"{label} {name}", f"{type(e).__name__}: {str(e)[:300]}")
        try:
            case.validate_response(response, checks=[STATUS_CHECK])
        except FailureGroup:
            self.report.undocumented.setdefault(label, Counter())[status] += 1
        except Exception as e:
            self.report.check_errors.setdefault(f"{label} status_code_conformance", f"{type(e).__name__}: {e}")
        return status

    def _record(self, record: FailureRecord) -> None:
        """Deduplicate by (operation, check, status), keeping the shortest reproduction and each distinct cause."""
        old = self.report.failures.get(record.key)
        variants = old.variants if old is not None else {}
        cause = record.cause()
        if cause in variants:
            variants[cause]["count"] += 1
        elif len(variants) < 8:
            variants[cause] = {"count": 1, "source": record.source,
                               "request": f"{record.request.get('method')} {record.request.get('path', '')}",
                               "body": _text(record.request.get("body"), 200)}
            log.warning("new failure: %s %s -> %s (%s) from %s", record.operation, record.check, record.status,
                        cause, record.source)
        record.variants = variants
        if old is None:
            self.report.failures[record.key] = record
        elif record.size() < old.size():
            record.count = old.count + 1
            self.report.failures[record.key] = record
        else:
            old.count += 1

    def _refresh(self) -> None:
        if self.seeded.refresh(self.session, self.base):
            self.report.reseeds += 1

    def _alive(self) -> bool:
        try:
            return self.session.get(f"{self.base}/healthz", timeout=10).ok
        except requests.RequestException:
            return False

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        """What the server logged since ``offset``: its tracebacks if any, else the last lines."""
        if self.log_path is None:
            return ""
        size, deadline = -1, time.monotonic() + 5  # the server logs the traceback as, or just after, it answers
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if self._log_size() == size:
                break
            size = self._log_size()
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read(200_000).decode("utf-8", "replace")
            found = [tb if len(tb) < 6000 else f"{tb.splitlines()[0]}\n  ...\n{tb[-5000:]}" for tb in tracebacks(text)]
            return "\n\n".join(found[-2:]) if found else "\n".join(text.splitlines()[-15:])[-3000:]
        return ""

    # ------------------------------------------------------------------ probes

    def probe(self) -> FuzzReport:
        """The hand-made probes (``probes``), sent as raw bytes and judged like generated requests."""
        t0 = time.perf_counter()
        self._refresh()
        for name, method, path, query, body, headers, slow in probes(self.seeded):
            if slow and not self.config.slow_probes:
                continue
            template, params = _template(path)
            op = self.schema.find_operation_by_label(f"{method} {template}")
            if op is None:
                self.report.check_errors[f"probe {name}"] = f"no operation for {method} {path}"
                continue
            case = op.Case(path_parameters=params, query=query, media_type=(headers or {}).get("Content-Type"))
            self.report.probe_requests += 1

            def call(method: str = method, path: str = path, query: dict[str, Any] = query,
                     body: bytes | Callable[[], Iterator[bytes]] | None = body,
                     headers: dict[str, str] | None = headers) -> schemathesis.Response:
                data = body() if callable(body) else body
                with requests.Session() as fresh:  # its own connection: a refused body may close it
                    r = fresh.request(method, self.base + path, params=query, data=data, headers=headers,
                                      timeout=self.config.request_timeout)
                return schemathesis.Response.from_requests(r, verify=True)

            t = time.perf_counter()
            status = self.execute(case, call, f"probe: {name}")
            self.report.probe_results.append({"probe": name, "status": status,
                                              "seconds": round(time.perf_counter() - t, 3)})
            self.seeded.stale = True
            self._refresh()
        self.report.seconds += time.perf_counter() - t0
        return self.report


def _progress(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc="fuzz", unit="req", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


class _NoBar:
    """Stands in for tqdm where it is missing: progress is also logged every 100 requests."""

    def update(self, _: int) -> None: ...
    def set_postfix(self, **_: Any) -> None: ...
    def close(self) -> None: ...


def _headers(headers: Any) -> dict[str, str]:
    """schemathesis keeps header values as lists; a report wants one string each."""
    return {k: ", ".join(v) if isinstance(v, list) else str(v) for k, v in dict(headers).items()}


def _request_of(case: Case, prepared: requests.PreparedRequest | None, base: str) -> dict[str, Any]:
    """A reproduction: method, URL, headers and body as sent (from the prepared request when there is one)."""
    if prepared is None:
        return {"method": case.method, "url": base + case.formatted_path, "query": case.query,
                "body": _text(repr(case.body), 4000)}
    headers = {k: v for k, v in prepared.headers.items() if k.lower() not in ("user-agent", "accept-encoding",
                                                                                 "connection")}
    body = prepared.body if isinstance(prepared.body, bytes | str | None) else "<streamed body>"
    return {"method": prepared.method, "url": prepared.url, "path": prepared.path_url, "headers": headers,
            "body": _text(body, 4000)}


def _template(path: str) -> tuple[str, dict[str, str]]:
    """A probe's concrete path back to its OpenAPI template and path parameters
    (/v1/memories/x/facts/y -> /v1/memories/{memory}/facts/{fact_id}, {memory: x, fact_id: y})."""
    parts = path.split("?")[0].split("/")
    names = {3: "memory"}
    if len(parts) > 5 and parts[4] == "facts" and parts[5] not in ("batch", "forget"):
        names[5] = "fact_id"
    if len(parts) > 5 and parts[4] == "documents":
        names[5] = "doc_id"
    if parts[:3] != ["", "v1", "memories"] or len(parts) < 4:
        return "/".join(parts), {}
    params = {names[i]: p for i, p in enumerate(parts) if i in names}
    return "/".join("{" + names[i] + "}" if i in names else p for i, p in enumerate(parts)), params


# ------------------------------------------------------------------------------------------------ probes

# (name, method, path, query, body, headers, slow)
Probe = tuple[str, str, str, dict[str, Any], bytes | Callable[[], Iterator[bytes]] | None, dict[str, str] | None,
              bool]
SLOW_PROBES = ("score 2000 emoji candidates",)  # 90 s to minutes of one CPU core's LLM time
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def probes(seeded: Seeded) -> list[Probe]:
    """Inputs the schema-driven generation does not reach: nesting past Python's recursion limit, lone
    surrogates (not valid UTF-8, but valid JSON escapes), integers past 64 bits, NaN and Infinity (Python's
    json accepts them), bodies of the wrong type, an over-long chunked body; SLOW_PROBES are flagged."""
    m = f"/v1/memories/{seeded.name}"
    fact = seeded.fact_ids[0] if seeded.fact_ids else "missing"
    doc = seeded.doc_ids[0] if seeded.doc_ids else "missing"

    def nested(depth: int) -> str:
        return "[" * depth + "]" * depth

    def chat(extra: str) -> bytes:
        return ('{"model":"larimar/' + seeded.name + '","messages":[{"role":"user","content":"Where is the '
                'Eiffel Tower?"}],"max_tokens":4' + extra + "}").encode()

    def chunked_2mib() -> Iterator[bytes]:
        yield b'{"text":"'
        for _ in range(64):
            yield b"a" * 32768
        yield b'"}'

    emoji = "\\ud83d\\ude00" * 2000  # 2,000 characters, each a surrogate pair escape: many tokens
    out: list[tuple[str, str, str, dict[str, Any], Any, dict[str, str] | None]] = []
    for depth in (100_000, 5_000, 990, 900, 200):
        out.append((f"metadata nested {depth} deep", "POST", f"{m}/facts", {},
                    ('{"text":"Deep nesting.","metadata":{"a":' + nested(depth) + "}}").encode(), JSON))
    out += [
        ("chat messages nested 100000 deep", "POST", "/v1/chat/completions", {},
         ('{"model":"larimar","messages":' + nested(100_000) + "}").encode(), JSON),
        ("batch nested 100000 deep", "POST", f"{m}/facts/batch", {},
         ('{"facts":' + nested(100_000) + "}").encode(), JSON),
        ("import line nested 100000 deep", "POST", f"{m}/import", {},
         ('{"text":"x","metadata":{"a":' + nested(100_000) + "}}\n").encode(), NDJSON),
        ("import line nested 900 deep", "POST", f"{m}/import", {},
         ('{"text":"x","metadata":{"a":' + nested(900) + "}}\n").encode(), NDJSON),
        ("document metadata nested 5000 deep", "POST", f"{m}/documents", {},
         ('{"text":"One. Two.","metadata":{"a":' + nested(5000) + "}}").encode(), JSON),
        ("put metadata nested 5000 deep", "PUT", f"{m}/facts/{fact}", {},
         ('{"metadata":{"a":' + nested(5000) + "}}").encode(), JSON),
        # lone surrogates: valid JSON escapes, no UTF-8 encoding
        ("fact text lone surrogate", "POST", f"{m}/facts", {}, b'{"text":"Paris \\ud800 is big."}', JSON),
        ("fact metadata key lone surrogate", "POST", f"{m}/facts", {},
         b'{"text":"A fact.","metadata":{"\\udfff":"\\ud800"}}', JSON),
        ("batch fact lone surrogate", "POST", f"{m}/facts/batch", {}, b'{"facts":[{"text":"\\ud800"}]}', JSON),
        ("put text lone surrogate", "PUT", f"{m}/facts/{fact}", {}, b'{"text":"\\udc00 The capital."}', JSON),
        ("query prompt lone surrogate", "POST", f"{m}/query", {},
         b'{"prompt":"Where is \\ud800?","max_new_tokens":2}', JSON),
        ("score candidate lone surrogate", "POST", f"{m}/score", {},
         b'{"prompt":"The capital of France is","candidates":["\\ud800","Lyon"]}', JSON),
        ("document text lone surrogate", "POST", f"{m}/documents", {},
         b'{"text":"First \\ud800 sentence. Second one.","title":"\\udfff"}', JSON),
        ("chat content lone surrogate", "POST", "/v1/chat/completions", {},
         b'{"model":"larimar","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}', JSON),
        ("chat stop lone surrogate", "POST", "/v1/chat/completions", {}, chat(',"stop":["\\ud800"]'), JSON),
        ("chat stream lone surrogate", "POST", "/v1/chat/completions", {},
         chat(',"stream":true,"stop":"\\udfff"'), JSON),
        ("chat memory lone surrogate", "POST", "/v1/chat/completions", {},
         b'{"model":"larimar","memory":"\\ud800","messages":[{"role":"user","content":"hi"}],"max_tokens":2}', JSON),
        ("forget id lone surrogate", "POST", f"{m}/facts/forget", {}, b'{"ids":["\\ud800"]}', JSON),
        ("supersedes lone surrogate", "POST", f"{m}/facts", {}, b'{"text":"A b c.","supersedes":["\\ud800"]}', JSON),
        ("import text lone surrogate", "POST", f"{m}/import", {}, b'{"text":"\\ud800"}\n',
         NDJSON),
        ("search q invalid utf-8", "GET", f"{m}/facts?q=%ed%a0%80%ff", {}, None, None),
        ("path memory invalid utf-8", "GET", "/v1/memories/%ff%fe", {}, None, None),
        ("path fact id invalid utf-8", "GET", f"{m}/facts/%ed%a0%80", {}, None, None),
        ("fact text 2000 emoji", "POST", f"{m}/facts", {}, ('{"text":"' + emoji + '"}').encode(), JSON),
        ("query prompt 2000 emoji, memory on", "POST", f"{m}/query", {},
         ('{"prompt":"' + emoji + '","max_new_tokens":1,"memory_mode":"on"}').encode(), JSON),
        ("score 2000 emoji candidates", "POST", f"{m}/score", {},
         ('{"prompt":"' + emoji + '","candidates":["' + emoji + '","Lyon"]}').encode(), JSON),
        ("fact text combining marks", "POST", f"{m}/facts", {},
         ('{"text":"e' + "\\u0301" * 1999 + '"}').encode(), JSON),
        ("fact text NUL and bidi", "POST", f"{m}/facts", {},
         b'{"text":"The \\u0000 capital \\u202e of Spain is Madrid.\\ufeff"}', JSON),
        # huge and odd numbers
        ("list offset 2**63", "GET", f"{m}/facts", {"offset": str(2**63)}, None, None),
        ("list offset 10**30", "GET", f"{m}/facts", {"offset": str(10**30)}, None, None),
        ("list offset 10**5000", "GET", f"{m}/facts", {"offset": "9" * 5000}, None, None),
        ("query max_new_tokens 10**30", "POST", f"{m}/query", {},
         b'{"prompt":"Where is the Eiffel Tower?","max_new_tokens":1000000000000000000000000000000}', JSON),
        ("query max_new_tokens 0", "POST", f"{m}/query", {}, b'{"prompt":"Hi","max_new_tokens":0}', JSON),
        ("query max_new_tokens -1", "POST", f"{m}/query", {}, b'{"prompt":"Hi","max_new_tokens":-1}', JSON),
        ("query max_new_tokens 1e3 float", "POST", f"{m}/query", {}, b'{"prompt":"Hi","max_new_tokens":1e3}', JSON),
        ("chat seed 2**64", "POST", "/v1/chat/completions", {}, chat(f',"seed":{2**64},"temperature":0.7'), JSON),
        ("chat seed -1", "POST", "/v1/chat/completions", {}, chat(',"seed":-1,"temperature":0.7'), JSON),
        ("chat seed 10**4300", "POST", "/v1/chat/completions", {}, chat(',"seed":' + "9" * 4300), JSON),
        ("chat temperature NaN", "POST", "/v1/chat/completions", {}, chat(',"temperature":NaN'), JSON),
        ("chat temperature Infinity", "POST", "/v1/chat/completions", {}, chat(',"temperature":Infinity'), JSON),
        ("chat temperature 1e308", "POST", "/v1/chat/completions", {}, chat(',"temperature":1e308'), JSON),
        ("chat temperature -1", "POST", "/v1/chat/completions", {}, chat(',"temperature":-1'), JSON),
        ("chat top_p NaN", "POST", "/v1/chat/completions", {}, chat(',"temperature":0.5,"top_p":NaN'), JSON),
        ("chat top_p 0", "POST", "/v1/chat/completions", {}, chat(',"temperature":0.5,"top_p":0'), JSON),
        ("chat max_tokens 10**30", "POST", "/v1/chat/completions", {},
         chat(',"max_completion_tokens":1000000000000000000000000000000'), JSON),
        ("chat empty stop string", "POST", "/v1/chat/completions", {}, chat(',"stop":[""]'), JSON),
        ("chat no messages", "POST", "/v1/chat/completions", {}, b'{"model":"larimar","messages":[]}', JSON),
        ("chat only system", "POST", "/v1/chat/completions", {},
         b'{"model":"larimar","messages":[{"role":"system","content":""}],"max_tokens":2}', JSON),
        ("chat only assistant", "POST", "/v1/chat/completions", {},
         b'{"model":"larimar","messages":[{"role":"assistant","content":"x"}],"max_tokens":2}', JSON),
        ("chat stream usage", "POST", "/v1/chat/completions", {},
         chat(',"stream":true,"stream_options":{"include_usage":true}'), JSON),
        ("import created_at huge", "POST", f"{m}/import", {},
         b'{"id":"x1","text":"A fact.","created_at":1e308}\n{"id":"x2","text":"B.","created_at":"9999999-01-01"}\n',
         NDJSON),
        ("import latent wrong shape", "POST", f"{m}/import", {},
         b'{"id":"x3","text":"A fact.","latent":[1e308,NaN]}\n', NDJSON),
        ("import invalid utf-8", "POST", f"{m}/import", {}, b'\xff\xfe{"text":"x"}\n',
         NDJSON),
        # bodies of the wrong shape or type
        ("put body null", "PUT", f"{m}/facts/{fact}", {}, b"null", JSON),
        ("put body list", "PUT", f"{m}/facts/{fact}", {}, b"[]", JSON),
        ("fact body truncated", "POST", f"{m}/facts", {}, b'{"text":', JSON),
        ("fact body invalid utf-8", "POST", f"{m}/facts", {}, b'{"text":"\xff\xfe"}', JSON),
        ("fact body as text/plain", "POST", f"{m}/facts", {}, b'{"text":"Plain."}', {"Content-Type": "text/plain"}),
        ("fact body no content type", "POST", f"{m}/facts", {}, b'{"text":"None."}', {}),
        ("fact body 2 MiB chunked", "POST", f"{m}/facts", {}, chunked_2mib, JSON),
        ("batch 257 facts", "POST", f"{m}/facts/batch", {},
         json.dumps({"facts": [{"text": f"Fact {i}."} for i in range(257)]}).encode(), JSON),
        ("score 33 candidates", "POST", f"{m}/score", {},
         json.dumps({"prompt": "x", "candidates": [str(i) for i in range(33)]}).encode(), JSON),
        ("document empty text", "POST", f"{m}/documents", {}, b'{"text":""}', JSON),
        ("document only spaces", "POST", f"{m}/documents", {}, b'{"text":"   \\n\\n  "}', JSON),
        ("document get", "GET", f"{m}/documents/{doc}", {}, None, None),
        ("export with latents", "GET", f"{m}/export", {"latents": "true"}, None, None),
        ("memory name 65 chars", "GET", "/v1/memories/" + "a" * 65, {}, None, None),
        ("memory name dot-dot", "GET", "/v1/memories/..%2f..%2fetc", {}, None, None),
    ]
    return sorted(((*p, p[0] in SLOW_PROBES) for p in out), key=lambda p: p[-1])  # slow ones last


# --------------------------------------------------------------------------------------------------- output


def fuzz_server_run(config: FuzzConfig, workdir: Path) -> tuple[FuzzReport, Path]:
    """Start a server in ``workdir``, fuzz it, stop it: the report and the server's log."""
    with fuzz_server(workdir) as proc:
        fuzzer = Fuzzer(proc.base, load_schema(proc.base), config, proc.log_path)
        fuzzer.run()
        if config.probes and not fuzzer.report.server_died:
            fuzzer.probe()
        return fuzzer.report, proc.log_path


def write_results(report: FuzzReport, config: FuzzConfig, out: Path, info: dict[str, Any]) -> None:
    """The JSON results and a short Markdown table beside it (same name, .md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "config": asdict(config), "server_env": FUZZ_ENV, "seeded_memory": SEEDED,
            **report.as_json()}
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(data))


def markdown(data: dict[str, Any]) -> str:
    """The results for a reader: totals, statuses per operation, each failure's key and its distinct causes."""
    m = data["machine"]
    env = ", ".join(f"{k}={v}" for k, v in data["server_env"].items())
    lines = [
        "# API fuzzing (schemathesis, from /openapi.json)", "",
        f"`python -m bench.fuzz --requests {data['config']['requests']} --seed {data['config']['seed']}` on "
        f"{m['cpu']} ({m['cpus']} CPUs), {m['date']}, commit {m['git_commit'][:12]}"
        + (" with uncommitted changes" if m["git_uncommitted"] else "") + f"; schemathesis {m['schemathesis']}.",
        f"Server: default settings, file store, rate limit raised ({env}).",
        "", "| | |", "| --- | --- |",
        f"| generated requests | {data['requests']} (stopped by {data['stopped_by']}) |",
        f"| probe requests | {data['probe_requests']} |",
        f"| time | {data['seconds']} s ({data['requests_per_s']} req/s) |",
        f"| pointed at the seeded memory | {data['reached_seeded_memory']} |",
        f"| server errors (5xx, transport) | {data['server_errors']} |",
        f"| schema violations | {data['schema_violations']} |",
        f"| 503 with Retry-After (admission) | {data['admission_503_with_retry_after']} |",
        "", "| status | responses |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in data["statuses"].items()],
        "", "| operation | statuses | undocumented |", "| --- | --- | --- |",
        *[f"| `{op}` | {', '.join(f'{k}: {v}' for k, v in c.items())} | "
          f"{', '.join(f'{k}: {v}' for k, v in data['undocumented_statuses'].get(op, {}).items())} |"
          for op, c in data["per_operation"].items()],
    ]
    if data["failures"]:
        lines += ["", "| operation | check | status | count | source | request |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for f in data["failures"]:
            body = (f["request"].get("body") or "")[:80].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{f['operation']}` | {f['check']} | {f['status']} | {f['count']} | {f['source']} | "
                         f"`{f['request'].get('method')} {f['request'].get('path', f['request'].get('url'))}` {body} |")
        lines += ["", "Distinct causes (server exception, or the check's message):", ""]
        for f in data["failures"]:
            for cause, v in f["variants"].items():
                lines.append(f"- `{f['operation']}` {f['status']}: {cause} ({v['count']}x; {v['source']}: "
                             f"`{v['request']}`)")
    else:
        lines += ["", "No failures."]
    if data["probe_results"]:
        lines += ["", "| probe | status | s |", "| --- | --- | --- |",
                  *[f"| {p['probe']} | {p['status']} | {p['seconds']} |" for p in data["probe_results"]]]
    return "\n".join(lines) + "\n"


def summary(report: FuzzReport) -> str:
    """The failures, readable in a test's assertion message: each with its reproduction and server traceback."""
    out = [f"{report.requests} generated + {report.probe_requests} probe requests, statuses "
           f"{dict(sorted(report.statuses.items()))}: {len(report.server_errors)} server errors, "
           f"{len(report.schema_violations)} schema violations"]
    for f in sorted(report.failures.values(), key=lambda f: (f.check, f.operation)):
        req = f.request
        out += [f"\n== {f.operation}: {f.check}, status {f.status}, {f.count}x ({f.source}): {f.title}",
                f"   {req.get('method')} {req.get('path', req.get('url'))}  body: {_text(req.get('body'), 300)}",
                f"   -> {f.response.get('status')} {f.response.get('body')}",
                *([f"   {line}" for line in f.message.splitlines() if line.strip()][:3]
                  if f.check != "not_a_server_error" else []),
                *(["   server: " + line for line in f.server_log.splitlines()[-4:]] if f.server_log else []),
                *(f"   also: {c} ({v['count']}x, {v['source']}: {v['request']} {v['body']})"
                  for c, v in f.variants.items() if c != f.cause())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=FuzzConfig.requests)
    ap.add_argument("--seed", type=int, default=FuzzConfig.seed)
    ap.add_argument("--max-seconds", type=float, default=FuzzConfig.max_seconds)
    ap.add_argument("--batch", type=int, default=FuzzConfig.batch)
    ap.add_argument("--token-cap", type=int, default=FuzzConfig.token_cap)
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--no-slow-probes", action="store_true", help=f"skip {', '.join(SLOW_PROBES)}")
    ap.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    ap.add_argument("--workdir", type=Path, help="keep the store and server.log here (default: a temporary dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    config = FuzzConfig(requests=args.requests, seed=args.seed, max_seconds=args.max_seconds, batch=args.batch,
                        token_cap=args.token_cap, probes=not args.no_probes, slow_probes=not args.no_slow_probes,
                        progress=sys.stderr.isatty())
    info = machine()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="larimar-fuzz-")))
        workdir.mkdir(parents=True, exist_ok=True)
        report, _ = fuzz_server_run(config, workdir)
        write_results(report, config, args.out, info)
    log.info("%s\nresults in %s and %s", summary(report), args.out, args.out.with_suffix(".md"))
    return 1 if report.server_errors or report.schema_violations else 0


if __name__ == "__main__":
    sys.exit(main())
