"""Smoke test of bench/catalogue_scale.py at two tiny catalogues: every model and precision gets a row
with training, artifact and serving figures, EASE's refusal above its limit and LD4MRec's width rule under a
small budget are reported, the plot is written and the last stdout line is the JSON headline. Speed is not
asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "catalogue_scale.py"


def test_two_tiny_catalogues(tmp_path: Path) -> None:
    out = tmp_path / "catalogue_scale.json"
    args = [
        *("--sizes", "1500,4000", "--users", "200", "--models", "ld4mrec,ease"),
        *("--steps", "1", "--reps32", "5", "--reps1", "10", "--budget-s", "1"),
        *("--set", "ease.max_items=3000", "--set", "ld4mrec.svd_rank=16", "--budget-gb", "0.72"),
        *("--out", str(out)),
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["bench"] == "catalogue_scale" and headline["users"] == 200

    payload = json.loads(out.read_text())
    rows = {(r["model"], r["precision"], r["items"]): r for r in payload["rows"]}
    assert set(rows) == {
        ("ld4mrec", "fp32", 1500),
        ("ld4mrec", "bf16", 1500),
        ("ld4mrec", "int8", 1500),
        ("ld4mrec", "fp32", 4000),
        ("ld4mrec", "bf16", 4000),
        ("ld4mrec", "int8", 4000),
        ("ease", "fp32", 1500),
        ("ease", "fp32", 4000),
    }
    assert "above the limit of 3000 items" in rows[("ease", "fp32", 4000)]["train"]["refused"]
    assert "serve" not in rows[("ease", "fp32", 4000)]
    assert rows[("ease", "fp32", 1500)]["train"]["fit_s"] > 0
    big = rows[("ld4mrec", "fp32", 4000)]["train"]
    assert "rule" in big and big["config"]["hidden_dim"] < 1000  # the defaults do not fit 0.72 GiB
    assert big["estimate_gib"] <= 0.72 < big["estimate_gib_defaults"]
    for (model, precision, items), row in rows.items():
        if "refused" in row["train"]:
            continue
        train, serve = row["train"], row["serve"]
        assert train["train_peak_rss_gib"] > 0 and train["artifact_gib"] > 0, (model, items)
        assert serve["rss_gib"] > 0 and serve["rss_anon_gib"] > 0
        assert serve["users_per_s_batch32"] > 0
        assert 0 < serve["batch1_p50_ms"] <= serve["batch1_p99_ms"]
        assert headline[f"{model}_{precision}_{items}"]["status"] == "ok"
    assert rows[("ld4mrec", "fp32", 1500)]["train"]["s_per_epoch"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    for key in ("cpu_model", "memory_gib", "torch"):
        assert key in payload["machine"]
