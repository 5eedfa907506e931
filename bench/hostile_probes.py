"""Hostile and careless clients against a live service (API key on, real Redis on loopback).

Starts redis-server and the service (``python -m service``, like ``bench/soak.py``) unless ``--base`` names
a running one, then runs every probe: the service-side cases of issue 14 (non-finite numbers and lone
surrogates in bodies, a 150,000-element body while other users are served, a 1 MiB header, slowloris
connections, slow bodies, clients that disconnect before scoring, a Redis key of another type and an
undecodable stored history) and the cases found beyond them (wrong content types, odd ids and queries,
chunked bodies, request smuggling, slow readers, concurrent writes to one user, ...). Each probe prints
``probe | expected | got | pass``; the last line is one JSON object. Exit code 0 when every probe passed.

    python bench/hostile_probes.py                        # the demo artifact; own Redis and service
    python bench/hostile_probes.py --artifact DIR --quick # shorter phases, 1 s connection timeouts
    python bench/hostile_probes.py --base http://127.0.0.1:8000 --artifact DIR --api-key KEY \\
        --redis-url redis://127.0.0.1:6379/0 --redis-prefix ld4mrec:     # a running service

Against a running service, ``--header-timeout-s`` / ``--body-timeout-s`` / ``--send-timeout-s`` /
``--max-header-bytes`` must state its settings (defaults: the service's); the service started here gets
them as ``LD4MREC_*`` (2 s timeouts by default, so that a run takes about a minute). The probes share the
machine with the service: latencies include the probes' own CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import torch

from _machine import display_path, loadavg, machine_info, write_json
from soak import REPO, ServiceStack, demo_artifact

LATENCY_BOUND_S = 0.5  # other users' requests during an attack: answered within this (--latency-bound-s)
KEY = "probe-key"


@dataclass
class Target:
    """The service under test and what the probes need to know about it."""

    base: str
    api_key: str
    redis_url: str | None
    redis_prefix: str
    users: list[str]
    items: list[str]
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    quick: bool
    latency_bound_s: float = LATENCY_BOUND_S
    log: Callable[[], str] | None = None
    five_xx_before: dict[str, float] = field(default_factory=dict)  # e.g. /readyz 503s while loading

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def key(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def metric(self, series: str) -> float:
        """One series of ``/metrics`` (0 when absent)."""
        for line in httpx.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        return 0.0

    def five_xx(self) -> dict[str, float]:
        """``ld4mrec_http_requests_total`` series with status class 5xx (labels -> count)."""
        series = {}
        for line in httpx.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith("ld4mrec_http_requests_total{") and 'status_class="5xx"' in line:
                labels, value = line.rsplit(" ", 1)
                series[labels.removeprefix("ld4mrec_http_requests_total")] = float(value)
        return series


@dataclass
class Outcome:
    probe: str
    expected: str
    got: str
    passed: bool
    seconds: float = 0.0


# -- helpers ------------------------------------------------------------------------------------------------
def raw_exchange(
    target: Target, payload: bytes, *, wait_s: float = 10.0, rcvbuf: int | None = None
) -> tuple[bytes, float, str]:
    """Send ``payload`` on a fresh connection and read until the server closes it (or ``wait_s``).

    Returns (what was received, seconds until closed, how it ended: closed / reset / open)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(wait_s)
    started = time.monotonic()
    received, end = b"", "open"
    try:
        sock.connect(target.address)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)  # refused while still sending: what came back is read below
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                end = "closed"
                break
            received += chunk
    except TimeoutError:
        end = "open"
    except ConnectionResetError:
        end = "reset"
    finally:
        sock.close()
    return received, time.monotonic() - started, end


def status_of(raw: bytes) -> int | None:
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


