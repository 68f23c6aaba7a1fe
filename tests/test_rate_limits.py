"""Per-key rate limits (service/ratelimit.py): a token bucket per API key (per client address for calls that
name no valid key), spent before any work on every /v1 route and /mcp request, never on the probes; past it
429 with Retry-After. The bucket is tested with an injected clock (no sleeps), the service over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.auth import ApiKey
from service.ratelimit import RateLimited, RateLimiter, TokenBucket
from service.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refuses_without_spending() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=5, clock=clock)
    assert [bucket.take("a") for _ in range(5)] == [0.0] * 5
    assert bucket.take("a") == pytest.approx(0.5), "one token comes back in 1/rate seconds"
    assert bucket.take("a") == pytest.approx(0.5), "a refused call spends nothing: the wait does not grow"
    assert bucket.take("b") == 0.0, "another identity has a bucket of its own"


def test_a_bucket_refills_at_its_rate_up_to_its_size() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=4, clock=clock)
    for _ in range(4):
        bucket.take("a")
    clock.now += 0.25  # half a token back
    assert bucket.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take("a") == 0.0 and bucket.take("a") > 0
    clock.now += 1.0  # two tokens
    assert [bucket.take("a") for _ in range(2)] == [0.0, 0.0] and bucket.take("a") > 0
    clock.now += 3600  # idle for long: full again, never more than its size
    assert [bucket.take("a") for _ in range(4)] == [0.0] * 4 and bucket.take("a") > 0


def test_a_bucket_sustains_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=10, clock=clock)
    allowed = 0
    for _ in range(1000):  # a client asking 100 times a second for 10 s
        clock.now += 0.01
        allowed += bucket.take("a") == 0.0
    assert 100 + 10 - 2 <= allowed <= 100 + 10, "the burst, then the rate"


def test_retry_after_is_the_whole_seconds_until_a_token_is_back_at_least_one() -> None:
    clock = Clock()
    key = ApiKey("team-a-reader", b"\x01" * 32, "read", ("*",))
    slow = RateLimiter(rate=0.25, burst=1, clock=clock)  # a token every 4 s
    slow.check(key, "10.0.0.1")
    with pytest.raises(RateLimited) as e:
        slow.check(key, "10.0.0.1")
    assert e.value.retry_after == 4
    assert "API key team-a-reader" in str(e.value) and "0.25 requests per second" in str(e.value)
    assert "bursts of 1" in str(e.value)
    clock.now += 2.5
    with pytest.raises(RateLimited) as e:
        slow.check(key, "10.0.0.1")
    assert e.value.retry_after == 2, "1.5 s left, rounded up"
    fast = RateLimiter(rate=100.0, burst=1, clock=clock)
    fast.check(None, "10.0.0.1")
    with pytest.raises(RateLimited) as e:
        fast.check(None, "10.0.0.1")
    assert e.value.retry_after == 1, "never 0"
    assert "client 10.0.0.1" in str(e.value)
    fast.check(key, "10.0.0.1")  # a key and its client address are different buckets


def test_buckets_are_bounded_and_the_least_recently_used_goes_first() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, max_buckets=3, clock=clock)
    for identity in ("a", "b", "c"):
        bucket.take(identity)
    assert bucket.take("a") > 0  # a is now the most recently used; b the least
    for i in range(1000):  # a flood of new identities (spoofed addresses, random keys)
        bucket.take(f"x{i}")
        assert len(bucket) <= 3
    assert bucket.take("b") == 0.0, "evicted: a new, full bucket"


def test_settings_of_zero_turn_limits_off_and_others_are_checked() -> None:
    from service.app import create_app
    from service.ratelimit import from_settings

    for rate, burst in ((0, 10), (10, 0)):
        assert from_settings(Settings(rate_per_s=rate, rate_burst=burst)) is None
    limiter = from_settings(Settings(rate_per_s=5, rate_burst=7))
    assert limiter is not None and (limiter.buckets.rate, limiter.buckets.burst) == (5, 7)
    app = create_app(Settings(rate_per_s=5, rate_burst=7))
    assert (app.state.rate_limiter.buckets.rate, app.state.rate_limiter.buckets.burst) == (5, 7), "one per app"
    fields = Settings.model_fields  # the defaults, whatever the environment sets
    assert fields["rate_per_s"].default >= 50 and fields["rate_burst"].default >= 200, \
        "a single well-behaved client (the test suite's busiest: ~45 requests/s for 8 s) never meets them"
    with pytest.raises(ValueError):
        Settings(rate_per_s=-1)


# --- over HTTP ----------------------------------------------------------------------------------

BURST = 3
RATE = 0.01  # a token every 100 s: none comes back while a test runs


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "alice", "key": "alice-key-0123", "role": "write", "memories": ["*"]},
                                {"name": "bob", "key": "bob-key-0123", "role": "read", "memories": ["*"]}]))
    return path


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_past_its_burst_gets_429_with_retry_after_and_others_are_unaffected(make_client: Callable,
                                                                                  tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}", api_keys_file=keys_file(tmp_path), rate_per_s=RATE,
                     rate_burst=BURST) as c:
        alice, bob = as_("alice-key-0123"), as_("bob-key-0123")
        assert c.post("/v1/memories/demo/facts", json={"text": "The capital of France is Lyon."},
                      headers=alice).status_code == 201
        assert [c.get("/v1/memories/demo/facts", headers=alice).status_code for _ in range(BURST - 1)] == [200, 200]
        r = c.get("/v1/memories/demo/facts", headers=alice)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) == 100
        assert "API key alice" in r.json()["detail"] and f"bursts of {BURST}" in r.json()["detail"]
        assert c.post("/v1/memories/demo/facts", json={"text": "x y z"}, headers=alice).status_code == 429, \
            "every route, before any work"
        assert c.get("/v1/memories/demo/facts", headers=alice).json()["detail"] == r.json()["detail"]
        assert c.get("/v1/memories/demo/facts", headers=bob).json()["total"] == 1, "another key is unaffected"
        # calls naming no valid key take from their client address's bucket: bounded too, apart from the keys'
        assert [c.get("/v1/memories", headers=as_("wrong-key-0123")).status_code for _ in range(BURST)] == [401] * 3
        assert c.get("/v1/memories").status_code == 429
        assert c.get("/v1/memories", headers=bob).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):  # never limited
            assert [c.get(probe).status_code for _ in range(2 * BURST)] == [200] * (2 * BURST), probe


def test_mcp_tool_calls_take_from_the_same_keys_bucket(make_client: Callable, tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}", api_keys_file=keys_file(tmp_path), rate_per_s=RATE,
                     rate_burst=BURST) as c:
        def rpc(key: str, method: str, params: dict, session: str | None = None) -> object:
            headers = as_(key) | {"Host": "127.0.0.1:8000", "Accept": "application/json, text/event-stream"}
            return c.post("/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                          headers=headers | ({"Mcp-Session-Id": session} if session else {}))

        start = rpc("bob-key-0123", "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                   "clientInfo": {"name": "test", "version": "0"}})
        assert start.status_code == 200, start.text
        session = start.headers["mcp-session-id"]
        call = rpc("bob-key-0123", "tools/call", {"name": "list_memories", "arguments": {}}, session)
        assert call.status_code == 200 and "memories" in call.text
        assert c.get("/v1/memories", headers=as_("bob-key-0123")).status_code == 200  # bob's last token
        r = rpc("bob-key-0123", "tools/call", {"name": "list_memories", "arguments": {}}, session)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 100 and "API key bob" in r.json()["detail"]
        assert c.get("/v1/memories", headers=as_("bob-key-0123")).status_code == 429, "one bucket for /v1 and /mcp"
        assert c.get("/v1/memories", headers=as_("alice-key-0123")).status_code == 200


def test_with_no_keys_each_client_address_has_its_own_bucket(make_client: Callable, tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}", rate_per_s=RATE, rate_burst=BURST) as c:
        assert [c.get("/v1/memories").status_code for _ in range(BURST)] == [200] * BURST
        r = c.get("/v1/memories")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 100
        assert "client testclient" in r.json()["detail"]
        other = TestClient(c.app, client=("192.0.2.7", 50000), base_url=str(c.base_url))  # started: no lifespan
        assert [other.get("/v1/memories").status_code for _ in range(BURST)] == [200] * BURST
        assert other.get("/v1/memories").status_code == 429
        assert c.get("/healthz").status_code == 200


def test_a_bucket_refills_over_http(make_client: Callable, tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}") as c:
        clock = Clock()
        c.app.state.rate_limiter = RateLimiter(rate=2.0, burst=2, clock=clock)  # an app may set its own
        assert [c.get("/v1/memories").status_code for _ in range(3)] == [200, 200, 429]
        clock.now += 0.5
        assert [c.get("/v1/memories").status_code for _ in range(2)] == [200, 429]


def test_rate_limits_off(make_client: Callable, tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}", rate_per_s=0, rate_burst=1) as c:
        assert {c.get("/v1/memories").status_code for _ in range(20)} == {200}
