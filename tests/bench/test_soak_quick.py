"""bench/soak.py --quick on the tiny artifact: one minute of mixed reads, writes, cold starts and batch
calls at a fixed rate against a real service with Redis. Zero errors, resident memory growth under 5 %
after the warm-up, a graceful exit; the output contract (last stdout line = the JSON headline, the JSON
file). Latency is recorded, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_quick_soak_has_no_errors_and_no_memory_growth(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--artifact", str(tiny_artifact), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["errors"] == 0
    assert headline["answered"] == headline["requests"] >= 0.95 * 60 * headline["rate_per_s"]
    assert headline["rss_growth_pct"] < 5.0, headline
    assert headline["service_exit_code"] == 0

    payload = json.loads(out.read_text())
    assert payload["headline"] == headline
    assert {k for k, v in payload["latency_by_kind"].items() if v["n"] > 0} == {
        "read",
        "write",
        "cold_start",
        "batch",
    }
    assert len(payload["rss_samples_s_kib"]) >= 50  # one sample a second
    assert payload["command"].startswith("python bench/soak.py --quick")
