"""The read path (``service.recall.Recaller`` with ``models.scope.ScopeRule``) over a stub encoder: milliseconds a test.

The end-to-end tests run the same path with the real encoder and LLM; these pin its rules one at a time (scope
decision, threshold, mention check, relation gate, forgotten facts, document pieces, hierarchical read,
conflicts) on latents whose cosines the test can compute itself, so each rule is checked where it bites.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.chunking import split_document
from models.relation import RelationGate
from models.scope import ScopeRule
from service.errors import NotFound
from service.memories import MemoryRegistry
from service.pieces import piece_id, piece_metadata
from service.recall import Recaller
from service.store import Fact
from service.timing import utc_now
from tests.stubs import StubEncoder, open_stub_registry

DIM = 64
GENEROUS = 1.0  # every fact with a cosine >= 0 to the query lies within it
CHILE = "The capital of Chile is Santiago."
BRAZIL = "The capital of Brazil is Lima."
CURRENCY = "The currency of Chile is the peso."
BANANAS = "Bananas are yellow."
OWLS = "Owls hunt small mice at night."
ASK_CHILE = "What is the capital of Chile?"


@pytest.fixture
def encoder() -> StubEncoder:
    return StubEncoder(DIM)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[MemoryRegistry]:
    reg = open_stub_registry(tmp_path, DIM)
    yield reg
    reg.close()


def write(registry: MemoryRegistry, encoder: StubEncoder, name: str, texts: list[str],
          metadata: list[dict[str, Any]] | None = None, ids: list[str] | None = None) -> list[Fact]:
    """Write ``texts`` as one batch (with these ids when given, as imports and document pieces do)."""
    metadata = metadata or [{} for _ in texts]
    kept = None if ids is None else [(i, utc_now()) for i in ids]
    return registry.write(name, list(zip(texts, metadata, strict=True)), encoder.encode(texts), kept=kept)


def cos(encoder: StubEncoder, a: str, b: str) -> float:
    z = encoder.encode([a, b])
    return float(z[0] @ z[1])


def recaller(registry: MemoryRegistry, encoder: StubEncoder, threshold: float = 0.3, k: int = 3,
             **rule: Any) -> Recaller:
    return Recaller(registry, ScopeRule(encoder, threshold=threshold, **rule), recalled_facts=k)


# --- no memory, memory off, nothing left ------------------------------------------------------


def test_unknown_memory_is_not_found(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """A read of a memory never written is a 404, not an empty answer (a typo must not look like 'no facts')."""
    with pytest.raises(NotFound, match="nope"):
        recaller(registry, encoder).recall("nope", ASK_CHILE, "auto")


def test_off_and_empty_memory_read_nothing(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Memory off, or a memory whose facts were all forgotten, leaves the LLM exactly as without memory."""
    write(registry, encoder, "m", [CHILE])
    r = recaller(registry, encoder, threshold=GENEROUS)
    assert r.recall("m", ASK_CHILE, "auto").in_scope, "the control: the same prompt is in scope with memory on"
    off = r.recall("m", ASK_CHILE, "off")
    assert (off.in_scope, off.readout, off.facts, off.decision) == (False, None, [], None)
    (fact,) = write(registry, encoder, "gone", [CHILE])
    assert registry.forget("gone", fact.id)
    for mode in ("auto", "on"):
        empty = r.recall("gone", ASK_CHILE, mode)
        assert (empty.in_scope, empty.readout, empty.facts, empty.decision) == (False, None, [], None)


# --- scope decision and readout -----------------------------------------------------------------