class LatencyWatch:
    """Other users' ``GET /recommend/{user}``, back to back on one keep-alive connection, in a thread."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-watch", daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        with httpx.Client(base_url=self.target.base, timeout=10) as client:
            while not self._stop.is_set():
                user = rng.choice(self.target.users)
                started = time.perf_counter()
                try:
                    response = client.get(f"/recommend/{user}", params={"k": 10})
                    if response.status_code != 200:
                        self.errors.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    self.errors.append(type(exc).__name__)
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    def __enter__(self) -> LatencyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def summary(self) -> str:
        worst = max(self.latencies, default=float("nan"))
        return f"other users: {len(self.latencies)} answers, slowest {worst:.3f} s, errors {len(self.errors)}"

    def ok(self) -> bool:
        return bool(self.latencies) and not self.errors and max(self.latencies) < self.target.latency_bound_s


# -- the probes --------------------------------------------------------------------------------------------
Probe = Callable[[Target], tuple[str, bool]]
PROBES: list[tuple[str, str, str, Probe]] = []  # (name, issue item, expected, probe)


def probe(name: str, item: str, expected: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES.append((name, item, expected, fn))
        return fn

    return register


def post_raw(
    target: Target, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = dict(target.key) | ({"content-type": content_type} if content_type else {})
    return httpx.post(f"{target.base}{path}", content=body, headers=headers, timeout=30)


def expect_status(response: httpx.Response, status: int, max_bytes: int = 4096) -> tuple[str, bool]:
    got = f"{response.status_code}, {len(response.content)} B"
    return got, response.status_code == status and len(response.content) < max_bytes


for _name, _body in [
    ("json NaN", b'{"history": [NaN]}'),
    ("json Infinity", b'{"history": ["1"], "k": Infinity}'),
    ("json 1e400", b'{"history": ["1"], "k": 1e400}'),
    ("json lone surrogate", b'{"history": ["\\ud800"]}'),
]:

    def _json_probe(target: Target, body: bytes = _body) -> tuple[str, bool]:
        return expect_status(post_raw(target, "/recommend", body), 422)

    probe(_name, "14.1", "422, short body")(_json_probe)


@probe("150,000-element body", "14.2", "422 < 1 KB each; other users < 0.5 s")
def huge_list(target: Target) -> tuple[str, bool]:
    body = json.dumps({"history": [0] * 150_000}).encode()
    duration = 2.0 if target.quick else 6.0
    statuses: list[int] = []
    sizes: list[int] = []
    slowest = 0.0

    def attack() -> None:
        nonlocal slowest
        with httpx.Client(base_url=target.base, timeout=30) as client:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = client.post(
                    "/recommend", content=body, headers={"content-type": "application/json"}
                )
                slowest = max(slowest, time.perf_counter() - started)
                statuses.append(response.status_code)
                sizes.append(len(response.content))

    with LatencyWatch(target) as watch:
        attackers = [threading.Thread(target=attack) for _ in range(2)]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(timeout=duration + 60)
    got = (
        f"{len(statuses)} x {sorted(set(statuses))}, largest {max(sizes, default=0)} B, slowest "
        f"{slowest:.3f} s; {watch.summary()}"
    )
    ok = bool(statuses) and set(statuses) == {422} and max(sizes) < 1024 and watch.ok()
    return got, ok


@probe("1 MiB header", "14.3", "431, connection closed")
def big_header(target: Target) -> tuple[str, bool]:
    payload = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    received, _, end = raw_exchange(target, payload)
    return f"{status_of(received)}, {end}", status_of(received) == 431 and end in ("closed", "reset")


def _slow_head(target: Target, payload: bytes) -> tuple[str, bool]:
    limit = target.header_timeout_s
    received, seconds, end = raw_exchange(target, payload, wait_s=limit + 5)
    got = f"{status_of(received)}, {end} after {seconds:.1f} s"
    return got, status_of(received) == 408 and end == "closed" and seconds < limit + 2


@probe("slowloris: partial headers, then nothing", "14.4", "408, closed after HEADER_TIMEOUT_S")
def slowloris(target: Target) -> tuple[str, bool]:
    return _slow_head(target, b"GET /healthz HTTP/1.1\r\nHost: probe\r\nX-Slow: 1\r\n")


@probe("idle connection (nothing sent)", "beyond", "408, closed after HEADER_TIMEOUT_S")
def idle_connection(target: Target) -> tuple[str, bool]:
    return _slow_head(target, b"")


@probe("slow body (10 of 100 bytes)", "14.4", "408, closed after BODY_TIMEOUT_S")
def slow_body(target: Target) -> tuple[str, bool]:
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: probe\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n"
    )
    limit = target.body_timeout_s
    received, seconds, end = raw_exchange(target, head + b'{"history"', wait_s=limit + 5)
    got = f"{status_of(received)}, {end} after {seconds:.1f} s"
    return got, status_of(received) == 408 and end == "closed" and seconds < limit + 2


@probe("200 slowloris connections at once", "14.4", "all closed; other users < 0.5 s")
def many_slowloris(target: Target) -> tuple[str, bool]:
    count = 50 if target.quick else 200
    socks: list[socket.socket] = []
    with LatencyWatch(target) as watch:
        for _ in range(count):
            sock = socket.create_connection(target.address, timeout=target.header_timeout_s + 5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n")
            socks.append(sock)
        closed = 0
        deadline = time.monotonic() + target.header_timeout_s + 5  # one deadline for them all
        for sock in socks:
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                while sock.recv(65536):
                    pass
                closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
            finally:
                sock.close()
    got = f"{closed}/{count} closed by the server; {watch.summary()}"
    return got, closed == count and watch.ok()


@probe("clients that disconnect before scoring", "14.5", "dropped, not scored")
def disconnects(target: Target) -> tuple[str, bool]:
    count = 40
    rows, dropped = (
        target.metric(s)
        for s in ("ld4mrec_batch_queue_wait_seconds_count", "ld4mrec_client_disconnects_total")
    )
    for i in range(count):
        sock = socket.create_connection(target.address, timeout=5)
        sock.sendall(
            f"GET /recommend/{target.users[i % len(target.users)]} HTTP/1.1\r\nHost: probe\r\n\r\n".encode()
        )
        sock.close()  # gone before the answer
    time.sleep(1.0)
    scored = target.metric("ld4mrec_batch_queue_wait_seconds_count") - rows
    gone = target.metric("ld4mrec_client_disconnects_total") - dropped
    got = f"{count} requests: {gone:.0f} dropped, {scored:.0f} scored"
    return got, gone >= count // 2 and scored < count


def _redis(target: Target) -> redis.Redis | None:
    return redis.Redis.from_url(target.redis_url, socket_timeout=2) if target.redis_url else None


@probe("Redis key of another type", "14.6", "409 for that user; others 200 at once")
def wrong_type(target: Target) -> tuple[str, bool]:
    client = _redis(target)
    if client is None:
        return "no --redis-url", False
    victim = f"probe-wrongtype-{uuid.uuid4().hex[:8]}"
    client.set(f"{target.redis_prefix}user:{victim}", "not a hash")
    read = httpx.get(f"{target.base}/recommend/{victim}", timeout=10)
    other = random.choice(target.users)
    write = httpx.post(
        f"{target.base}/users/{other}/interactions", json={"item_ids": [target.items[0]]}, headers=target.key
    )
    ready = httpx.get(f"{target.base}/readyz", timeout=10).json().get("status")
    client.delete(f"{target.redis_prefix}user:{victim}")
    got = f"victim {read.status_code}; another user's write {write.status_code}; readyz {ready}"
    return got, read.status_code == 409 and write.status_code == 200 and ready == "ready"


@probe("stored history not valid data", "14.6", "409 read and write; record untouched")
def undecodable(target: Target) -> tuple[str, bool]:
    client = _redis(target)
    if client is None:
        return "no --redis-url", False
    victim = f"probe-corrupt-{uuid.uuid4().hex[:8]}"
    key = f"{target.redis_prefix}user:{victim}"
    client.hset(key, mapping={"items": "not json", "version": "1"})
    read = httpx.get(f"{target.base}/recommend/{victim}", timeout=10)
    write = httpx.post(
        f"{target.base}/users/{victim}/interactions", json={"item_ids": [target.items[0]]}, headers=target.key
    )
    untouched = client.hget(key, "items") == b"not json"
    client.delete(key)
    got = f"read {read.status_code}, write {write.status_code}, record untouched {untouched}"
    return got, read.status_code == 409 and write.status_code == 409 and untouched


# -- beyond the list ---------------------------------------------------------------------------------
@probe("text/plain body, not UTF-8", "beyond", "415")
def wrong_type_body(target: Target) -> tuple[str, bool]:
    return expect_status(post_raw(target, "/recommend", b"\xff\xfe", "text/plain"), 415)


@probe("JSON body without content type", "beyond", "415")
def no_content_type(target: Target) -> tuple[str, bool]:
    return expect_status(post_raw(target, "/recommend", b'{"history": []}', None), 415)


@probe("JSON nested 100,000 deep", "beyond", "422")
def deep_json(target: Target) -> tuple[str, bool]:
    return expect_status(post_raw(target, "/recommend", b"[" * 100_000 + b"]" * 100_000), 422)


@probe("a 5,000-digit number", "beyond", "422")
def long_number(target: Target) -> tuple[str, bool]:
    return expect_status(post_raw(target, "/recommend", b'{"history": [], "k": ' + b"9" * 5000 + b"}"), 422)


@probe("1,000 unknown keys", "beyond", "422, short body")
def many_keys(target: Target) -> tuple[str, bool]:
    body = json.dumps({"history": []} | {f"key{i}": i for i in range(1000)}).encode()
    return expect_status(post_raw(target, "/recommend", body), 422, 1024)


@probe("10 KB user id in the path", "beyond", "422, short body")
def huge_path_id(target: Target) -> tuple[str, bool]:
    return expect_status(httpx.get(f"{target.base}/recommend/{'u' * 10_000}", timeout=10), 422, 1024)


@probe("unicode user id: write, then read", "beyond", "200, 200 (cold start)")
def unicode_id(target: Target) -> tuple[str, bool]:
    user = f"用户-🙂-{uuid.uuid4().hex[:6]}"
    write = httpx.post(
        f"{target.base}/users/{user}/interactions", json={"item_ids": [target.items[1]]}, headers=target.key
    )
    read = httpx.get(f"{target.base}/recommend/{user}", timeout=10)
    cold = read.status_code == 200 and read.json()["cold_start"] and read.json()["user_id"] == user
    return f"{write.status_code}, {read.status_code}", write.status_code == 200 and cold


@probe("control characters in ids", "beyond", "422")
def control_chars(target: Target) -> tuple[str, bool]:
    read = httpx.get(f"{target.base}/recommend/a%0Ab", timeout=10)
    write = httpx.post(
        f"{target.base}/users/a%1Bb/interactions", json={"item_ids": ["1"]}, headers=target.key
    )
    return f"{read.status_code}, {write.status_code}", read.status_code == write.status_code == 422


@probe("1,200 repeated exclude= params", "beyond", "422 (MAX_IDS)")
def param_flood(target: Target) -> tuple[str, bool]:
    query = "&".join(["exclude=1"] * 1200)  # 12 KB: within MAX_HEADER_BYTES
    return expect_status(httpx.get(f"{target.base}/recommend/{target.users[0]}?{query}", timeout=10), 422)


@probe("duplicate k=5&k=7", "beyond", "200")
def duplicate_param(target: Target) -> tuple[str, bool]:
    response = httpx.get(f"{target.base}/recommend/{target.users[0]}?k=5&k=7", timeout=10)
    return f"{response.status_code}", response.status_code == 200


@probe("k = 10^30, k = -1", "beyond", "422, 422")
def huge_k(target: Target) -> tuple[str, bool]:
    codes = [
        httpx.get(f"{target.base}/recommend/{target.users[0]}?k={k}", timeout=10).status_code
        for k in ("1" + "0" * 30, "-1")
    ]
    return str(codes), codes == [422, 422]


@probe("HEAD and OPTIONS", "beyond", "405, 405")
def head_options(target: Target) -> tuple[str, bool]:
    codes = [
        httpx.request(m, f"{target.base}/recommend/{target.users[0]}", timeout=10).status_code
        for m in ("HEAD", "OPTIONS")
    ]
    return str(codes), codes == [405, 405]


@probe("chunked body, valid", "beyond", "200")
def chunked_ok(target: Target) -> tuple[str, bool]:
    def chunks() -> Iterator[bytes]:
        yield b'{"history": ['
        yield json.dumps(target.items[0]).encode()
        yield b"]}"

    response = httpx.post(
        f"{target.base}/recommend", content=chunks(), headers={"content-type": "application/json"}
    )
    return f"{response.status_code}", response.status_code == 200


@probe("chunked body of 2 MB", "beyond", "413 (or closed while sending)")
def chunked_big(target: Target) -> tuple[str, bool]:
    def chunks() -> Iterator[bytes]:
        yield b'{"item_ids": ['
        for _ in range(2000):
            yield b'"1", ' * 200
        yield b'"1"]}'

    try:
        response = httpx.post(
            f"{target.base}/users/0/interactions",
            content=chunks(),
            headers={"content-type": "application/json"} | target.key,
            timeout=30,
        )
    except httpx.TransportError as exc:
        return f"closed while sending ({type(exc).__name__})", True
    return f"{response.status_code}", response.status_code == 413


@probe("Content-Length + Transfer-Encoding", "beyond", "400, closed")
def smuggling(target: Target) -> tuple[str, bool]:
    payload = (
        b"POST /recommend HTTP/1.1\r\nHost: probe\r\ncontent-type: application/json\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n"
    )
    received, _, end = raw_exchange(target, payload)
    return f"{status_of(received)}, {end}", status_of(received) == 400 and received.count(b"HTTP/1.1 ") == 1


@probe("Content-Length: abc", "beyond", "400")
def bad_length(target: Target) -> tuple[str, bool]:
    payload = b"POST /recommend HTTP/1.1\r\nHost: probe\r\ncontent-length: abc\r\n\r\n"
    received, _, end = raw_exchange(target, payload)
    return f"{status_of(received)}, {end}", status_of(received) == 400


@probe("a GET with a body; a path that is not UTF-8", "beyond", "200, 404")
def odd_requests(target: Target) -> tuple[str, bool]:
    with_body = httpx.request(
        "GET", f"{target.base}/recommend/{target.users[0]}", content=b"body", timeout=10
    )
    not_utf8 = httpx.get(f"{target.base}/recommend/%FF%FE", timeout=10)
    codes = [with_body.status_code, not_utf8.status_code]
    return str(codes), codes == [200, 404]


@probe("a client that does not read its answers", "beyond", "dropped after SEND_TIMEOUT_S")
def slow_reader(target: Target) -> tuple[str, bool]:
    size = len(httpx.get(f"{target.base}/openapi.json", timeout=10).content)
    count = max(50, (8 << 20) // size)  # ~8 MB of answers, more than the kernel buffers hold
    request = b"GET /openapi.json HTTP/1.1\r\nHost: probe\r\n\r\n"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(target.send_timeout_s + 10)
    received, end = 0, "open"
    try:
        sock.connect(target.address)
        sock.sendall(request * count)
        time.sleep(target.send_timeout_s * 3)  # not reading
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        end = "closed"
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        end = "open"
    finally:
        sock.close()
    got = f"{end} after {received / size:.0f} of {count} answers"
    return got, end in ("reset", "closed") and received < count * size


@probe("concurrent writes to one user", "beyond", "all 200, no item lost")
def concurrent_writes(target: Target) -> tuple[str, bool]:
    user = f"probe-writer-{uuid.uuid4().hex[:8]}"
    items = target.items[: min(160, len(target.items))]
    chunks = [items[i::8] for i in range(8)]
    statuses: list[int] = []

    def writer(chunk: list[str]) -> None:
        with httpx.Client(base_url=target.base, headers=target.key, timeout=30) as client:
            for item in chunk:
                statuses.append(
                    client.post(f"/users/{user}/interactions", json={"item_ids": [item]}).status_code
                )

    threads = [threading.Thread(target=writer, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stored: set[str] = set()
    client = _redis(target)
    if client is not None:
        raw = client.hget(f"{target.redis_prefix}user:{user}", "items")
        stored = set(json.loads(raw)) if raw else set()
    lost = len(set(items) - stored) if client is not None else -1
    got = f"{len(statuses)} writes: {sorted(set(statuses))}; items lost {lost}"
    return got, set(statuses) == {200} and len(statuses) == len(items) and lost == 0


@probe("created: training user / new user", "15", "false, true")
def created(target: Target) -> tuple[str, bool]:
    fresh = f"probe-new-{uuid.uuid4().hex[:8]}"
    trained = target.users[-1]
    first = httpx.post(
        f"{target.base}/users/{trained}/interactions",
        json={"item_ids": [target.items[2]]},
        headers=target.key,
    )
    new = httpx.post(
        f"{target.base}/users/{fresh}/interactions", json={"item_ids": [target.items[2]]}, headers=target.key
    )
    flags = [first.json().get("created"), new.json().get("created")]
    return str(flags), flags == [False, True]


@probe("API key: none, wrong; reload outside ARTIFACT_ROOT", "beyond", "401, 403, 422")
def auth(target: Target) -> tuple[str, bool]:
    url = f"{target.base}/users/{target.users[0]}/interactions"
    none = httpx.post(url, json={"item_ids": ["1"]}).status_code
    wrong = httpx.post(url, json={"item_ids": ["1"]}, headers={"X-API-Key": "wrong"}).status_code
    reload = httpx.post(
        f"{target.base}/admin/reload", json={"artifact": "/etc"}, headers=target.key, timeout=30
    )
    codes = [none, wrong, reload.status_code]
    return str(codes), codes == [401, 403, 422]


@probe("/docs offline", "15", "every asset local, 200")
def docs(target: Target) -> tuple[str, bool]:
    import re

    html = httpx.get(f"{target.base}/docs", timeout=10).text
    external = re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", html)
    assets = re.findall(r"(?:src|href)=[\"']?(/[^\"' >]+)", html)
    codes = [httpx.get(f"{target.base}{a}", timeout=10).status_code for a in assets]
    got = f"{len(assets)} assets {sorted(set(codes))}, {len(external)} external"
    return got, bool(assets) and set(codes) == {200} and not external


@probe("no 5xx in /metrics after every probe", "all", "0")
def no_5xx(target: Target) -> tuple[str, bool]:
    series = {k: v - target.five_xx_before.get(k, 0.0) for k, v in target.five_xx().items()}
    series = {k: v for k, v in series.items() if v}
    count = sum(series.values())
    log = target.log() if target.log is not None else ""
    tracebacks = log.count("Traceback")
    got = f"{count:.0f} 5xx {series or ''}, {tracebacks} tracebacks in the log"
    if tracebacks:  # the first one's error line
        lines = log[log.index("Traceback") :].splitlines()
        got += ": " + next((line for line in lines[1:] if not line.startswith(" ")), "?")[:200]
    return got, count == 0 and tracebacks == 0


# -- running -----------------------------------------------------------------------------------------------
def run(target: Target, only: list[str] | None = None) -> list[Outcome]:
    target.five_xx_before = target.five_xx()
    outcomes = []
    for name, item, expected, fn in PROBES:
        if only and not any(word in name for word in only):
            continue
        expected = expected.replace("< 0.5 s", f"< {target.latency_bound_s:g} s")
        started = time.monotonic()
        try:
            got, passed = fn(target)
        except Exception as exc:  # a probe that breaks is a failed probe, reported, not a crash
            got, passed = f"probe error: {type(exc).__name__}: {str(exc)[:200]}", False
        outcome = Outcome(f"[{item}] {name}", expected, got, passed, round(time.monotonic() - started, 2))
        print(f"{outcome.probe:<52} | {expected:<40} | {got} | {'pass' if passed else 'FAIL'}", flush=True)
        outcomes.append(outcome)
    return outcomes


def ids(artifact: Path) -> tuple[list[str], list[str]]:
    users = json.loads((artifact / "user_ids.json").read_text())
    items = json.loads((artifact / "item_ids.json").read_text())
    return [str(u) for u in users], [str(i) for i in items]


@contextmanager
def own_stack(args: argparse.Namespace, artifact: Path, workdir: Path) -> Iterator[Target]:
    env = {
        "LD4MREC_API_KEY": args.api_key,
        "LD4MREC_REDIS_PREFIX": args.redis_prefix,
        "LD4MREC_HEADER_TIMEOUT_S": str(args.header_timeout_s),
        "LD4MREC_BODY_TIMEOUT_S": str(args.body_timeout_s),
        "LD4MREC_SEND_TIMEOUT_S": str(args.send_timeout_s),
        "LD4MREC_MAX_HEADER_BYTES": str(args.max_header_bytes),
    }
    with ServiceStack(artifact, workdir, env) as stack:
        users, items = ids(artifact)
        yield Target(
            stack.base,
            args.api_key,
            f"redis://127.0.0.1:{stack.redis_port}/0",
            args.redis_prefix,
            users,
            items,
            args.max_header_bytes,
            args.header_timeout_s,
            args.body_timeout_s,
            args.send_timeout_s,
            args.quick,
            args.latency_bound_s,
            stack.log,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", type=Path, default=None, help="artifact served (its ids are used)")
    parser.add_argument("--base", default=None, help="a running service to probe, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=KEY, help="its API key (the service started here gets it)")
    parser.add_argument("--redis-url", default=None, help="its Redis (for the stored-data probes)")
    parser.add_argument("--redis-prefix", default="ld4mrec:", help="its LD4MREC_REDIS_PREFIX")
    parser.add_argument("--max-header-bytes", type=int, default=16384)
    parser.add_argument("--header-timeout-s", type=float, default=None, help="default 2 (own service) or 10")
    parser.add_argument("--body-timeout-s", type=float, default=None, help="default 2 (own service) or 30")
    parser.add_argument("--send-timeout-s", type=float, default=None, help="default 2 (own service) or 30")
    parser.add_argument("--quick", action="store_true", help="shorter attack phases, 1 s timeouts")
    parser.add_argument(
        "--latency-bound-s",
        type=float,
        default=LATENCY_BOUND_S,
        help="other users' requests during an attack must be answered within this",
    )
    parser.add_argument("--only", nargs="*", help="run the probes whose name holds one of these words")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hostile_probes.json")
    args = parser.parse_args(argv)
    own_default, running_defaults = (1.0 if args.quick else 2.0), {"header": 10.0, "body": 30.0, "send": 30.0}
    for name in ("header", "body", "send"):
        attr = f"{name}_timeout_s"
        if getattr(args, attr) is None:
            setattr(args, attr, running_defaults[name] if args.base else own_default)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ld4mrec-probes-") as tmp:
        if args.base:
            if args.artifact is None:
                parser.error("--base needs --artifact (the probes use its user and item ids)")
            users, items = ids(args.artifact)
            target = Target(
                args.base.rstrip("/"),
                args.api_key,
                args.redis_url,
                args.redis_prefix,
                users,
                items,
                args.max_header_bytes,
                args.header_timeout_s,
                args.body_timeout_s,
                args.send_timeout_s,
                args.quick,
                args.latency_bound_s,
            )
            outcomes = run(target, args.only)
        else:
            artifact = args.artifact or demo_artifact(Path(tmp))
            with own_stack(args, artifact, Path(tmp)) as target:
                outcomes = run(target, args.only)
    failed = [o.probe for o in outcomes if not o.passed]
    headline = {
        "probes": len(outcomes),
        "passed": len(outcomes) - len(failed),
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_end": loadavg(),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    payload = {
        "headline": headline,
        "probes": [o.__dict__ for o in outcomes],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "api_key")}
        | {"artifact": str(args.artifact)},
        "probes_commit": commit.stdout.strip(),  # of this script (a --base target may run other code)
        "machine": machine_info(torch.device("cpu")),
    }
    write_json(payload, args.out)
    print(f"results: {display_path(args.out)}")
    print(json.dumps(headline))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
