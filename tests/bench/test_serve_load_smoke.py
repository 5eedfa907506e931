"""Smoke test of bench/serve_load.py: one very short run on the tiny artifact (its own redis-server and
service on free loopback ports; one open-loop step, one closed-loop step), the service in int8 (a 4-field
``--config``). Checks the output contract: the last stdout line is a JSON object with the headline keys,
the model limit is measured at fp32 and int8, both ratios and the int8 vs fp32 top-20 overlap are reported,
the JSON file and the PNG are written, and every process it started is gone. Speed is not asserted here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"
HEADLINE_KEYS = {
    "p50_ms",
    "p99_ms",
    "max_rps_p99_under_50ms",
    "ratio_service_to_model",
    "errors",
    "ratio_service_to_model_same_precision",
    "best_config",
}


SHORT = [
    "--quick",
    "--start-rps",
    "20",
    "--max-steps",
    "1",
    "--refine",
    "0",
    "--step-s",
    "0.5",
    "--min-requests",
    "1",
    "--clients",
    "2",
    "--warmup-s",
    "0.3",
    "--model-budget-s",
    "0.1",
    "--overlap-users",
    "64",
    "--no-profile",
]
NO_REDIS = shutil.which("redis-server") is None


def _run(artifact: Path, config: str, out: Path) -> subprocess.CompletedProcess[str]:
    args = [*SHORT, "--artifact", str(artifact), "--config", config, "--out", str(out)]
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(NO_REDIS, reason="redis-server is not installed")
def test_short_run_on_tiny_artifact_writes_headline_json_and_png(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve_load.json"
    proc = _run(tiny_artifact, "8:2:1:int8", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline.keys() >= HEADLINE_KEYS
    assert headline["errors"] == 0
    assert headline["model_users_per_s_batch32"] > 0
    assert headline["best_config"] == "8:2:1:int8" and headline["best_precision"] == "int8"
    assert headline["model_users_per_s_batch32_same_precision"] == headline["model_users_per_s_batch32_int8"]
    assert 0.0 < headline["top20_overlap_int8_vs_fp32"] <= 1.0

    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["headline"] == headline
    assert payload["artifact"]["model"] == "ld4mrec" and payload["artifact"]["hidden_dim"] == 64
    (config,) = payload["configs"]
    assert config["precision"] == "int8" and config["settings"]["LD4MREC_PRECISION"] == "int8"
    assert {(r["precision"], r["batch"]) for r in payload["model_limit"]} == {
        (p, b) for p in ("fp32", "int8") for b in (1, 32)
    }
    by_precision = payload["headline_model"]["by_precision"]
    rps = config["max_rps_p99_under_50ms"] or 0.0
    int8_b32, fp32_b32 = (
        by_precision["int8"]["batch32"]["users_per_s"],
        by_precision["fp32"]["batch32"]["users_per_s"],
    )
    assert config["ratio_service_to_model_same_precision"] == round(rps / int8_b32, 3)
    assert config["ratio_service_to_model"] == round(rps / fp32_b32, 3)
    assert payload["precision_vs_fp32"]["users"] == 64
    assert "sparse_int8" in payload["precision_vs_fp32"]
    (step,) = config["open_loop"]
    assert step["offered_rps"] == 20
    assert step["sent"] == step["ok"] + step["errors"] == 10
    assert set(step["per_kind"]) <= {"get", "write", "cold"}
    assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"] <= step["max_ms"]
    (closed,) = payload["closed_loop"]
    assert closed["clients"] == 2 and closed["ok"] > 0
    assert step["server"]["forward_passes"] >= 1  # the service's /metrics were read around the step
    assert step["cpu_ms_per_request"]["loadgen"] > 0  # the load-generator process reports its CPU
    assert step["cpu_ms_per_request"]["service"] > 0
    for key in ("cpu_model", "cpus_usable", "memory_gib", "torch", "loadavg_1_5_15_at_start"):
        assert key in payload["machine"]
    assert payload["command"].startswith("python ")
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(payload["pids"]) == 2  # redis-server and the service: both stopped by the script
    for pid in payload["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.skipif(NO_REDIS, reason="redis-server is not installed")
def test_another_model_is_served_and_measured(tiny_ease_artifact: Path, tmp_path: Path) -> None:
    """EASE behind the same service: its model limit is its own score path; int8 (not an EASE precision) is
    refused before anything starts."""
    out = tmp_path / "serve_load.json"
    proc = _run(tiny_ease_artifact, "8:2:1", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["errors"] == 0 and headline["best_precision"] == "fp32"
    assert headline["model_users_per_s_batch32"] > 0
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["artifact"]["model"] == "ease" and payload["artifact"]["hidden_dim"] is None
    assert {(r["precision"], r["batch"]) for r in payload["model_limit"]} == {("fp32", 1), ("fp32", 32)}
    assert payload["precision_vs_fp32"] is None

    refused = _run(tiny_ease_artifact, "8:2:1:int8", tmp_path / "refused.json")
    assert refused.returncode != 0 and "model ease serves precision fp32, not int8" in refused.stderr
    assert not (tmp_path / "refused.json").exists()