def test_close_prompt_is_in_scope_with_the_right_sentence_and_readout(registry: MemoryRegistry,
                                                                      encoder: StubEncoder) -> None:
    """The decision names the sentence nearest a fact, and the readout carries that sentence's z_r and the
    recalled facts' written latents (float16-rounded, as the registry keeps them), in the facts' order."""
    texts = [CHILE, BANANAS, OWLS]
    facts = write(registry, encoder, "m", texts)
    prompt = f"I like trains. {ASK_CHILE}"
    got = recaller(registry, encoder, threshold=0.3).recall("m", prompt, "auto")
    assert got.in_scope and got.decision is not None and got.decision.in_scope
    assert got.decision.sentence == 1, "the second sentence asks about the fact"
    assert got.decision.similarity == pytest.approx(cos(encoder, ASK_CHILE, CHILE), abs=2e-3)
    assert got.facts[0].id == facts[0].id and got.facts[0].text == CHILE
    readout = got.readout
    assert readout is not None and readout.facts == tuple(f.text for f in got.facts)
    assert readout.context == ("",) * len(got.facts), "plain facts continue nothing"
    written = dict(zip(texts, encoder.encode(texts).half().float(), strict=True))  # what the registry keeps
    assert readout.fact_latents is not None and readout.fact_latents.shape == (len(got.facts), DIM)
    for text, row in zip(readout.facts, readout.fact_latents, strict=True):
        assert torch.equal(row, written[text])
    reading = registry.reading("m")
    assert reading is not None
    z_r = reading.readout(encoder.encode(["I like trains.", ASK_CHILE]))[1]  # (C,) the chosen sentence's readout
    assert torch.allclose(readout.latent, z_r)
    for f, row in zip(got.facts, readout.fact_latents, strict=True):  # a fact's similarity is to the readout
        assert f.similarity == pytest.approx(float(torch.cosine_similarity(z_r, row, dim=0)), abs=1e-4)


