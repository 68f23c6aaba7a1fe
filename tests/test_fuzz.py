"""The API fuzzed from its own OpenAPI document, a CI-sized run of bench/fuzz.py (same code, fewer requests).

Why a test and not only a benchmark: a route that answers 500 to some input the schema allows or forbids, or
a documented status whose body breaks its documented schema, is a bug whichever input finds it, and the
schema-driven generator reaches inputs no hand-written test names. The run is seeded (repeatable), bounded in
requests and time, and ends with the hand-made probes (deep nesting, lone surrogates, huge integers...)
except the two that keep a CPU busy for minutes.
"""

from __future__ import annotations

from pathlib import Path

from bench.fuzz import FuzzConfig, fuzz_server_run, summary


def test_fuzzed_requests_get_no_server_error_and_no_answer_that_breaks_its_documented_schema(tmp_path: Path) -> None:
    config = FuzzConfig(requests=300, seed=20241, max_seconds=150, batch=5, slow_probes=False, progress=False,
                        request_timeout=60)
    report, _ = fuzz_server_run(config, tmp_path)

    # the run did real work: it sent requests, some to the seeded memory's routes, and judged them all
    assert report.requests >= 50, summary(report)
    assert report.reached_seeded >= report.requests // 4, summary(report)
    assert report.probe_requests > 0 and not report.check_errors, report.check_errors
    assert not report.server_died, summary(report)
    # no 5xx (a 503 with Retry-After is admission control, counted apart) and no schema violation
    assert not report.server_errors and not report.schema_violations, summary(report)
