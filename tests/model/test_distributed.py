"""model.distributed: with one process every helper is the identity; with two gloo ranks (spawned here, on
loopback) DDP's averaged gradient of ``batch_mean`` over ``local_part`` shares equals the single-process
gradient of the whole batch, and LD4MRec's ranks stay identical (weights and step sampler) while training."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model.base import FitContext
from model.distributed import batch_mean, gather_rows, local_part, mean_over_ranks, rank_seed, wrap_module

WORLD = 2
BATCH_SIZES = (5, 4, 1)  # uneven shares (3 + 2), even ones, and a batch smaller than the world (1 + 0)
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _join(rank: int, port: int) -> FitContext:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    return FitContext(seed=7, rank=rank, world_size=WORLD)


def _rows() -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(3))


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))


def _gradients(module: nn.Module, ctx: FitContext) -> dict[str, np.ndarray]:
    """Gradient of the batch loss (mean of squared outputs) of each batch size, through ``ctx``'s helpers."""
    wrapped = wrap_module(module, ctx)
    out: dict[str, np.ndarray] = {}
    for n in BATCH_SIZES:
        batch = _rows()[:n]
        values = wrapped(local_part(batch, ctx)).squeeze(1) ** 2
        module.zero_grad(set_to_none=True)
        batch_mean(values, ctx, n).backward()
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        out[f"grad_{n}"] = torch.cat([g.flatten() for g in grads if g is not None]).numpy().copy()
    return out


def _worker(rank: int, port: int, out_dir: str, data_dir: str) -> None:
    """One rank: the helpers on a toy module, then two LD4MRec epochs on the synthetic data."""
    from model.ld4mrec.config import LD4MRecConfig
    from model.registry import get_model

    LD4MRec: Any = get_model("ld4mrec")
    from tests.conftest import TINY_LD4MREC
    from training.dataset import load_dataset
    from training.trainer import training_data

    ctx = _join(rank, port)
    results = _gradients(_toy(), ctx)
    results["gathered"] = gather_rows(local_part(torch.arange(5.0) * 10, ctx), ctx, 5).numpy()
    results["mean"] = np.asarray([mean_over_ranks({"x": float(rank + 1)}, ctx)["x"]])

    data = training_data(load_dataset(data_dir))
    model = LD4MRec.create(LD4MRecConfig(**TINY_LD4MREC), data, ctx)
    results["losses"] = np.asarray([model.fit_epoch(data, epoch, ctx)["loss"] for epoch in (1, 2)])
    assert model._fit is not None
    results["weights"] = torch.cat([p.detach().flatten() for p in model.net.parameters()]).numpy()
    results["sampler"] = model._fit.sampler.history
    np.savez(Path(out_dir) / f"rank{rank}.npz", **results)  # type: ignore[arg-type]  # (numpy's stub)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> list[dict[str, np.ndarray]]:
    """What each of two spawned gloo ranks computed (one launch for the module: each costs seconds)."""
    out = tmp_path_factory.mktemp("ranks")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, port, str(out), str(synthetic_dir))) for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(TIMEOUT_S)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert [proc.exitcode for proc in procs] == [0] * WORLD
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(WORLD)]


def test_one_process_helpers_are_the_identity() -> None:
    ctx = FitContext(seed=11)
    module = _toy()
    assert wrap_module(module, ctx) is module
    batch = np.arange(7)
    assert local_part(batch, ctx) is batch
    values = torch.rand(7)
    assert torch.equal(batch_mean(values, ctx, 7), values.mean())
    assert gather_rows(values, ctx, 7) is values
    assert mean_over_ranks({"loss": 2.5}, ctx) == {"loss": 2.5}
    assert rank_seed(ctx) == 11


def test_shares_cover_the_batch_once_in_order() -> None:
    batch = np.arange(11) * 3
    shares = [local_part(batch, FitContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == batch.tolist()
    assert [len(s) for s in shares] == [4, 4, 3]
    assert len({rank_seed(FitContext(seed=5, rank=r, world_size=3)) for r in range(3)}) == 3


def test_two_ranks_give_the_single_process_gradient(ranks: list[dict[str, np.ndarray]]) -> None:
    expected = _gradients(_toy(), FitContext())
    for result in ranks:
        for n in BATCH_SIZES:
            np.testing.assert_allclose(result[f"grad_{n}"], expected[f"grad_{n}"], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(result["gathered"], np.arange(5.0) * 10)
        assert result["mean"][0] == pytest.approx(1.5)


def test_ld4mrec_ranks_stay_identical_while_training(ranks: list[dict[str, np.ndarray]]) -> None:
    first, second = ranks
    np.testing.assert_array_equal(first["weights"], second["weights"])
    np.testing.assert_array_equal(first["sampler"], second["sampler"])
    np.testing.assert_array_equal(first["losses"], second["losses"])
    assert np.isfinite(first["losses"]).all() and first["losses"][1] < first["losses"][0]
