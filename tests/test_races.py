"""Races of issue 24 ("hostile input and load"), each run for many rounds of real threads, bounded in time.

PUT of a fact: a metadata-only update racing a text update must lose neither (the merge with the stored fact
happens under the memory's lock), and the memory must hold the latent of the text the store holds. A write's
``supersedes`` racing a forget of one of the ids it names must forget the others and report exactly what it
forgot. The encoder's fast tokenizer, called from many threads with other truncation settings, must neither
raise ("Already borrowed") nor give other latents or token counts than one thread does (unlocked, a call may run
with the truncation another thread just set: tokenizers 0.23 gives wrong counts and latents, not an error).

The PUT and supersedes tests run on the stub encoder and a SQLite store (milliseconds a round); the encoder
test loads the real encoder.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from models.encoder import TextEncoder
from models.scope import ScopeRule
from service.editor import Editor
from service.errors import NotFound
from service.memories import LATENT_DTYPE, MemoryRegistry
from service.settings import Settings
from tests.stubs import StubEncoder, open_stub_registry

DIM = 64
MEM = "races"
DEADLINE_S = 60.0  # a round that has not ended by then is a hang, not a slow machine


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[MemoryRegistry]:
    reg = open_stub_registry(tmp_path, DIM)
    yield reg
    reg.close()


@pytest.fixture
def editor(registry: MemoryRegistry) -> Editor:
    """The editor over the stub encoder: the fact routes' code, with no LLM (these tests never answer)."""
    encoder = StubEncoder(DIM)
    return Editor(Settings(), encoder, None, None, registry, ScopeRule(encoder))  # type: ignore[arg-type]


@pytest.fixture
def race() -> Iterator[Callable[..., list[Any]]]:
    """``race(*calls)``: run the calls at once, one thread each, released together; their results (or the
    exceptions raised) in order. The threads are reused round after round: a new thread per call, each running
    torch ops, made the supersedes test about 15 times slower on 2 cores (21 s against 1.5 s)."""
    with ThreadPoolExecutor(8) as pool:

        def run(*calls: Callable[[], Any]) -> list[Any]:
            start = threading.Barrier(len(calls))

            def call(f: Callable[[], Any]) -> Any:
                start.wait(DEADLINE_S)
                try:
                    return f()
                except BaseException as e:  # noqa: BLE001 - handed to the test, which decides
                    return e

            return [f.result(DEADLINE_S) for f in [pool.submit(call, f) for f in calls]]

        yield run


