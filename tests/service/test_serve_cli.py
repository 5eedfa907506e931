"""``ld4mrec-serve`` / ``python -m service``: serves an artifact over real HTTP; refuses a missing one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from service.cli import main
from tests.service.helpers import free_port


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_over_http_and_stops_cleanly(tiny_artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")} | {"LD4MREC_DEVICE": "cpu"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--artifact",
            str(tiny_artifact),
            "--port",
            str(port),
            "--no-access-log",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status, body = get_json(f"{base}/readyz")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        assert body["status"] == "ready" and body["history_store"] == "memory"
        status, body = get_json(f"{base}/recommend/0?k=5")
        assert status == 200 and len(body["items"]) == 5 and body["history_source"] == "artifact"
        status, body = get_json(f"{base}/recommend/nobody")
        assert status == 404 and "nobody" in body["detail"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    assert code == 0


def test_serve_refuses_a_missing_artifact(tmp_path: Path, capsys: Any) -> None:
    assert main(["--artifact", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "ld4mrec-train --data demo" in err
