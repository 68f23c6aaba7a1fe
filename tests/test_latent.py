"""The latent decoder: prefix mechanics, the no-memory guarantee, the shipped adapter, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.baselines.ft_l import training
from models.conditioning import LatentConditioner, Readout, load_conditioner
from models.latent import (
    ADAPTERS,
    CONTEXT_SCOPE_THRESHOLD,
    LatentAdapter,
    LatentConfig,
    adapter_form,
    default_decoder,
    find_adapter,
    scope_threshold_for,
)
from service.app import LoadedModels, decoder_for
from service.settings import Settings
from training.examples import Fact, RowBuilder
from training.train import rows_loss


def random_adapter(models: LoadedModels, seed: int = 0, form: str = "latent") -> LatentAdapter:
    torch.manual_seed(seed)
    adapter = LatentAdapter(LatentConfig.for_llm(models.llm.model.config, models.encoder.dim, rank=16, form=form))
    torch.nn.init.normal_(adapter.emb.weight, std=0.05)  # a fresh adapter starts with no bias; give it one
    return adapter.eval()


def readout_of(models: LoadedModels, fact: str) -> Readout:
    z = models.encoder.encode([fact])  # (1, C)
    return Readout(latent=z[0], facts=(fact,), fact_latents=z)


def test_prefix_shapes_follow_the_llm(models: LoadedModels) -> None:
    cfg = models.llm.model.config
    prefix = random_adapter(models)(torch.randn(3, models.encoder.dim))
    assert len(prefix.keys) == len(prefix.values) == cfg.num_hidden_layers
    assert prefix.keys[0].shape == (3, cfg.num_key_value_heads, 1, cfg.hidden_size // cfg.num_attention_heads)
    assert prefix.bias.shape == (3, cfg.hidden_size)


@pytest.mark.parametrize("context", [False, True])
def test_no_readout_is_the_base_model_exactly(models: LoadedModels, context: bool) -> None:
    llm = models.llm
    cond = LatentConditioner(random_adapter(models), context=context)
    zero = Readout(latent=torch.zeros(models.encoder.dim), facts=("The sky is green.",),
                   fact_latents=torch.zeros(1, models.encoder.dim))
    base = llm.score("The sky is", ["green", "blue"])
    for readout in (None, zero):  # out of scope, and an all-zero readout
        got = cond.score(llm, "The sky is", ["green", "blue"], readout)
        assert [g.logprob for g in got] == [b.logprob for b in base], "bit-identical to the base model"
        assert [g.predicted for g in got] == [b.predicted for b in base]
    plain_text = llm.render([{"role": "user", "content": "What colour is the sky?"}])
    assert cond.generate(llm, "What colour is the sky?", None, 8) == llm.generate(llm.ids(plain_text), 8)


def test_prefix_scoring_matches_a_manual_prefixed_pass_and_batching(models: LoadedModels) -> None:
    llm, adapter = models.llm, random_adapter(models)
    cond = LatentConditioner(adapter)
    r1, r2 = readout_of(models, "The sky is green."), readout_of(models, "Grass is purple.")
    items = [("The sky is", ["green", "blue sky"], r1), ("Grass is usually", ["purple"], r2),
             ("Water is", ["wet"], None)]
    batch = cond.score_batch(llm, items)
    one_by_one = [cond.score(llm, p, c, r) for p, c, r in items]
    for b, o in zip(batch, one_by_one, strict=True):
        for x, y in zip(b, o, strict=True):
            assert abs(x.logprob - y.logprob) < 1e-4, "padding in a batch must not change a score"
    # manual: prefix slot at position 0, tokens from position 1, bias on every token
    prefix_ids, cont = llm.pair_ids("The sky is", "green")
    ids = torch.tensor([prefix_ids + cont])
    with torch.inference_mode():
        logits = llm.forward(ids, torch.ones_like(ids), adapter(r1.fact_latents)).logits[0]
    manual = torch.log_softmax(logits.float(), -1)[len(prefix_ids) - 1, cont[0]].item()
    assert abs(batch[0][0].logprob - manual) < 1e-4
    assert batch[0][0].logprob != pytest.approx(llm.score("The sky is", ["green"])[0].logprob, abs=1e-3)


def test_prefixed_generation_is_batched_consistently(models: LoadedModels) -> None:
    llm, cond = models.llm, LatentConditioner(random_adapter(models))
    r = readout_of(models, "The Eiffel Tower is located in Rome.")
    prompts = ["Where is the Eiffel Tower?", "What is the tallest building in Paris called?"]
    batch = cond.generate_batch(llm, [(p, r) for p in prompts], 10)
    singles = [cond.generate(llm, p, r, 10)[0] for p in prompts]
    assert batch == singles
    text, n = cond.generate(llm, prompts[0], r, 6, min_new_tokens=6)
    assert n == 6 and text


def test_adapter_round_trips_through_safetensors(models: LoadedModels, tmp_path: Path) -> None:
    adapter = random_adapter(models, form="hybrid")
    adapter.save(tmp_path / "a", extra={"scope_threshold": 0.45})
    back = LatentAdapter.load(tmp_path / "a")
    assert back.cfg == adapter.cfg and adapter_form(tmp_path / "a") == "hybrid"
    assert scope_threshold_for(tmp_path / "a") == 0.45
    z = torch.randn(2, models.encoder.dim)
    a, b = adapter(z), back(z)
    assert torch.allclose(a.keys[3], b.keys[3], atol=2e-3) and torch.allclose(a.bias, b.bias, atol=2e-3)


@pytest.mark.parametrize("form", ["latent", "hybrid"])
def test_shipped_adapters_load_for_the_default_models_and_cards_state_their_training(form: str) -> None:
    s = Settings()
    path = find_adapter(s.llm, s.encoder, form)
    assert path is not None, f"no {form} adapter for the default models under {ADAPTERS}"
    assert (path / "README.md").exists()
    meta = json.loads((path / "config.json").read_text())
    assert meta["training"]["steps"] > 0 and meta["training"]["machine"]
    assert LatentAdapter.load(path).cfg.form == form
    assert (path / "adapter.safetensors").stat().st_size < 16 * 2**20, "small enough to live in git"


def test_decoder_choice(models: LoadedModels, tmp_path: Path) -> None:
    s = Settings()
    kind = default_decoder(s.llm, s.encoder)
    auto = decoder_for(s)
    assert auto.conditioner.kind == kind
    if kind != "context":
        assert auto.scope_threshold == scope_threshold_for(find_adapter(s.llm, s.encoder, kind))
    context = decoder_for(Settings(decoder="context"))
    assert context.conditioner.kind == "context" and context.scope_threshold == CONTEXT_SCOPE_THRESHOLD
    assert decoder_for(Settings(decoder="hybrid", scope_threshold=0.25)).scope_threshold == 0.25, "set wins"
    # an adapter given by path decides the kind under auto; a kind it was not trained for is refused
    random_adapter(models, form="latent").save(tmp_path / "mine")
    assert decoder_for(Settings(adapter=tmp_path / "mine")).conditioner.kind == "latent"
    with pytest.raises(ValueError, match="trained for the latent decoder"):
        decoder_for(Settings(adapter=tmp_path / "mine", decoder="hybrid"))
    # a model with no adapter falls back to context decoding, and asking for latent there is a clear error
    other = Settings(llm=str(tmp_path / "some-other-model"))
    assert decoder_for(other).conditioner.kind == "context"
    with pytest.raises(ValueError, match="adapter"):
        load_conditioner("latent", None)


@pytest.mark.parametrize("kind", ["latent", "hybrid"])
def test_a_written_fact_moves_the_scores_its_way(make_client, tmp_path: Path, kind: str) -> None:  # noqa: ANN001
    """Through the HTTP API with the shipped adapter: memory on favours the new object, memory off does not."""
    with make_client(f"file://{tmp_path / 'store'}", decoder=kind) as client:
        r = client.post("/v1/memories/m/facts", json={"text": "The Eiffel Tower is located in Rome."})
        assert r.status_code == 201, r.text
        body = {"prompt": "The Eiffel Tower is located in", "candidates": ["Rome", "Paris"]}
        on = client.post("/v1/memories/m/score", json=body | {"memory": "auto"}).json()
        off = client.post("/v1/memories/m/score", json=body | {"memory": "off"}).json()
        assert on["in_scope"] and not off["in_scope"]
        margin_on = on["scores"][0]["logprob"] - on["scores"][1]["logprob"]
        margin_off = off["scores"][0]["logprob"] - off["scores"][1]["logprob"]
        assert margin_off < 0 and margin_on > margin_off + 1.0, (margin_off, margin_on)
        if kind == "hybrid":  # the shipped default makes the edit win; the latent form only leans its way
            assert margin_on > 0, margin_on
        answer = client.post("/v1/memories/m/query", json={"prompt": "Where is the Eiffel Tower?"}).json()
        assert answer["in_scope"] and answer["answer"]


def test_training_lowers_the_loss_on_what_it_sees(models: LoadedModels) -> None:
    facts = [Fact("The Eiffel Tower is located in Rome.", "The Eiffel Tower is located in", "Rome",
                  "Where is the Eiffel Tower? It is in", "The Louvre is located in", "Paris"),
             Fact("Danielle Darrieux's mother tongue is English.", "Danielle Darrieux's mother tongue is", "English")]
    builder = RowBuilder(models.llm, facts)
    rows = builder.latent_rows(0) + builder.latent_rows(1) + builder.hybrid_rows(0, 1)
    Z = models.encoder.encode([f.text for f in facts])
    torch.manual_seed(0)
    adapter = LatentAdapter(LatentConfig.for_llm(models.llm.model.config, models.encoder.dim, rank=16))
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    losses = []
    with training(models.llm.model, list(adapter.parameters())):  # the shared LLM frozen, its flags put back
        for _ in range(4):
            loss = rows_loss(models.llm, adapter, Z, rows, max_tokens=128)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(p.grad is None for p in models.llm.model.parameters()), "the LLM stays frozen"
