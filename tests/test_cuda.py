"""The memory math on CUDA agrees with itself and with the CPU. Skipped where there is no GPU (CI)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from memory_core import EpisodicMemory, MemoryConfig, nearest, read, write_episode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODES = ("linear", "gaussian")


def latents(n: int, c: int = 384, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, c, generator=g), dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_sequential_writes_on_cuda_equal_the_batch_solution_and_the_cpu(mode: str) -> None:
    cfg = MemoryConfig(slots=512, dim=384, addressing=mode)
    Z = latents(200)
    gpu, cpu = EpisodicMemory(cfg, device="cuda"), EpisodicMemory(cfg, device="cpu")
    assert torch.equal(gpu.M_ref.cpu(), cpu.M_ref), "the seeded reference memory is device-independent"
    sg, sc = gpu.empty(), cpu.empty()
    for i in range(0, 200, 10):
        for j in range(i, i + 10, 5):
            sg = gpu.update(sg, Z[j : j + 5].cuda(), +1.0, inplace=True)
        sc = cpu.write(sc, Z[i : i + 10])
    assert sg.M.device.type == "cuda" and sg.C_inv.device.type == "cuda"
    exact = gpu.rebuild(Z.cuda())
    scale = exact.M.norm()
    assert (sg.M - exact.M).norm() <= 1e-4 * scale
    assert (sg.M.cpu() - sc.M).norm() <= 1e-4 * scale.cpu()


@pytest.mark.parametrize("mode", MODES)
def test_write_then_forget_on_cuda_restores_the_memory(mode: str) -> None:
    mem = EpisodicMemory(MemoryConfig(slots=512, dim=384, addressing=mode), device="cuda")
    Z = latents(50).cuda()
    before = mem.write(mem.empty(), Z[:40])
    after = mem.forget(mem.write(before, Z[40:]), Z[40:])
    assert (after.M - before.M).norm() <= 1e-4 * before.M.norm()
    # forgetting one of many leaves the others readable
    one_less = mem.forget(before, Z[:1])
    _, idx = nearest(mem.read(one_less, Z[1:40]), Z[1:40])
    assert (idx[:, 0] == torch.arange(39, device="cuda")).float().mean() > 0.9


def test_one_shot_episode_on_cuda_is_the_projection() -> None:
    Z = latents(64, 128).double().cuda()
    M0 = torch.randn(256, 128, dtype=torch.float64, device="cuda")
    Zq = latents(8, 128, seed=1).double().cuda()
    Zr, _ = read(Zq, write_episode(Z, M0))
    assert torch.allclose(Zr, Zq @ torch.linalg.pinv(Z) @ Z, atol=1e-8)


def test_cuda_state_round_trips_through_safetensors_bit_for_bit() -> None:
    cfg = MemoryConfig(slots=512, dim=384)
    mem = EpisodicMemory(cfg, device="cuda")
    state = mem.write(mem.empty(), latents(30).cuda())
    loaded = st_load(st_save({k: v.cpu() for k, v in mem.to_tensors(state).items()}))
    mem2, state2 = EpisodicMemory.from_tensors(cfg, loaded, device="cuda")
    z = latents(1, seed=5).cuda()
    assert torch.equal(mem.write(state, z).M, mem2.write(state2, z).M)
