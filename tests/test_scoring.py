"""Scoring in bounded passes: the LM head only where continuation tokens are predicted, rows in chunks of at most
``SCORE_TOKENS`` padded tokens. The scores must be those of the old way, one padded batch's full (B, T, V) logits.
"""

from __future__ import annotations

import pytest
import torch

import models.llm as llm_mod
from models.latent import LatentAdapter, LatentConfig
from models.llm import CausalLM, ContinuationScore, KVPrefix, score_chunks

Row = tuple[float, int, tuple[int, ...], int]  # logprob, n_tokens, predicted, n_correct

ITEMS = [
    ("The capital of France is", ["Paris", "Berlin", "a city on the Seine that has been the seat of French kings, "
                                  "emperors and presidents for many centuries, and still is today"]),
    ("The sky is ", ["blue", "", "green with purple spots"]),  # "" is a continuation of no tokens
    ("Water boils at", ["100 degrees Celsius", "the top of the mountain"]),
]


def reference(llm: CausalLM, items: list[tuple[str, list[str]]], kv_prefix: KVPrefix | None = None) -> list[Row]:
    """The old way: every row in one right-padded batch, full (B, T, V) logits, log_softmax, gather."""
    rows: list[tuple[int, list[int], list[int]]] = []  # (prefix length, ids, continuation)
    item_of_row: list[int] = []
    for n, (prefix, candidates) in enumerate(items):
        for c in candidates:
            prefix_ids, cont = llm.pair_ids(prefix, c)
            rows.append((len(prefix_ids), prefix_ids + cont, cont))
            item_of_row.append(n)
    ids, mask = llm.pad([s for _, s, _ in rows])  # (B, T)
    with torch.inference_mode():
        if kv_prefix is None:
            logits = llm.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        else:
            logits = llm.forward(ids, mask, kv_prefix.rows(torch.tensor(item_of_row))).logits  # (B, T, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    out = []
    for i, (P, _, cont) in enumerate(rows):
        pos = torch.arange(P - 1, P - 1 + len(cont))  # (n,)
        tgt = torch.tensor(cont, dtype=torch.long)  # (n,)
        pred = logp[i, pos].argmax(-1)  # (n,)
        out.append((logp[i, pos, tgt].sum().item() if cont else 0.0, len(cont), tuple(pred.tolist()),
                    int((pred == tgt).sum())))
    return out


def assert_same(got: list[list[ContinuationScore]], want: list[Row]) -> None:
    flat = [s for item in got for s in item]
    assert len(flat) == len(want)
    for s, (lp, n, pred, ok) in zip(flat, want, strict=True):
        assert abs(s.logprob - lp) < 1e-4, (s.candidate, s.logprob, lp)
        assert (s.n_tokens, s.predicted, s.n_correct) == (n, pred, ok), s.candidate


def small_passes(monkeypatch: pytest.MonkeyPatch, tokens: int = 40, head: int = 5) -> None:
    """Passes and head slices far smaller than the defaults, so a few short rows span several of each."""
    monkeypatch.setattr(llm_mod, "SCORE_TOKENS", tokens)
    monkeypatch.setattr(llm_mod, "HEAD_POSITIONS", head)


def test_chunks_bound_the_padded_tokens_of_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_mod, "SCORE_TOKENS", 12)
    assert score_chunks([]) == []
    assert score_chunks([3, 3, 3, 3, 3]) == [range(0, 4), range(4, 5)]
    assert score_chunks([2, 7, 1, 20, 4]) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert score_chunks([2, 5, 1, 1]) == [range(0, 2), range(2, 4)], "the padded width, not the sum, counts"


@pytest.mark.parametrize("small", [False, True], ids=["default-passes", "many-passes"])
def test_scores_equal_the_full_logits_of_one_padded_batch(models, monkeypatch, small: bool) -> None:  # noqa: ANN001
    llm = models.llm
    if small:
        small_passes(monkeypatch)
        lengths = [sum(map(len, llm.pair_ids(p, c))) for p, cs in ITEMS for c in cs]
        assert len(score_chunks(lengths)) > 2 and max(lengths) > 20, "rows across several passes, one long"
    got = llm.score_batch(ITEMS)
    assert_same(got, reference(llm, ITEMS))
    assert got[1][1].n_tokens == 0 and got[1][1].logprob == 0.0 and got[1][1].predicted == ()


