"""The in-memory fact texts that let queries answer without the store (service/factcache.py): a forgotten
fact never comes back into it, and it holds at most its size."""

from __future__ import annotations

from service.factcache import FactCache
from service.store import Fact


def fact(i: int) -> Fact:
    return Fact(f"f{i}", f"text {i}", {}, "2026-12-07T00:00:00.000Z")


def test_a_fact_read_before_its_forget_is_not_kept_after_it() -> None:
    cache = FactCache(10)
    epoch = cache.epoch("m")  # a reader starts fetching f1 from the store...
    cache.removed("m", ["f1"])  # ...f1 is forgotten meanwhile...
    cache.fetched("m", [fact(1)], epoch)  # ...and the reader's copy arrives late
    assert cache.get("m", ["f1"]) == {}
    cache.fetched("m", [fact(1)], cache.epoch("m"))  # a fetch that began after the forget is kept
    assert cache.get("m", ["f1"])["f1"].text == "text 1"


def test_writes_removals_and_deletes_and_the_size_bound() -> None:
    cache = FactCache(3)
    cache.written("m", [fact(i) for i in range(3)])
    cache.get("m", ["f0"])  # used: f1 is now the least recently used
    cache.written("other", [fact(9)])
    assert sorted(cache.get("m", ["f0", "f1", "f2"])) == ["f0", "f2"]
    cache.removed("m", ["f2"])  # forgotten
    assert sorted(cache.get("m", ["f0", "f2"])) == ["f0"]
    cache.removed("m")  # the memory deleted
    assert cache.get("m", ["f0"]) == {} and cache.get("other", ["f9"])["f9"].latent is None
    assert FactCache(0).get("m", ["f1"]) == {}