def raised(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


# --- PUT: text and metadata updates racing -------------------------------------------------------------


def assert_latent_matches_text(editor: Editor, fact_id: str) -> None:
    """The store and the memory both hold the latent of the text the store holds for the fact."""
    (fact,) = editor.registry.facts(MEM, [fact_id])
    assert fact is not None
    want = editor.encoder.encode([fact.text])[0].to(LATENT_DTYPE).float()  # (C,) as the memory keeps it
    stored = next(z for f, z in editor.registry.exported(MEM, 1024) if f.id == fact_id)
    assert torch.allclose(stored.float(), want, atol=1e-3), f"the store's latent is not that of {fact.text!r}"
    reading = editor.registry.reading(MEM)
    assert reading is not None
    (hits,) = reading.nearest(want[None], 1)
    assert hits[0].id == fact_id and hits[0].similarity > 0.999, f"the memory's latent is not that of {fact.text!r}"


def assert_state_is_rebuilt(editor: Editor) -> None:
    reading = editor.registry.reading(MEM)
    assert reading is not None
    rebuilt = reading.rebuilt()
    assert torch.allclose(reading.state.M, rebuilt.M, atol=1e-5)
    assert torch.allclose(reading.state.C_inv, rebuilt.C_inv, atol=1e-5)


def test_text_and_metadata_puts_racing_lose_no_update(editor: Editor, race: Callable[..., list[Any]]) -> None:
    """Per round one thread PUTs new text, another new metadata: the fact ends with both. In odd rounds the
    metadata PUT also sends the text the fact held as the round began (a no-op text when read then, which the
    text PUT may have changed meanwhile): the fact then ends with either text, but the latent of the one it has."""
    others = editor.add_facts(MEM, [(f"other{i} filler{i} words{i}", {"other": i}) for i in range(8)]).facts
    (fact,) = editor.add_facts(MEM, [("city0 round0 word0", {"round": -1})]).facts
    rounds, deadline = 150, time.monotonic() + DEADLINE_S
    for r in range(rounds):
        before = editor.get_fact(MEM, fact.id).text
        new_text = f"city{r + 1} round{r + 1} word{r + 1}"
        with_text = before if r % 2 else None
        results = race(lambda: editor.update_fact(MEM, fact.id, new_text, None),  # noqa: B023 - run in this round
                       lambda: editor.update_fact(MEM, fact.id, with_text, {"round": r}))  # noqa: B023
        assert not raised(results), raised(results)
        got = editor.get_fact(MEM, fact.id)
        assert got.metadata == {"round": r}, f"round {r}: the metadata update was lost"
        if with_text is None:
            assert got.text == new_text, f"round {r}: the text update was lost (stale text {got.text!r} written back)"
        else:
            assert got.text in (new_text, before)
        assert_latent_matches_text(editor, fact.id)
        if r % 10 == 0:
            assert_state_is_rebuilt(editor)
        assert time.monotonic() < deadline, f"only {r} of {rounds} rounds in {DEADLINE_S} s"
    assert_state_is_rebuilt(editor)
    reading = editor.registry.reading(MEM)
    assert reading is not None and reading.live == len(others) + 1
    assert [f.metadata for f in editor.registry.facts(MEM, [o.id for o in others])] == [{"other": i} for i in range(8)]


def test_replace_merges_under_the_lock(editor: Editor) -> None:
    """``MemoryRegistry.replace`` takes what changes: None keeps the stored text or metadata; a text equal to the
    stored one changes nothing in the memory (its latent is unused); new text without a latent is refused."""
    reg, enc = editor.registry, editor.encoder
    (fact,) = editor.add_facts(MEM, [("alpha beta gamma", {"a": 1})]).facts
    seq = reg.get(MEM).seq
    kept = reg.replace(MEM, fact.id, None, {"b": 2}, None)
    assert kept is not None and (kept.text, kept.metadata) == ("alpha beta gamma", {"b": 2})
    same = reg.replace(MEM, fact.id, "alpha beta gamma", None, enc.encode(["something else entirely"])[0])
    assert same is not None and (same.text, same.metadata) == ("alpha beta gamma", {"b": 2})
    assert reg.get(MEM).seq == seq, "the memory changed for an unchanged text"
    assert_latent_matches_text(editor, fact.id)
    with pytest.raises(ValueError):
        reg.replace(MEM, fact.id, "delta epsilon", None, None)
    new = reg.replace(MEM, fact.id, "delta epsilon", None, enc.encode(["delta epsilon"])[0])
    assert new is not None and (new.text, new.metadata) == ("delta epsilon", {"b": 2})
    assert_latent_matches_text(editor, fact.id)
    assert reg.replace(MEM, "nope", None, {"c": 3}, None) is None


# --- supersedes racing a forget ---------------------------------------------------------------------------


def test_supersedes_racing_a_forget_forgets_the_others_and_reports_what_it_forgot(
        editor: Editor, race: Callable[..., list[Any]]) -> None:
    """Per round a write supersedes facts a, b, c while another request forgets b. Either the forget comes first
    and the write is refused with a 404 before it writes anything (b named but gone), or the write goes ahead: a
    and c are forgotten whatever happened to b, and ``superseded`` lists b exactly when the write forgot it."""
    rng = random.Random(24)
    rounds, deadline = 200, time.monotonic() + DEADLINE_S
    outcomes = {"refused": 0, "forget first": 0, "write first": 0}
    for r in range(rounds):
        a, b, c = (f.id for f in editor.add_facts(MEM, [(f"old{r}x{k} word{r}y{k}", None) for k in range(3)]).facts)
        delay = rng.uniform(0, 0.004)

        def forget_b(delay: float = delay, b: str = b) -> bool:
            time.sleep(delay)
            try:
                editor.forget(MEM, b)
            except NotFound:  # the write forgot it first
                return False
            return True

        results = race(lambda: editor.add_facts(MEM, [(f"new{r} fact{r}", None)], [[a, b, c]]),  # noqa: B023
                       forget_b)
        write, forgot_b = results
        assert not isinstance(forgot_b, BaseException), forgot_b
        assert editor.registry.holds(MEM, [b]) == [False]
        if isinstance(write, NotFound):  # validated after the forget: nothing written, nothing forgotten
            assert forgot_b and editor.registry.holds(MEM, [a, c]) == [True, True]
            editor.forget(MEM, a, c)
            outcomes["refused"] += 1
            continue
        assert not isinstance(write, BaseException), write
        assert editor.registry.holds(MEM, [a, c, write.facts[0].id]) == [False, False, True]
        assert write.superseded == [[a, c] if forgot_b else [a, b, c]], f"round {r}: forgot_b={forgot_b}"
        outcomes["forget first" if forgot_b else "write first"] += 1
        assert time.monotonic() < deadline, f"only {r} of {rounds} rounds in {DEADLINE_S} s: {outcomes}"
    reading = editor.registry.reading(MEM)
    assert reading is not None
    assert reading.live == sum(outcomes.values()) - outcomes["refused"], "one new fact a write, nothing else"
    assert_state_is_rebuilt(editor)
    assert outcomes["forget first"], f"the forget never landed between the check and the write's forget: {outcomes}"


def test_forget_held_forgets_what_is_still_held(editor: Editor) -> None:
    reg = editor.registry
    a, b, c = (f.id for f in editor.add_facts(MEM, [(f"w{k} v{k}", None) for k in range(3)]).facts)
    assert reg.forget(MEM, b)
    assert reg.forget_held(MEM, a, b, c, a) == [a, c]
    assert reg.holds(MEM, [a, b, c]) == [False, False, False]
    assert reg.forget_held(MEM, a) == [] and reg.forget_held(MEM) == [] and reg.forget_held("no such memory", a) == []


# --- the real encoder from many threads -------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder(Settings().encoder)


def test_the_encoder_is_safe_from_many_threads(text_encoder: TextEncoder, race: Callable[..., list[Any]]) -> None:
    """8 threads at once: 4 encode texts of many lengths (some past ``max_length``, so truncation bites), 4 count
    tokens untruncated meanwhile (as ``service.documents`` does), which turns the tokenizer's truncation off each
    time the encoders turn it on. No call raises, and every latent and count is what one thread alone gets."""
    rng = random.Random(3)
    words = "the capital of a country lies on a river that runs to the sea past old towns".split()
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (1, 3, 8, 20, 60, 150, 300, 500)]
    lists = [[texts[(k + j) % len(texts)] for j in range(1 + k % 3)] for k in range(len(texts))]
    want_latents = [text_encoder.encode(t) for t in lists]
    want_counts = text_encoder.count_tokens(texts)
    assert max(want_counts) > text_encoder.max_length, "no text long enough to be truncated"
    finished: list[int] = []  # encoders done
    passes, most_counts, deadline = 2, 5000, time.monotonic() + 4 * DEADLINE_S

    def encode(k: int) -> int:
        try:
            for i in range(passes * len(lists)):
                j = (k + i) % len(lists)
                got = text_encoder.encode(lists[j])
                assert torch.allclose(got, want_latents[j], atol=1e-5), f"encoder {k}: other latents for list {j}"
                assert time.monotonic() < deadline
            return i + 1
        finally:
            finished.append(k)

    def count(k: int) -> int:
        n = 0
        while n < most_counts and len(finished) < 4:  # while the encoders run
            got = text_encoder.count_tokens(texts)
            assert got == want_counts, f"counter {k}: {got} tokens, not {want_counts}"
            n += 1
        return n

    results = race(*[lambda k=k: encode(k) for k in range(4)], *[lambda k=k: count(k) for k in range(4)])
    assert not raised(results), raised(results)