def test_the_model_family_without_a_known_head_is_scored_from_its_own_logits(models, monkeypatch) -> None:  # noqa: ANN001
    llm = models.llm
    assert llm.head_is_exact, "SmolLM2 (Llama) has no transformation after its LM head"
    small_passes(monkeypatch)
    monkeypatch.setattr(llm, "head_is_exact", False)
    assert_same(llm.score_batch(ITEMS), reference(llm, ITEMS))


def test_head_soft_caps_as_gemma_and_a_head_unlike_the_models_is_caught(models, monkeypatch) -> None:  # noqa: ANN001
    llm = models.llm
    h = torch.randn(3, llm.model.config.hidden_size)  # (3, H)
    with torch.inference_mode():
        plain = llm.model.get_output_embeddings()(h)  # (3, V)
        assert torch.equal(llm.head(h), plain)
        monkeypatch.setattr(llm.model.config, "final_logit_softcapping", 5.0, raising=False)
        capped = llm.head(h)  # (3, V)
    assert torch.allclose(capped, torch.tanh(plain / 5.0) * 5.0) and float(capped.abs().max()) <= 5.0
    # Llama's forward ignores the key, so head no longer gives the model's logits: the check sees it
    assert not CausalLM.head_is_exact.func(llm)


def test_a_pass_holds_bounded_states_and_logits(models, monkeypatch) -> None:  # noqa: ANN001
    llm = models.llm
    assert llm.head_is_exact  # computed before the spies go in
    monkeypatch.setattr(llm_mod, "SCORE_TOKENS", 128)
    monkeypatch.setattr(llm_mod, "HEAD_POSITIONS", 16)
    passes: list[tuple[int, bool]] = []
    heads: list[int] = []
    forward, head = CausalLM.forward, CausalLM.head

    def spy_forward(self: CausalLM, ids: torch.Tensor, mask: torch.Tensor, prefix: KVPrefix | None = None,
                    hidden: bool = False):  # noqa: ANN202 - HF output
        passes.append((ids.numel(), hidden))
        return forward(self, ids, mask, prefix, hidden)

    def spy_head(self: CausalLM, states: torch.Tensor) -> torch.Tensor:
        heads.append(states.shape[0])
        return head(self, states)

    monkeypatch.setattr(CausalLM, "forward", spy_forward)
    monkeypatch.setattr(CausalLM, "head", spy_head)
    scores = llm.score("Say:", [" ".join(["word"] * n) for n in range(1, 40, 4)])
    assert len(passes) > 1 and all(n <= 128 and hidden for n, hidden in passes)
    assert max(heads) <= 16 and sum(heads) == sum(s.n_tokens for s in scores), "logits only where they are read"


def test_chunking_does_not_change_scores(models, monkeypatch) -> None:  # noqa: ANN001
    llm = models.llm
    prompt = "My favourite thing to eat is"
    cands = [" ".join(["bread", "with", "a", "lot", "of", "butter"][: 1 + i % 6]) + f" number {i}" for i in range(20)]
    one_by_one = [llm.score(prompt, [c])[0] for c in cands]
    at_once = llm.score(prompt, cands)  # one pass at the defaults
    small_passes(monkeypatch)
    in_passes = llm.score(prompt, cands)
    assert len(score_chunks([sum(map(len, llm.pair_ids(prompt, c))) for c in cands])) > 5
    for batch in (at_once, in_passes):
        for a, b in zip(batch, one_by_one, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-4
            assert (a.n_tokens, a.predicted, a.n_correct) == (b.n_tokens, b.predicted, b.n_correct)


def test_a_latent_prefix_follows_its_rows_into_each_pass(models, monkeypatch) -> None:  # noqa: ANN001
    """A random adapter (as tests/test_latent.py builds one) stands in for a trained one: scoring behind its
    prefix, in passes that cut through the items' rows, equals one full pass behind the same prefixes."""
    llm = models.llm
    torch.manual_seed(0)
    adapter = LatentAdapter(LatentConfig.for_llm(llm.model.config, models.encoder.dim, rank=16)).eval()
    torch.nn.init.normal_(adapter.emb.weight, std=0.05)
    with torch.inference_mode():
        prefix = adapter(torch.randn(len(ITEMS), models.encoder.dim))
    small_passes(monkeypatch)
    got = llm.score_batch(ITEMS, prefix)
    assert_same(got, reference(llm, ITEMS, prefix))
    plain = llm.score_batch(ITEMS)
    assert got[0][0].logprob != pytest.approx(plain[0][0].logprob, abs=1e-3), "the prefix is in effect"
