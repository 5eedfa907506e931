"""Helpers of the service tests: a throw-away redis-server, app start-up, and the offline reference
ranking computed straight from the model (no service code)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import scipy.sparse as sp
import torch
import uvicorn
from fastapi.testclient import TestClient

from model.artifact import Artifact
from model.base import Recommender, UserBatch
from model.ranking import mask_items, top_k
from service.app import create_app
from service.http_server import HTTPChoice, uvicorn_config
from service.settings import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on loopback that a test may stop and restart.

    No persistence by default; ``durable=True`` keeps an append-only file fsynced on every write in
    ``workdir``, so a killed and restarted server still has every write it acknowledged.
    """

    def __init__(self, workdir: Path, port: int | None = None, durable: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed; the service tests need it (apt-get install redis-server)"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.workdir),
                *(
                    ("--appendonly", "yes", "--appendfsync", "always")
                    if self.durable
                    else ("--appendonly", "no")
                ),
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """SIGKILL: the server gets no chance to save or say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        if response.json().get("status") == "failed" or time.monotonic() > deadline:
            raise AssertionError(f"service not ready: {response.json()}")
        time.sleep(0.02)


@contextlib.contextmanager
def running_client(settings: Settings, **client_kwargs: Any) -> Iterator[TestClient]:
    """A TestClient with the lifespan on, once the model is loaded (a context manager)."""
    with TestClient(create_app(settings), **client_kwargs) as client:
        wait_ready(client)
        yield client


def copy_artifact(
    src: Path,
    dst: Path,
    *,
    model_version: str | None = None,
    flip_byte_of: str | None = None,
    remove: str | None = None,
) -> Path:
    """A copy of an artifact, optionally with another ``model_version`` in its manifest, one byte of a
    file flipped (after its header) or a file removed."""
    shutil.copytree(src, dst)
    if model_version is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["model_version"] = model_version
        (dst / "manifest.json").write_text(json.dumps(manifest))
    if flip_byte_of is not None:
        data = bytearray((dst / flip_byte_of).read_bytes())
        data[len(data) // 2] ^= 0x01
        (dst / flip_byte_of).write_bytes(bytes(data))
    if remove is not None:
        (dst / remove).unlink()
    return dst


@contextlib.contextmanager
def serve_in_thread(settings: Settings, http: HTTPChoice = "auto") -> Iterator[str]:
    """The app under a real uvicorn server in a thread of this process (loopback, free port, the
    connection limits of ``settings`` as ``ld4mrec-serve`` applies them), once it is ready; yields the
    base URL."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn_config(app, settings, port=port, http=http, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, lambda: thread.is_alive(), 60)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """(status, JSON body) of one request (urllib: no client pool)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_http_ready(base: str, alive: Any, timeout_s: float) -> None:
    """Poll ``/readyz`` until 200; fail when ``alive()`` turns false or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert alive(), "the server stopped before it was ready"
        try:
            status, body = http_json(f"{base}/readyz", timeout=2)
            if status == 200:
                return
            assert body.get("status") != "failed", body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


class ServiceProcess:
    """``python -m service`` in a subprocess on a free loopback port, its output in ``log_path``."""

    def __init__(self, artifact: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")}
        pinned = {"LD4MREC_DEVICE": "cpu", "LD4MREC_TORCH_THREADS": "1", "LD4MREC_WORKERS": "1"}
        self.env = clean | pinned | {"LD4MREC_PRECISION": "fp32"} | (env or {})
        self.args = [
            sys.executable,
            "-m",
            "service",
            "--artifact",
            str(artifact),
            "--port",
            str(self.port),
            "--no-access-log",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ServiceProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_http_ready(self.base, lambda: self.proc is not None and self.proc.poll() is None, 90)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- the offline reference: the model alone, as the evaluator uses it -------------------------------------
class Offline:
    """Top-k computed without any service code, from the artifact and ``model.score``."""

    def __init__(self, art: Artifact) -> None:
        self.art = art
        self.model: Recommender = art.model
        self.item_index = {iid: i for i, iid in enumerate(art.item_ids)}

    def user_index(self, user_id: str) -> int:
        return self.art.user_ids.index(user_id)

    def history_ids(self, user_id: str) -> list[str]:
        u = self.user_index(user_id)
        row = self.art.train_histories[u]
        return [self.art.item_ids[i] for i in row.indices]

    def top_k(
        self, histories: list[list[str]], user_index: list[int], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) for each history (training items of that history masked)."""
        rows = [sorted({self.item_index[i] for i in h}) for h in histories]
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        indices = np.asarray([i for r in rows for i in r], dtype=np.int64)
        csr = sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), self.art.n_items)
        )
        states = self.model.fold_in(csr)
        batch = UserBatch.from_csr(csr, np.asarray(user_index), states, torch.device("cpu"))
        with torch.inference_mode():
            scores = self.model.score(batch)
            mask_rows = torch.from_numpy(np.repeat(np.arange(len(rows)), np.diff(indptr)))
            mask_items(scores, mask_rows, torch.from_numpy(indices))
            values, ids = top_k(scores, k, stable=True)
        return [
            [(self.art.item_ids[i], float(v)) for i, v in zip(id_row.tolist(), val_row.tolist(), strict=True)]
            for id_row, val_row in zip(ids, values, strict=True)
        ]

    def for_users(self, user_ids: list[str], k: int, mask: bool = True) -> list[list[tuple[str, float]]]:
        """Top-k of training users with their training histories and stored signals (as the evaluator)."""
        users = np.asarray([self.user_index(u) for u in user_ids])
        csr = self.art.train_histories[users]
        batch = UserBatch.from_csr(csr, users, self.art.user_states[users], torch.device("cpu"))
        with torch.inference_mode():
            scores = self.model.score(batch)
            if mask:
                mask_rows = torch.from_numpy(np.repeat(np.arange(len(users)), np.diff(csr.indptr)))
                mask_items(scores, mask_rows, torch.from_numpy(csr.indices.astype(np.int64)))
            values, ids = top_k(scores, k, stable=True)
        return [
            [(self.art.item_ids[i], float(v)) for i, v in zip(id_row.tolist(), val_row.tolist(), strict=True)]
            for id_row, val_row in zip(ids, values, strict=True)
        ]


def assert_same_ranking(items: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    """The service's items equal the offline top-k: same ids in the same order, scores equal to float32."""
    assert [it["item_id"] for it in items] == [i for i, _ in expected]
    assert [it["rank"] for it in items] == list(range(1, len(expected) + 1))
    np.testing.assert_allclose([it["score"] for it in items], [s for _, s in expected], rtol=1e-5, atol=1e-6)
