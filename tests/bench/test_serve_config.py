"""``--config`` of bench/serve_load.py (``_serve_stack.ServiceConfig``): the 3-field form serves fp32, the
optional 4th field is the precision passed to the service as ``LD4MREC_PRECISION``; and which cached
artifacts the bench scripts reuse (``_serve_stack.is_current_artifact``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _serve_stack import ServiceConfig, cpu_seconds, is_current_artifact, process_tree  # noqa: E402


def test_three_fields_serve_fp32() -> None:
    cfg = ServiceConfig.parse("64:2:1")
    assert cfg == ServiceConfig(64, 2.0, 1, "fp32")
    assert cfg.spec == "64:2:1:fp32"
    assert cfg.env() == {
        "LD4MREC_MAX_BATCH": "64",
        "LD4MREC_MAX_WAIT_MS": "2.0",
        "LD4MREC_TORCH_THREADS": "1",
        "LD4MREC_PRECISION": "fp32",
    }
    assert ServiceConfig.parse("64:2:1:fp32") == cfg


def test_fourth_field_is_the_precision() -> None:
    cfg = ServiceConfig.parse("32:0.5:0:int8")
    assert (cfg.max_batch, cfg.max_wait_ms, cfg.torch_threads, cfg.precision) == (32, 0.5, 0, "int8")
    assert cfg.env()["LD4MREC_PRECISION"] == "int8"
    assert cfg.spec == "32:0.5:0:int8"
    assert "precision=int8" in cfg.label
    assert ServiceConfig.parse(cfg.spec) == cfg


@pytest.mark.parametrize("text", ["64:2", "64:2:1:int8:x", "64:2:1:fp16", "a:2:1", "64:2:1:"])
def test_malformed_configs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="MAX_BATCH:MAX_WAIT_MS:TORCH_THREADS"):
        ServiceConfig.parse(text)


def test_only_artifacts_of_the_current_format_are_reused(tiny_artifact: Path, tmp_path: Path) -> None:
    assert is_current_artifact(tiny_artifact)
    assert not is_current_artifact(tmp_path)  # no manifest
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1}), encoding="utf-8")
    assert not is_current_artifact(old)
    (old / "manifest.json").write_text("{not json", encoding="utf-8")
    assert not is_current_artifact(old)


def test_the_cpu_of_a_service_counts_its_worker_processes() -> None:
    """A service with workers is a supervisor and its children: both are found and their CPU summed."""
    import subprocess
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {burn!r}])\ntime.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while len(process_tree(parent.pid)) < 2 or cpu_seconds(parent.pid) < 0.3:
            assert time.monotonic() < deadline, process_tree(parent.pid)
            time.sleep(0.05)
        child = process_tree(parent.pid)[1]
        assert cpu_seconds(parent.pid) >= cpu_seconds(child) >= 0.25
    finally:
        for pid in process_tree(parent.pid)[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()
