"""bench/accuracy_search.py: one run per model on the small synthetic dataset appends one JSONL row with
the model, both configurations and the equivalent ``ld4mrec-train`` command; bad overrides (unknown, removed
or out-of-range options) are refused before anything is trained. No figure is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPT = BENCH / "accuracy_search.py"
sys.path.insert(0, str(BENCH))

from accuracy_search import cli_command  # noqa: E402


def _run(data: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"LD4MREC_DATASETS": str(data.parent)}
    cmd = [sys.executable, str(SCRIPT), data.name, *args, "--log", str(log)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_rows_record_the_model_and_both_configs(synthetic_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    tiny = {"threads": 1, "epochs": 2, "hidden_dim": 16, "svd_rank": 8, "use_cg": False}
    for args in ([json.dumps(tiny)], ['{"threads": 1}', "--model", "popularity"]):
        proc = _run(synthetic_dir, log, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ld4mrec, popularity = (json.loads(line) for line in log.read_text(encoding="utf-8").splitlines())

    assert ld4mrec["model"] == "ld4mrec" and ld4mrec["overrides"] == tiny
    assert ld4mrec["model_config"]["hidden_dim"] == 16 and ld4mrec["model_config"]["use_cg"] is False
    assert ld4mrec["run_config"]["epochs"] == 2 and "epochs" not in ld4mrec["model_config"]
    assert ld4mrec["epochs"] == 2 and 1 <= ld4mrec["best_epoch"] <= 2
    assert ld4mrec["command"].startswith("ld4mrec-train --model ld4mrec --data ../shared/datasets/")
    assert "--no-use-cg" in ld4mrec["command"] and "--hidden-dim 16" in ld4mrec["command"]
    assert popularity["model"] == "popularity" and popularity["model_config"] == {}
    assert popularity["best_epoch"] == 0 and set(popularity["test"]) >= {"recall@20", "ndcg@20"}


def test_bad_overrides_are_refused_before_training(synthetic_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    for overrides, message in (
        ('{"loss": "multinomial"}', "unknown option(s) for ld4mrec or the run: loss"),  # a removed switch
        ('{"lr": -1}', "invalid value for lr"),
        ('{"hidden_dim": 16}', "unknown option(s) for popularity"),
        ("[1, 2]", "must be a JSON object"),
    ):
        args = [overrides, "--model", "popularity"] if "hidden_dim" in overrides else [overrides]
        proc = _run(synthetic_dir, log, *args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not log.exists()


def test_cli_command_spells_every_kind_of_option() -> None:
    assert cli_command("baby", {"l2_grid": [100.0, 500.0], "threads": 1}, "ease") == (
        "ld4mrec-train --model ease --data ../shared/datasets/baby --out /tmp/baby --l2-grid 100.0 500.0 "
        "--threads 1"
    )
    assert cli_command("baby", {"use_pg": False, "soft_labels": True}).endswith("--no-use-pg --soft-labels")
