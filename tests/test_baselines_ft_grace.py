"""FT-L and GRACE on the real default LLM: each edit takes, stays within its limits, and undoes exactly.

One edit per method (a few seconds each on a CPU); the shared session model is restored (FT-L reset,
GRACE hooks removed) whatever a test does, because the rest of the suite uses the same model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bench.baselines.ft_l import FineTuneL, encode_edit
from bench.baselines.grace import Grace
from models.llm import CausalLM
from models.loading import LoadedModels
from training.data import EditRequest

EDIT = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")
UNRELATED = "The capital city of Japan is"


@pytest.fixture(scope="module")
def llm(models: LoadedModels) -> CausalLM:
    return models.llm


def logits(llm: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return llm.model(input_ids=ids).logits[0]  # (T, V) for ids (1, T)


def edit_ids(llm: CausalLM) -> tuple[torch.Tensor, int]:
    """The edit's prompt + target as scoring reads it, and the prompt's length in tokens."""
    return encode_edit(llm, EDIT.prompt, EDIT.target_new)


def new_wins(llm: CausalLM, prompt: str) -> bool:
    new, true = llm.score(prompt, [EDIT.target_new, EDIT.target_true])
    return new.mean_logprob > true.mean_logprob


@pytest.fixture(scope="class")
def ft_l(llm: CausalLM) -> Iterator[tuple[FineTuneL, torch.Tensor]]:
    """One FT-L edit, applied once for the class; yields the editor and the weight before the edit."""
    editor = FineTuneL(llm)
    before = editor.weight.detach().clone()
    try:
        editor.apply(EDIT)
        yield editor, before
    finally:
        editor.reset()


class TestFineTuneL:
    """One FT-L edit for the class; torn down (reset) before GRACE sees the model."""

    def test_target_wins(self, llm: CausalLM, ft_l: tuple[FineTuneL, torch.Tensor]) -> None:
        assert new_wins(llm, EDIT.prompt)

    def test_change_within_epsilon(self, ft_l: tuple[FineTuneL, torch.Tensor]) -> None:
        editor, before = ft_l
        w = editor.weight.detach()
        assert not torch.equal(w, before)
        # the same float expressions as the projection, so the bound is checked without rounding slack
        assert bool(((w >= before - editor.epsilon) & (w <= before + editor.epsilon)).all())

    def test_reset_restores_bit_for_bit(self, llm: CausalLM, ft_l: tuple[FineTuneL, torch.Tensor]) -> None:
        editor, before = ft_l
        edited = editor.weight.detach().clone()
        editor.reset()
        try:
            assert torch.equal(editor.weight, before)
            assert not new_wins(llm, EDIT.prompt)  # the unedited model prefers French
        finally:
            with torch.no_grad():  # the class's edit back, for tests that run after this one
                editor.weight.copy_(edited)


@pytest.fixture(scope="class")
def unedited(llm: CausalLM) -> dict[str, torch.Tensor]:
    """Logits of the model with no hook at all, the reference every GRACE comparison is bit-exact against."""
    return {"edit": logits(llm, edit_ids(llm)[0]), "unrelated": logits(llm, llm.ids(UNRELATED))}


@pytest.fixture(scope="class")
def grace(llm: CausalLM, unedited: dict[str, torch.Tensor]) -> Iterator[Grace]:
    """One GRACE edit for the class on a freshly hooked model; the hooks come off at its end."""
    editor = Grace(llm)
    try:
        assert torch.equal(logits(llm, llm.ids(UNRELATED)), unedited["unrelated"])  # hooked, empty: inert
        editor.apply(EDIT)
        yield editor
    finally:
        editor.close()


class TestGrace:
    """One GRACE edit for the class; the hooks are removed at its end."""

    def test_target_wins(self, llm: CausalLM, grace: Grace) -> None:
        assert len(grace.labels) == 1
        assert new_wins(llm, EDIT.prompt)

    def test_defers_on_unrelated_prompt(self, llm: CausalLM, grace: Grace, unedited: dict[str, torch.Tensor]) -> None:
        assert torch.equal(logits(llm, llm.ids(UNRELATED)), unedited["unrelated"])

    def test_keys_on_the_prompt_candidate_boundary(
        self, llm: CausalLM, grace: Grace, unedited: dict[str, torch.Tensor]
    ) -> None:
        """Teacher-forced prompt + candidate: untouched before the last prompt token, edited from it on."""
        ids, n_prompt = edit_ids(llm)
        edited = logits(llm, ids)  # (P + C, V)
        assert torch.equal(edited[: n_prompt - 1], unedited["edit"][: n_prompt - 1])
        assert not torch.allclose(edited[n_prompt - 1], unedited["edit"][n_prompt - 1])
        # a padded batch mixing prompt lengths finds each row's own boundary: same verdicts as one by one
        pairs = [(EDIT.prompt, [EDIT.target_new, EDIT.target_true]), (UNRELATED, ["Tokyo", "Paris"])]
        batched = llm.score_batch(pairs)
        alone = [llm.score(p, c) for p, c in pairs]
        for b, a in zip(batched, alone, strict=True):
            assert [s.mean_logprob for s in b] == pytest.approx([s.mean_logprob for s in a], abs=1e-4)
        assert batched[0][0].mean_logprob > batched[0][1].mean_logprob
        assert batched[1][0].mean_logprob > batched[1][1].mean_logprob

    def test_generate_keeps_the_value(self, llm: CausalLM, grace: Grace) -> None:
        """Cached decoding keeps the prompt's value: it agrees with one fresh pass over prompt + answer."""
        prompt = llm.ids(EDIT.prompt)  # (1, P)
        with torch.inference_mode():
            out = llm.model.generate(
                input_ids=prompt, max_new_tokens=3, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id
            )  # (1, P + 3)
        assert llm.tokenizer.decode(out[0, prompt.shape[1] :]).strip().startswith(EDIT.target_new)
        greedy = logits(llm, out[:, :-1]).argmax(-1)  # (P + 2,): each next token, teacher-forced
        assert torch.equal(greedy[prompt.shape[1] - 1 :], out[0, prompt.shape[1] :])

    def test_reset_restores_unedited_output(
        self, llm: CausalLM, grace: Grace, unedited: dict[str, torch.Tensor]
    ) -> None:
        codebook = (grace.keys, grace.values, grace.radii, list(grace.labels))
        grace.reset()
        try:
            assert torch.equal(logits(llm, edit_ids(llm)[0]), unedited["edit"])  # hook still there, inert
            assert not new_wins(llm, EDIT.prompt)
        finally:  # the class's edit back, for tests that run after this one
            grace.keys, grace.values, grace.radii, grace.labels = codebook
