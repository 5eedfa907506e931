"""Smoke test of bench/invalid_flood.py (short phases on the tiny artifact): every invalid request is
answered 4xx, no valid request fails, and the service scored exactly one row per valid request (the
invalid ones never reached the batcher). The latency figures are recorded, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "invalid_flood.py"


def test_invalid_flood_never_reaches_the_model(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    args = ["--artifact", str(tiny_artifact), "--phase-s", "2", "--workers", "4", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["valid_errors"] == 0 and headline["invalid_non_4xx"] == 0
    assert headline["rows_scored"] == headline["valid_requests"] > 0
    assert headline["invalid_per_s"] > 0
    statuses = set(json.loads(out.read_text())["invalid_status"])
    assert {"401", "403", "404", "422"} <= statuses
    assert statuses & {"413", "413 (closed during upload)"}
