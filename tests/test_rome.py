"""ROME baseline: the rank-one write, an exact reset, and edits that stack.

Statistics come from ~1k tokens of the README (not WikiText: fast and hermetic) and the
v* optimisation runs 10 steps instead of 20; both are enough for the mechanics checked here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.baselines.rome import Rome
from service.app import LoadedModels
from training.data import EditRequest

README = Path(__file__).resolve().parents[1] / "README.md"
FERRARI = EditRequest("Ferrari F355 is produced by", "Ferrari F355", "BMW", "Ferrari")
DARRIEUX = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")


@pytest.fixture(scope="module")
def rome(models: LoadedModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rome]:
    editor = Rome(models.llm, cache_dir=tmp_path_factory.mktemp("rome-stats"), stats_tokens=1024,
                  corpus=(README,), steps=10)
    yield editor
    editor.reset()  # the session's model is shared with other tests


def new_beats_true(rome: Rome, request: EditRequest) -> bool:
    new, true = rome.llm.score(request.prompt, [request.target_new, request.target_true])
    return new.mean_logprob > true.mean_logprob


def test_edit_maps_key_to_value_and_the_new_target_wins(rome: Rome) -> None:
    assert not new_beats_true(rome, FERRARI)
    try:
        key, value = rome.key_value(FERRARI)
        assert key.shape == (1536,) and value.shape == (576,)
        rome.insert(key, value)
        written = rome.mlp.down_proj.weight @ key
        assert torch.allclose(written, value, atol=1e-4 * value.norm().item())
        assert new_beats_true(rome, FERRARI)
    finally:
        rome.reset()


def test_reset_restores_the_weights_bit_for_bit(rome: Rome) -> None:
    weight = rome.mlp.down_proj.weight
    before = weight.detach().clone()
    rome.insert(torch.randn(1536), torch.randn(576))  # any write will do; no optimisation needed
    assert not torch.equal(weight, before)
    rome.reset()
    assert torch.equal(weight, before)


def test_sequential_edits_both_stick(rome: Rome) -> None:
    before = rome.mlp.down_proj.weight.detach().clone()
    try:
        rome.apply(FERRARI)
        rome.apply(DARRIEUX)
        change = rome.mlp.down_proj.weight.detach() - before
        assert torch.linalg.matrix_rank(change).item() == 2  # the second write added to the first
        assert new_beats_true(rome, FERRARI) and new_beats_true(rome, DARRIEUX)
    finally:
        rome.reset()
