"""``ld4mrec-serve`` / ``python -m service`` in a subprocess: serves over real HTTP; refuses a missing or
corrupt artifact (exit 1, stderr names the file); SIGTERM drains in-flight requests and the batcher,
closes the Redis pool and exits 0; SIGHUP reloads the configured artifact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main
from tests.service.helpers import RedisServer, ServiceProcess, copy_artifact, free_port, http_json


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("server_args", "protocol", "loop"),
    [
        ([], "HttpToolsProtocol", "uvloop"),  # uvicorn[standard] is a dependency: the defaults use it
        (["--http", "h11", "--loop", "asyncio"], "H11Protocol", "asyncio"),
    ],
)
def test_serve_answers_over_http_and_stops_cleanly(
    tiny_artifact: Path, tmp_path: Path, server_args: list[str], protocol: str, loop: str
) -> None:
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
            *server_args,
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
    text = (tmp_path / "serve.log").read_text()
    assert f"HTTP/1.1 protocol: {protocol}" in text and f"event loop: {loop}" in text


def test_serve_refuses_a_missing_artifact(tmp_path: Path, capsys: Any) -> None:
    assert main(["--artifact", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "ld4mrec-train --data demo" in err


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ({"flip_byte_of": "model.cnet.out.weight.npy"}, "model.cnet.out.weight.npy"),
        ({"remove": "model.z_in.npy"}, "model.z_in.npy"),
    ],
)
def test_serve_refuses_to_start_on_a_corrupt_artifact(
    tiny_artifact: Path, tmp_path: Path, damage: dict[str, str], named: str
) -> None:
    broken = copy_artifact(tiny_artifact, tmp_path / "broken", **damage)
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--artifact", str(broken), "--port", str(free_port())],
        env={k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")} | {"LD4MREC_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    refusal = [line for line in proc.stderr.splitlines() if line.startswith("ld4mrec-serve: error:")]
    assert len(refusal) == 1 and named in refusal[0] and "artifact refused" in refusal[0], proc.stderr


def test_a_port_in_use_is_the_first_and_only_error(tiny_artifact: Path) -> None:
    """It used to log the application's start-up ("startup complete") before the bind error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "service", "--artifact", str(tiny_artifact), "--port", str(port)],
            env={k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")}
            | {"LD4MREC_DEVICE": "cpu"},
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ld4mrec-serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]


def client_names(server: RedisServer) -> list[str]:
    """Names of the connections redis-server has open (the service names its pool 'ld4mrec-service')."""
    with server.client() as client:
        return [str(c.get("name", "")) for c in client.client_list()]


def test_sigterm_drains_in_flight_requests_then_exits_0(
    tiny_artifact: Path, tmp_path: Path, own_redis: RedisServer
) -> None:
    # every request waits up to 1 s in the batcher for company: slow enough to be caught in flight
    service = ServiceProcess(
        tiny_artifact,
        tmp_path / "serve.log",
        {"LD4MREC_REDIS_URL": own_redis.url, "LD4MREC_MAX_WAIT_MS": "1000", "LD4MREC_MAX_BATCH": "256"},
    ).start()
    try:
        assert http_json(f"{service.base}/users/0/interactions", "POST", {"item_ids": ["1"]})[0] == 200
        assert "ld4mrec-service" in client_names(own_redis)  # the pool is connected

        async def scenario() -> tuple[list[int], str]:
            async with httpx.AsyncClient(base_url=service.base, timeout=30) as client:
                users = [str(u) for u in range(20)]
                requests = [asyncio.ensure_future(client.get(f"/recommend/{u}")) for u in users]
                requests.append(asyncio.ensure_future(client.post("/recommend", json={"history": ["3"]})))
                deadline = time.monotonic() + 10
                while True:  # all 21 are in flight (the metrics request itself is the 22nd)
                    metrics = (await client.get("/metrics")).text
                    if "ld4mrec_http_requests_in_flight 22.0" in metrics:
                        break
                    assert time.monotonic() < deadline, "the requests never got in flight"
                    await asyncio.sleep(0.02)
                service.signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                try:  # a new connection is refused while the in-flight requests are finishing
                    async with httpx.AsyncClient(timeout=2) as fresh:
                        await fresh.get(f"{service.base}/healthz")
                    refused = "accepted"
                except httpx.ConnectError:
                    refused = "refused"
                responses = await asyncio.gather(*requests)
                return [r.status_code for r in responses], refused

        statuses, new_connection = asyncio.run(scenario())
        assert new_connection == "refused"
        assert statuses == [200] * 21  # every in-flight request completed
        assert service.wait(timeout=30) == 0
    finally:
        service.stop()
    log = service.log
    assert "redis connection pool closed" in log and "shutdown complete" in log, log[-3000:]
    assert "ld4mrec-service" not in client_names(own_redis)


def test_sighup_reloads_the_configured_artifact(tiny_artifact: Path, tmp_path: Path) -> None:
    v1 = copy_artifact(tiny_artifact, tmp_path / "v1")
    v2 = copy_artifact(tiny_artifact, tmp_path / "v2", model_version="tiny-v2")
    current = tmp_path / "current"
    current.symlink_to(v1)
    service = ServiceProcess(current, tmp_path / "serve.log").start()
    try:
        old = http_json(f"{service.base}/recommend/0")[1]["model_version"]
        assert old != "tiny-v2"
        flipped = tmp_path / "current.new"  # flip the symlink atomically, as a deploy would
        flipped.symlink_to(v2)
        flipped.replace(current)
        service.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while http_json(f"{service.base}/recommend/0")[1]["model_version"] != "tiny-v2":
            assert service.proc is not None and service.proc.poll() is None, service.log[-3000:]
            assert time.monotonic() < deadline, service.log[-3000:]
            time.sleep(0.05)
        status, body = http_json(f"{service.base}/readyz")
        assert status == 200 and body["model_version"] == "tiny-v2"
    finally:
        service.stop()
    assert f"SIGHUP reload: {old} -> tiny-v2" in service.log
