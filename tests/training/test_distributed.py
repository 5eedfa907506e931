"""Training under torchrun: the launch environment, 2-process gloo runs of the real CLI on loopback (the
manifest records world size and backend, the same seed gives the same artifact), closed-form models fitted
by rank 0 alone, and a clear refusal for an iterative model that does not shard its training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.artifact import read_artifact
from model.base import ConfigError
from model.popularity import PopularityConfig
from model.registry import get_model
from training.cli import main as train_cli
from training.config import RunConfig
from training.distributed import SINGLE_PROCESS, Launch, LaunchError, device_for, from_env
from training.trainer import train

from ..conftest import TINY_LD4MREC

LD4MRec: Any = get_model("ld4mrec")  # its own attributes are used below

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_TIMEOUT_S = 300


def _flags(config: dict[str, Any]) -> list[str]:
    return [part for key, value in config.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def test_no_torchrun_environment_is_a_single_process() -> None:
    assert from_env({}) is SINGLE_PROCESS
    assert from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is SINGLE_PROCESS
    assert from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "two"},
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
        {"WORLD_SIZE": "0"},
        {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"},
    ],
)
def test_inconsistent_torchrun_environment_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(LaunchError):
        from_env(env)


def test_each_rank_gets_its_local_gpu() -> None:
    two = Launch(rank=3, world_size=4, local_rank=1)
    assert device_for("cpu", two) == torch.device("cpu")
    assert device_for("cuda", two) == torch.device("cuda", 1)
    assert device_for("cuda:1", SINGLE_PROCESS) == torch.device("cuda", 1)
    with pytest.raises(LaunchError, match="cuda:LOCAL_RANK"):
        device_for("cuda:0", two)


def test_trainer_refuses_a_closed_form_model_on_several_processes(synthetic_data) -> None:
    with pytest.raises(ConfigError, match="closed form"):
        train(synthetic_data, "popularity", PopularityConfig(), RunConfig(), launch=Launch(0, 2, 0, "gloo"))


def _torchrun_env(rank: int) -> dict[str, str]:
    return {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}


def test_closed_form_model_is_fitted_by_rank_0_alone(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--model", "popularity", "--data", str(synthetic_dir), "--quiet"]
    for key, value in _torchrun_env(1).items():
        monkeypatch.setenv(key, value)
    assert train_cli([*args, "--out", str(tmp_path / "rank1")]) == 0
    assert not (tmp_path / "rank1").exists(), "only rank 0 writes"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert train_cli([*args, "--out", str(tmp_path / "rank0")]) == 0
    training = json.loads((tmp_path / "rank0" / "manifest.json").read_text())["training"]
    assert (training["world_size"], training["backend"], training["launched_world_size"]) == (1, None, 2)


def test_iterative_model_without_sharding_is_refused(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(LD4MRec, "distributed", False)
    for key, value in _torchrun_env(0).items():
        monkeypatch.setenv(key, value)
    code = train_cli(["--data", str(synthetic_dir), "--out", str(tmp_path / "a"), "--epochs", "1"])
    assert code == 2
    assert "ld4mrec does not support distributed training" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def _torchrun(data: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    """``torchrun --standalone --nproc_per_node=2 -m training`` (loopback, its own free port)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training",
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        *_flags({"threads": 1, "epochs": 3, "patience": 3, **TINY_LD4MREC}),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with log.open("wb") as fh:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def test_two_process_gloo_run_writes_a_reproducible_artifact(synthetic_dir: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "first", tmp_path / "second"]
    runs = [_torchrun(synthetic_dir, out, tmp_path / f"{out.name}.log") for out in outs]  # side by side
    for run, out in zip(runs, outs, strict=True):
        try:
            code = run.wait(TORCHRUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise
        assert code == 0, (tmp_path / f"{out.name}.log").read_text()[-3000:]
    manifests = [json.loads((out / "manifest.json").read_text()) for out in outs]
    first = manifests[0]
    assert (first["training"]["world_size"], first["training"]["backend"]) == (2, "gloo")
    assert 1 <= first["training"]["best_epoch"] <= 3
    assert first["metrics"]["test"]["recall@20"] > 0
    log = (tmp_path / "first.log").read_text()
    assert "rank 0 of 2 joined the gloo process group" in log
    assert "[rank 1/2]" not in log, "ranks other than 0 log warnings only"
    # Same seed, same world size: the same artifact, array for array.
    arrays = [{k: v["sha256"] for k, v in m["files"].items() if k.endswith(".npy")} for m in manifests]
    assert arrays[0] == arrays[1]
    assert manifests[0]["metrics"] == manifests[1]["metrics"]
    art = read_artifact(outs[0])
    assert np.isfinite(art.user_states).all() and art.n_items == first["n_items"]
