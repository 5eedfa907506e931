"""Smoke test of bench/serve_peers.py: one very short run on the tiny artifact with our service and every
peer whose package is installed (``.[bench-peers]``; CI installs ``.[dev]`` only, so there it runs ours
alone and checks that the peers are reported as skipped). Checks the output contract: the last stdout line
is a JSON object with ``ratio_to_best_peer`` and the per-server figures, every server answers the same
top-20 as ``model.api``, the JSON file is written and every process a server started is gone. Also the
pure parts: the common rate, the per-server figures and the process-tree CPU. Speed is not asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from _proctree import process_tree, tree_cpu_seconds  # noqa: E402
from serve_peers import common_rate, server_figures  # noqa: E402

SCRIPT = BENCH / "serve_peers.py"
PEERS = {"ray": "ray.serve", "litserve": "litserve"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


INSTALLED = [name for name, module in PEERS.items() if _installed(module)]
FIGURES = {
    "max_rps_p99_under_50ms",
    "max_rps_p50_under_50ms",
    "p50_ms_at_common_rate",
    "p99_ms_at_common_rate",
    "errors_at_common_rate",
    "cpu_cores_at_common_rate",
    "cpu_cores_at_max",
    "errors",
    "idle_cpu_cores",
    "top20_overlap_vs_model_api",
}
SHORT = [
    "--quick",
    "--rates",
    "20",
    "--refine",
    "0",
    "--step-s",
    "0.5",
    "--min-requests",
    "1",
    "--warmup-s",
    "0.3",
    "--idle-s",
    "0.3",
    "--check-users",
    "8",
]


def test_short_run_with_every_installed_server(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve_peers.json"
    servers = ["ours", *PEERS]  # the missing peers are skipped and said so
    store = "redis" if shutil.which("redis-server") else "memory"  # redis: the default
    args = [*SHORT, "--artifact", str(tiny_artifact), "--servers", ",".join(servers), "--out", str(out)]
    args += ["--ours-store", store]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    ran = ["ours", *INSTALLED]
    assert list(headline["servers"]) == ran
    assert set(headline["skipped"]) == set(PEERS) - set(INSTALLED)
    for name in ran:
        figures = headline["servers"][name]
        assert figures.keys() >= FIGURES, name
        assert figures["top20_overlap_vs_model_api"] == 1.0, name  # the same answers, fp32
        assert figures["errors"] == 0, name
        assert figures["cpu_cores_at_common_rate"] > 0, name
    assert headline["common_rate"] == 20
    if INSTALLED:
        best = headline["best_peer"]
        assert best in INSTALLED
        peer_rps = headline["servers"][best]["max_rps_p99_under_50ms"]
        ours_rps = headline["servers"]["ours"]["max_rps_p99_under_50ms"]
        assert peer_rps == max(headline["servers"][p]["max_rps_p99_under_50ms"] for p in INSTALLED)
        assert headline["ratio_to_best_peer"] == (round(ours_rps / peer_rps, 3) if peer_rps else None)
    else:
        assert headline["ratio_to_best_peer"] is None and headline["best_peer"] is None

    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["headline"] == headline
    assert [r["server"] for r in payload["servers"]] == ran
    assert payload["servers"][0]["settings"]["store"] == store
    for record in payload["servers"]:
        (step,) = record["open_loop"]
        assert step["offered_rps"] == 20 and step["sent"] == step["ok"] == 10
        assert step["cpu_ms_per_request"]["loadgen"] > 0
        assert record["top20_vs_model_api"]["identical_share"] == 1.0
    deadline = time.monotonic() + 30
    pids = [pid for record in payload["servers"] for pid in record["pids"]]
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _step(rate: float, p99: float, errors: int = 0, refine: bool = False) -> dict[str, Any]:
    return {
        "offered_rps": rate,
        "achieved_rps": rate * 0.99,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": errors,
        "cpu_cores": {"server": rate / 100, "loadgen": 0.1},
        "cpu_ms_per_request": {"server": 10.0, "loadgen": 1.0},
        **({"refine": True} if refine else {}),
    }


def test_common_rate_and_figures() -> None:
    ours = {"server": "ours", "open_loop": [_step(100, 10), _step(200, 20), _step(400, 40), _step(800, 90)]}
    peer = {
        "server": "ray",
        "open_loop": [_step(100, 12), _step(200, 60), _step(141.4, 30, refine=True)],
    }
    rates = [100, 200, 400, 800]
    assert common_rate([ours, peer], rates) == 100  # the highest rate both passed (refine steps aside)
    assert common_rate([peer, {"server": "x", "open_loop": [_step(100, 99)]}], rates) == 100  # none: lowest
    figures = server_figures(peer, 100)
    assert figures["max_rps_p99_under_50ms"] == pytest.approx(
        141.4 * 0.99
    )  # a refine step counts for the max
    assert figures["p99_ms_at_common_rate"] == 12 and figures["errors"] == 0
    assert figures["max_rps_p50_under_50ms"] == pytest.approx(200 * 0.99)  # p99 60 ms, p50 30 ms: keeps up
    failing = server_figures({"server": "y", "open_loop": [_step(100, 10, errors=3)]}, 100)
    assert failing["max_rps_p99_under_50ms"] == 0.0 and failing["errors"] == 3


def test_process_tree_cpu_counts_children() -> None:
    """A parent that starts a busy child: the tree has both, and its CPU grows with the child's work."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time\\nt=time.time()\\n"
        "while time.time()-t<3: pass'])\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(process_tree(parent.pid)) == 2
        before = tree_cpu_seconds(parent.pid)
        time.sleep(1.0)
        assert tree_cpu_seconds(parent.pid) > before + 0.1  # the child's busy loop (contended cores: > 10 %)
    finally:
        parent.kill()
        parent.wait()