def test_threshold_keeps_the_nearest_and_those_within_it(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Of the k facts the readout recalls, those beyond the threshold are dropped, bar the nearest one."""
    texts = [CHILE, "The capital of Peru is Lima.", "The capital of France is Paris.", BANANAS, OWLS]
    write(registry, encoder, "m", texts)
    everything = recaller(registry, encoder, threshold=2.0, k=5).recall("m", ASK_CHILE, "on")
    sims = [f.similarity for f in everything.facts]
    assert len(sims) == 5 and sims == sorted(sims, reverse=True) and everything.facts[0].text == CHILE
    assert sims[1] > sims[2] + 1e-3, "the cut below needs a gap between the second and third"
    nearest_only = recaller(registry, encoder, threshold=0.0, k=5).recall("m", ASK_CHILE, "on")
    assert [f.text for f in nearest_only.facts] == [CHILE], "the nearest is kept even beyond the threshold"
    cut = 1.0 - (sims[1] + sims[2]) / 2
    two = recaller(registry, encoder, threshold=cut, k=5).recall("m", ASK_CHILE, "on")
    assert [f.id for f in two.facts] == [f.id for f in everything.facts[:2]]
    assert two.readout is not None and len(two.readout.facts) == len(two.readout.fact_latents) == 2


def test_with_threshold_changes_the_decision(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """``with_threshold`` is the sweep's knob: the same prompt leaves scope just below its best distance and
    enters it just above, while the served rule is untouched."""
    write(registry, encoder, "m", [CHILE, BANANAS])
    r = recaller(registry, encoder, threshold=GENEROUS)
    best = r.recall("m", ASK_CHILE, "auto").decision
    assert best is not None and best.in_scope
    distance = 1.0 - best.similarity
    tight = r.rule.with_threshold(distance - 0.01)
    out = r.recall("m", ASK_CHILE, "auto", rule=tight)
    assert not out.in_scope and out.readout is None and out.facts == []
    assert out.decision is not None and not out.decision.in_scope
    assert out.decision.similarity == best.similarity, "the decision's cosine does not depend on the threshold"
    assert r.recall("m", ASK_CHILE, "auto", rule=r.rule.with_threshold(distance + 0.01)).in_scope
    assert r.rule.threshold == GENEROUS and tight.threshold == pytest.approx(distance - 0.01)
    assert tight.encoder is r.rule.encoder


# --- what auto mode admits ------------------------------------------------------------------------


def test_mention_check_drops_a_near_fact_about_another_entity(registry: MemoryRegistry, encoder: StubEncoder
                                                              ) -> None:
    """Same relation, another subject: near by cosine, but it names Brazil, not Chile, so auto mode keeps it out;
    "on" mode and a rule without the mention check keep it."""
    assert 1.0 - cos(encoder, ASK_CHILE, BRAZIL) < 0.5, "the stub puts it within the threshold used here"
    write(registry, encoder, "brazil", [BRAZIL, BANANAS])
    r = recaller(registry, encoder, threshold=0.5)
    auto = r.recall("brazil", ASK_CHILE, "auto")
    assert auto.decision is not None and auto.decision.in_scope, "the cosine alone says in scope"
    assert not auto.in_scope and auto.readout is None and auto.facts == []
    assert [f.text for f in r.recall("brazil", ASK_CHILE, "on").facts][:1] == [BRAZIL]
    lax = recaller(registry, encoder, threshold=0.5, requires_mention=False).recall("brazil", ASK_CHILE, "auto")
    assert lax.in_scope and [f.text for f in lax.facts] == [BRAZIL]
    # beside a fact that does name Chile, only that one is recalled
    write(registry, encoder, "both", [BRAZIL, CHILE, BANANAS])
    assert [f.text for f in r.recall("both", ASK_CHILE, "auto").facts] == [CHILE]
    assert {CHILE, BRAZIL} <= {f.text for f in r.recall("both", ASK_CHILE, "on").facts}


def test_relation_gate_drops_another_relation_in_auto_mode(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Both facts name Chile, so the mention check passes both; the gate (W = I over the stub) keeps the one
    stating the relation asked (capital) and drops the currency, in auto mode only."""
    gate_probe = RelationGate(encoder, torch.eye(DIM), threshold=0.0)
    capital, currency = gate_probe.similarity(ASK_CHILE, [CHILE, CURRENCY]).tolist()
    assert capital > currency + 0.1, f"the stub must tell the relations apart: {capital:.3f} vs {currency:.3f}"
    gate = RelationGate(encoder, torch.eye(DIM), threshold=(capital + currency) / 2)
    write(registry, encoder, "m", [CHILE, CURRENCY])
    ungated = recaller(registry, encoder, threshold=GENEROUS).recall("m", ASK_CHILE, "auto")
    assert {f.text for f in ungated.facts} == {CHILE, CURRENCY}, "the control: without the gate both are kept"
    gated = recaller(registry, encoder, threshold=GENEROUS, relation=gate)
    assert [f.text for f in gated.recall("m", ASK_CHILE, "auto").facts] == [CHILE]
    assert {f.text for f in gated.recall("m", ASK_CHILE, "on").facts} == {CHILE, CURRENCY}


# --- forgotten facts ------------------------------------------------------------------------------


def test_a_forgotten_fact_is_never_recalled(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Forgotten between two writes: neither the lookup nor the readout brings it back, in any mode."""
    chile, _ = write(registry, encoder, "m", [CHILE, BANANAS])
    assert registry.forget("m", chile.id)
    write(registry, encoder, "m", [OWLS, "The capital of Chile is famous for its hills."])
    r = recaller(registry, encoder, threshold=2.0, k=10)
    for mode in ("auto", "on"):
        got = r.recall("m", CHILE, mode)
        assert got.facts and chile.id not in {f.id for f in got.facts}
        assert CHILE not in (got.readout.facts if got.readout else ())
    assert len(r.recall("m", CHILE, "on").facts) == 3, "the three live facts, and only they"


def test_a_fact_forgotten_during_a_read_is_left_out(registry: MemoryRegistry, encoder: StubEncoder,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading taken before a forget still finds the fact's row, but its text is gone: it is not recalled."""
    chile, bananas = write(registry, encoder, "m", [CHILE, BANANAS])
    stale = registry.reading("m")
    assert registry.forget("m", chile.id)
    monkeypatch.setattr(registry, "reading", lambda name: stale)
    assert stale is not None and [h.id for h in stale.nearest(encoder.encode([CHILE]), 1)[0]] == [chile.id]
    got = recaller(registry, encoder, threshold=2.0, k=2).recall("m", ASK_CHILE, "on")
    assert [f.id for f in got.facts] == [bananas.id]
    assert got.readout is not None and got.readout.facts == (BANANAS,) and got.readout.fact_latents.shape[0] == 1


# --- document pieces ------------------------------------------------------------------------------

BIO = "Orla Fennimore grew up in Oslo. She learned the bassoon in Reykjavik."


def write_bio(registry: MemoryRegistry, encoder: StubEncoder, name: str) -> list[Fact]:
    """The two pieces of one document, written as ``service.documents`` writes them."""
    pieces = split_document(BIO, "sentences", 64, lambda texts: [len(t.split()) for t in texts])
    assert [p.text for p in pieces] == ["Orla Fennimore grew up in Oslo.", "She learned the bassoon in Reykjavik."]
    meta = [piece_metadata("bio", "Bio", pieces, i, BIO) for i in range(len(pieces))]
    assert "continues" not in meta[0] and meta[1]["continues"] == 0
    return write(registry, encoder, name, [p.text for p in pieces], meta, [piece_id("bio", i) for i in range(2)])


def test_a_piece_is_read_with_the_piece_it_continues(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Piece 1 opens with "She": recalled, it comes with piece 0 (which names her) as its context, and the pair is
    shown once; its source holds the document keys, a plain fact's is None."""
    first, second = write_bio(registry, encoder, "m")
    write(registry, encoder, "m", [BANANAS])
    ask = "Who learned the bassoon in Reykjavik?"
    alone = recaller(registry, encoder, threshold=GENEROUS, k=1).recall("m", ask, "auto")
    assert [f.id for f in alone.facts] == ["bio-1"]
    assert alone.readout is not None and alone.readout.context == (first.text,)
    assert alone.readout.shown == (f"{first.text} {second.text}",)
    assert alone.facts[0].source == {"document": "bio", "title": "Bio", "piece": 1, "start": 32, "end": len(BIO),
                                     "continues": 0}
    # both pieces recalled: shown once, as piece 1 after its context, at the better of the two ranks
    r = recaller(registry, encoder, threshold=2.0, k=3)
    both = r.recall("m", "Where did Orla Fennimore learn the bassoon?", "on")
    ids = [f.id for f in both.facts]
    assert ids.count("bio-1") == 1 and "bio-0" not in ids and len(ids) == 2
    assert both.readout is not None and both.readout.context[ids.index("bio-1")] == first.text
    plain = next(f for f in both.facts if f.id != "bio-1")
    assert plain.text == BANANAS and plain.source is None and both.readout.context[ids.index(plain.id)] == ""
    # the mention check reads the piece with its context: "Orla Fennimore" is named there, not in piece 1
    auto = recaller(registry, encoder, threshold=GENEROUS, k=1).recall("m", "Where did Orla Fennimore study the "
                                                                            "bassoon in Reykjavik?", "auto")
    assert auto.in_scope and [f.id for f in auto.facts] == ["bio-1"]


# --- hierarchical read ---------------------------------------------------------------------------


def test_hierarchical_read_recalls_like_flat_for_a_clear_match(registry: MemoryRegistry, encoder: StubEncoder
                                                                ) -> None:
    """Section 6's read gives its own z_r (the segment memories', not M's) but the same decision and, for a clear
    match, the same fact."""
    texts = [CHILE, BANANAS, OWLS, "Rivers flow down to the sea.", "Glass is made from sand."]
    write(registry, encoder, "m", texts)
    rule = ScopeRule(encoder, threshold=0.3)
    flat = Recaller(registry, rule, 2).recall("m", ASK_CHILE, "auto")
    tiered = Recaller(registry, rule, 2, read="hierarchical", read_segment=2).recall("m", ASK_CHILE, "auto")
    assert flat.in_scope and tiered.in_scope and tiered.decision == flat.decision
    assert tiered.facts[0].text == flat.facts[0].text == CHILE
    reading = registry.reading("m")
    assert reading is not None and tiered.readout is not None and flat.readout is not None
    q = encoder.encode([ASK_CHILE])
    assert torch.allclose(tiered.readout.latent, reading.hierarchical_readout(q, 2)[0])
    assert not torch.allclose(tiered.readout.latent, flat.readout.latent), "it is another read, not M's"


# --- conflicts -----------------------------------------------------------------------------------


def test_conflicting_is_the_same_statement_with_another_answer(encoder: StubEncoder) -> None:
    """Same subject, same relation, another answer: a conflict; the very same text, another subject or a far
    fact: none."""
    new = "The capital of France is Marseille."
    near = [("The capital of France is Lyon.", ""), (new, ""), ("The capital of Spain is Lyon.", ""),
            (BANANAS, "")]
    scored = [(text, cos(encoder, new, text)) for text, _ in near]
    rule = ScopeRule(encoder, threshold=0.35)
    assert all(rule.near(s) for _, s in scored[:3]) and not rule.near(scored[3][1]), "the cosines the test assumes"
    assert rule.conflicting(new, scored) == [True, False, False, False]
    assert rule.conflicting(f"  {new} ", [(new, 1.0)]) == [False], "surrounding white space is the same text"
    assert rule.with_threshold(0.01).conflicting(new, scored[:1]) == [False], "beyond the threshold: no conflict"
