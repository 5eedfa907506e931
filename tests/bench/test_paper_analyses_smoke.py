"""Smoke test of bench/paper_analyses.py: every subcommand on the small synthetic dataset with a tiny model
and 2 epochs; checks the output contract (JSON file per analysis, last stdout line = headline JSON), that the
runs are flagged as capped, that the same seed and config train the same model in different subcommands
(determinism), and the fake-interaction sampler of the robustness analysis. No figure is asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.dataset import InteractionData

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPT = BENCH / "paper_analyses.py"
sys.path.insert(0, str(BENCH))

from paper_analyses import (  # noqa: E402
    make_setup,
    parse_overrides,
    sample_fake_pairs,
    sensitivity_points,
    with_fake_interactions,
)

TINY = ["--set", "threads=1", "--set", "hidden_dim=16", "--set", "svd_rank=8", "--set", "batch_size=64"]
TINY += ["--set", "lr=1e-3", "--epochs", "2", "--patience", "2"]
TIMING = ["--timing-batches", "16,1", "--timing-repeats", "2", "--timing-min-repeats", "1"]
TIMING += ["--timing-budget-s", "0.05", "--multistep", "5,50"]
COMMANDS: dict[str, list[str]] = {
    "inference": [*TINY, *TIMING],
    "ablation": TINY,
    "robustness": [*TINY, "--levels", "0.1"],
    "sensitivity": [*TINY, "--p-values", "0.1", "--gamma-values", "0.05"],
    "epoch-time": ["--set", "threads=1", "--set", "hidden_dim=16", "--set", "svd_rank=8", "--epochs", "2"],
}


def _invoke(analysis: str, data: Path, results: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), analysis, "--data", str(data), "--results-dir", str(results), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _run(analysis: str, data: Path, results: Path, extra: list[str], trains: bool = True) -> dict[str, Any]:
    """Run one subcommand; -> its headline (the last stdout line)."""
    proc = _invoke(analysis, data, results, extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["analysis"] == analysis and headline["dataset"] == data.name
    if trains:  # every training logs its epochs (losses, valid metrics) through the trainer's logger
        assert re.search(r"epoch 1 .*loss.* valid .*recall@20=", proc.stderr), proc.stderr[-3000:]
    return headline


def test_every_subcommand_writes_json_and_headline(synthetic_dir: Path, tmp_path: Path) -> None:
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for analysis, extra in COMMANDS.items():
        headline = _run(analysis, synthetic_dir, tmp_path, [*extra, "--no-plot"], analysis != "epoch-time")
        path = tmp_path / f"paper_{analysis.replace('-', '_')}_{synthetic_dir.name}.json"
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert payload["headline"] == headline
        assert payload["command"].startswith("python bench/paper_analyses.py " + analysis)
        assert payload["machine"]["torch_threads"] == 1 and "cpu_model" in payload["machine"]
        out[analysis] = (headline, payload)

    for analysis in ("inference", "ablation", "robustness", "sensitivity"):
        headline, payload = out[analysis]
        assert headline["capped"] is True and payload["protocol"]["capped"] is True
        assert payload["base_config"]["epochs"] == 2 and payload["overrides"]["epochs"] == 2
        assert payload["base_config"]["hidden_dim"] == 16 and payload["model_name"] == "ld4mrec"

    inference = out["inference"][1]
    names = [r["variant"] for r in inference["results"]]
    assert names == [
        "single_step",
        *(f"forward_noised_t{t}" for t in range(6)),
        "multistep_T5",
        "multistep_T50",
    ]
    assert inference["single_step_matches_trainer_test"] is True
    by_name = {r["variant"]: r for r in inference["results"]}
    assert by_name["multistep_T5"]["test"] == by_name["forward_noised_t5"]["test"]  # same steps, same noise
    for row in inference["results"]:
        assert row["batch16"]["per_user_ms"] > 0 and row["batch1"]["per_user_ms"] > 0
    assert inference["timing"]["threads"] == 1
    assert {"ratio_b_T50_batch16", "ratio_b_T50_batch1", "single_step_test_recall@20"} <= set(
        out["inference"][0]
    )

    ablation = {r["variant"]: r for r in out["ablation"][1]["results"]}
    assert set(ablation) == {"default", "wo_cg", "wo_pg", "wo_soft", "diffrec_style"}
    assert all(r["s_per_epoch"] > 0 and 1 <= r["best_epoch"] <= 2 for r in ablation.values())
    # deterministic for the seed: the same config trains the same model in every subcommand
    assert ablation["default"]["test"] == inference["model"]["test"]
    robustness = {(r["model"], r["noise"]): r for r in out["robustness"][1]["results"]}
    assert set(robustness) == {(m, n) for m in ("ld4mrec", "diffrec_style") for n in (0.0, 0.1)}
    assert robustness["ld4mrec", 0.0]["test"] == ablation["default"]["test"]
    assert robustness["diffrec_style", 0.0]["test"] == ablation["diffrec_style"]["test"]
    assert robustness["ld4mrec", 0.1]["fake_interactions"] > 0
    assert "ld4mrec_noise10_drop_recall@20" in out["robustness"][0]

    sensitivity = out["sensitivity"][1]
    assert [(r["soft_p"], r["soft_gamma"]) for r in sensitivity["results"]] == [
        (0.01, 0.01),
        (0.01, 0.05),
        (0.1, 0.01),
    ]
    assert out["sensitivity"][0]["mode"] == "one_at_a_time"

    epoch_time = out["epoch-time"][0]
    assert epoch_time["ratio_c"] > 0 and epoch_time["epochs_timed"] == 2 and epoch_time["capped"] is False
    assert all(len(r["seconds"]) == 2 for r in out["epoch-time"][1]["results"])


def test_inference_from_artifact(
    synthetic_dir: Path, tiny_artifact: Path, tiny_ease_artifact: Path, tmp_path: Path
) -> None:
    extra = ["--artifact", str(tiny_artifact), "--set", "threads=1", *TIMING]
    headline = _run("inference", synthetic_dir, tmp_path, extra, trains=False)
    payload = json.loads(Path(headline["json"]).read_text(encoding="utf-8"))
    assert payload["model"]["model"].startswith("artifact ")
    assert payload["base_config"]["hidden_dim"] == 64  # the artifact's own configuration
    assert payload["single_step_matches_trainer_test"] is True
    refused = _invoke("inference", synthetic_dir, tmp_path, [*extra, "--set", "use_cg=false"])
    assert refused.returncode != 0 and "only --set" in refused.stderr
    other = _invoke("inference", synthetic_dir, tmp_path, ["--artifact", str(tiny_ease_artifact), *TIMING])
    assert other.returncode != 0 and "need an ld4mrec model, not ease" in other.stderr


def test_fake_interactions_are_new_distinct_and_nested(synthetic_data: InteractionData) -> None:
    data = synthetic_data
    users, items = sample_fake_pairs(data, 500, seed=3)
    keys = users * data.n_items + items
    assert len(np.unique(keys)) == 500
    known = (data.train + data.valid + data.test).tocoo()
    assert not np.isin(keys, known.row.astype(np.int64) * data.n_items + known.col).any()
    assert (np.diff(data.train.indptr)[users] > 0).all()  # only users who have training items
    again_u, again_i = sample_fake_pairs(data, 200, seed=3)  # seeded, and a prefix of the larger draw
    np.testing.assert_array_equal(again_u, users[:200])
    np.testing.assert_array_equal(again_i, items[:200])
    noisy = with_fake_interactions(data, users, items)
    assert noisy.train.nnz == data.train.nnz + 500
    assert (noisy.valid != data.valid).nnz == 0 and (noisy.test != data.test).nnz == 0


def test_sensitivity_points_and_overrides() -> None:
    assert sensitivity_points((0.01, 0.01), [0.001, 0.01], [0.01, 0.1], grid=False) == [
        (0.001, 0.01),
        (0.01, 0.01),
        (0.01, 0.1),
    ]
    assert len(sensitivity_points((0.01, 0.01), [0.001, 0.01], [0.01, 0.1], grid=True)) == 4
    # LD4MRecConfig and RunConfig keys alike, typed by their field
    assert parse_overrides(["use_cg=false", "lr=1e-3", "steps=10", "threads=1", "signal-source=full"]) == {
        "use_cg": False,
        "lr": 1e-3,
        "steps": 10,
        "threads": 1,
        "signal_source": "full",
    }
    for bad in ("no_such_option=1", "loss=mse", "use_cg=maybe", "steps=ten", "lr"):  # loss: a removed switch
        with pytest.raises(SystemExit):
            parse_overrides([bad])
    setup = make_setup(parse_overrides(["use_cg=false", "epochs=3"]))
    assert setup.model.use_cg is False and setup.run.epochs == 3
    assert setup.diff() == {"epochs": 3, "use_cg": False}
    with pytest.raises(SystemExit, match="inference_step"):
        make_setup({"steps": 1, "inference_step": 2})  # validated on the combined values
