"""The latent decoder: prefix mechanics, the no-memory guarantee, the shipped adapter, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.baselines.ft_l import training
from models.choice import CHOICES, choose_decoder, recorded
from models.decoders import LatentDecoder, Readout, load_decoder
from models.latent import ADAPTERS, TRAINING, LatentAdapter, LatentConfig, find_adapter
from models.loading import LoadedModels
from models.scope import DEFAULT_SCOPE_THRESHOLD
from service.app import decoder_choice
from service.settings import Settings
from training.examples import Example, RowBuilder
from training.train import rows_loss


def random_adapter(models: LoadedModels, seed: int = 0, decoder: str = "latent") -> LatentAdapter:
    torch.manual_seed(seed)
    cfg = LatentConfig.for_llm(models.llm.model.config, models.encoder.dim, rank=16, decoder=decoder)
    adapter = LatentAdapter(cfg)
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
    cond = LatentDecoder(random_adapter(models, decoder="hybrid" if context else "latent"))
    zero = Readout(latent=torch.zeros(models.encoder.dim), facts=("The sky is green.",),
                   fact_latents=torch.zeros(1, models.encoder.dim))
    base = llm.score("The sky is", ["green", "blue"])
    for readout in (None, zero):  # out of scope, and an all-zero readout
        (got,) = cond.score_batch(llm, [("The sky is", ["green", "blue"], readout)])
        assert [g.logprob for g in got] == [b.logprob for b in base], "bit-identical to the base model"
        assert [g.predicted for g in got] == [b.predicted for b in base]
    plain_text = llm.render([{"role": "user", "content": "What colour is the sky?"}])
    assert cond.generate_batch(llm, [("What colour is the sky?", None)], 8) == llm.generate_batch([plain_text], 8)


def test_prefix_scoring_matches_a_manual_prefixed_pass_and_batching(models: LoadedModels) -> None:
    llm, adapter = models.llm, random_adapter(models)
    cond = LatentDecoder(adapter)
    r1, r2 = readout_of(models, "The sky is green."), readout_of(models, "Grass is purple.")
    items = [("The sky is", ["green", "blue sky"], r1), ("Grass is usually", ["purple"], r2),
             ("Water is", ["wet"], None)]
    batch = cond.score_batch(llm, items)
    one_by_one = [cond.score_batch(llm, [item])[0] for item in items]
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
    llm, cond = models.llm, LatentDecoder(random_adapter(models))
    r = readout_of(models, "The Eiffel Tower is located in Rome.")
    prompts = ["Where is the Eiffel Tower?", "What is the tallest building in Paris called?"]
    batch = cond.generate_batch(llm, [(p, r) for p in prompts], 10)
    singles = [cond.generate_batch(llm, [(p, r)], 10)[0] for p in prompts]
    assert [g.text for g in batch] == [g.text for g in singles]
    (g,) = cond.generate_batch(llm, [(prompts[0], r)], 6, min_new_tokens=6)
    assert g.new_tokens == 6 and g.text


def test_adapter_round_trips_through_safetensors(models: LoadedModels, tmp_path: Path) -> None:
    adapter = random_adapter(models, decoder="hybrid")
    adapter.save_pretrained(tmp_path / "a")
    back = LatentAdapter.from_pretrained(tmp_path / "a")
    assert back.cfg == adapter.cfg and LatentConfig.from_pretrained(tmp_path / "a").decoder == "hybrid"
    assert set(json.loads((tmp_path / "a" / "config.json").read_text())) == set(LatentConfig.__dataclass_fields__)
    z = torch.randn(2, models.encoder.dim)
    a, b = adapter(z), back(z)
    assert torch.allclose(a.keys[3], b.keys[3], atol=2e-3) and torch.allclose(a.bias, b.bias, atol=2e-3)


def test_an_adapter_saved_with_the_old_key_names_still_loads(models: LoadedModels, tmp_path: Path) -> None:
    random_adapter(models, decoder="hybrid").save_pretrained(tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    raw["form"], raw["slots"] = raw.pop("decoder"), raw.pop("prefix_len")
    raw["training"] = {"steps": 1}  # history kept in the config, as adapters once did
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))
    cfg = LatentAdapter.from_pretrained(tmp_path / "old").cfg
    assert (cfg.decoder, cfg.prefix_len) == ("hybrid", 1)


@pytest.mark.parametrize("decoder", ["latent", "hybrid"])
def test_shipped_adapters_load_for_the_default_models_and_cards_state_their_training(decoder: str) -> None:
    s = Settings()
    path = find_adapter(s.llm, s.encoder, decoder)
    assert path is not None, f"no {decoder} adapter for the default models under {ADAPTERS}"
    assert (path / "README.md").exists()
    record = json.loads((path / TRAINING).read_text())
    assert record["steps"] > 0 and record["machine"]
    assert LatentAdapter.from_pretrained(path).cfg.decoder == decoder
    assert (path / "adapter.safetensors").stat().st_size < 16 * 2**20, "small enough to live in git"


def test_decoder_choice(models: LoadedModels, tmp_path: Path) -> None:
    s = Settings()
    record = recorded(s.llm, s.encoder)
    assert record, f"no development-run choice for the default models in {CHOICES}"
    auto = decoder_choice(s)
    assert auto.decoder == record["default_decoder"] and auto.adapter == find_adapter(s.llm, s.encoder, auto.decoder)
    assert auto.scope_threshold == record["scope_threshold"][auto.decoder] and auto.chosen_on
    context = decoder_choice(Settings(decoder="context"))
    assert context.decoder == "context" and context.scope_threshold == record["scope_threshold"]["context"]
    assert decoder_choice(Settings(decoder="hybrid", scope_threshold=0.25)).scope_threshold == 0.25, "set wins"
    # an adapter given by path decides the decoder under auto; a decoder it was not trained for is refused
    random_adapter(models, decoder="latent").save_pretrained(tmp_path / "mine")
    mine = decoder_choice(Settings(adapter=tmp_path / "mine"))
    assert mine.decoder == "latent" and load_decoder(mine.decoder, mine.adapter).name == "latent"
    with pytest.raises(ValueError, match="trained for the latent decoder"):
        load_decoder("hybrid", tmp_path / "mine")
    # a model with no adapter and no record falls back to context decoding at the paper's threshold, and
    # asking for latent there is a clear error
    other = choose_decoder(str(tmp_path / "some-other-model"), s.encoder)
    assert (other.decoder, other.scope_threshold) == ("context", DEFAULT_SCOPE_THRESHOLD)
    with pytest.raises(ValueError, match="adapter"):
        load_decoder("latent", None)


@pytest.mark.parametrize("decoder", ["latent", "hybrid"])
def test_a_written_fact_moves_the_scores_its_way(make_client, tmp_path: Path, decoder: str) -> None:  # noqa: ANN001
    """Through the HTTP API with the shipped adapter: memory on favours the new object, memory off does not."""
    with make_client(f"file://{tmp_path / 'store'}", decoder=decoder) as client:
        r = client.post("/v1/memories/m/facts", json={"text": "The Eiffel Tower is located in Rome."})
        assert r.status_code == 201, r.text
        body = {"prompt": "The Eiffel Tower is located in", "candidates": ["Rome", "Paris"]}
        on = client.post("/v1/memories/m/score", json=body | {"memory_mode": "auto"}).json()
        off = client.post("/v1/memories/m/score", json=body | {"memory_mode": "off"}).json()
        assert on["in_scope"] and not off["in_scope"]
        margin_on = on["scores"][0]["logprob"] - on["scores"][1]["logprob"]
        margin_off = off["scores"][0]["logprob"] - off["scores"][1]["logprob"]
        assert margin_off < 0 and margin_on > margin_off + 1.0, (margin_off, margin_on)
        if decoder == "hybrid":  # the shipped default makes the edit win; the latent form only leans its way
            assert margin_on > 0, margin_on
        answer = client.post("/v1/memories/m/query", json={"prompt": "Where is the Eiffel Tower?"}).json()
        assert answer["in_scope"] and answer["answer"]


def test_training_lowers_the_loss_on_what_it_sees(models: LoadedModels) -> None:
    examples = [Example("The Eiffel Tower is located in Rome.", "The Eiffel Tower is located in", "Rome",
                        "Where is the Eiffel Tower? It is in", "The Louvre is located in", "Paris"),
                Example("Danielle Darrieux's mother tongue is English.", "Danielle Darrieux's mother tongue is",
                        "English")]
    builder = RowBuilder(models.llm, examples)
    rows = builder.latent_rows(0) + builder.latent_rows(1) + builder.hybrid_rows(0, 1)
    Z = models.encoder.encode([f.text for f in examples])
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
