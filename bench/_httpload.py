"""A cheap HTTP/1.1 load generator that runs in its own process (bench/serve_load.py starts it per step).

Why not httpx in the benchmark's process: on a 2-core machine the client's CPU is taken from the service
it measures. httpx costs about 1 ms of CPU per request; this client (pre-encoded requests, asyncio
protocols, httptools' C response parser, uvloop when installed) costs a fraction of that, and it runs in
a separate process whose CPU time is reported (and which can be pinned to given cores).

Modes (the same semantics as before, see ``_loadgen``):

- **open**: request i is *scheduled* at ``t0 + i / rate`` whatever the answers do; its latency runs from
  that scheduled time to the end of the answer (no coordinated omission: a late send, or a wait for a
  free connection, counts as latency). Connections come from a keep-alive pool that grows up to
  ``connections`` (opened ahead of the step, so no connect lands in the measurement).
- **closed**: ``clients`` connections, each sending its next request as soon as the previous one is
  answered, for ``duration_s``; latency from the actual send.

Usage (what ``_loadgen.run_step`` does): ``python bench/_httpload.py SPEC.json OUT.json``; SPEC holds the
host, port, mode, rate or clients, timeouts and the requests as raw HTTP bytes (latin-1 text); OUT gets
per-request kind, latency, status, error and end time, the step's start and end, the send lags, and the
process's own CPU seconds. Times are ``time.perf_counter()`` of this process (only differences are used).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any, cast

import httptools

__all__ = ["encode_request", "main"]


def encode_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes | None = None
) -> bytes:
    """A complete HTTP/1.1 keep-alive request (``Content-Type: application/json`` when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time; ``request()`` resolves to the status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail(exc or ConnectionError("connection closed"))

    # httptools callbacks
    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.alive = False
            if self.transport is not None:
                self.transport.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        self.alive = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def request(self, raw: bytes) -> asyncio.Future[int]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Idle keep-alive connections; a new one is opened when none is idle and fewer than ``size`` exist;
    beyond that a request waits (its wait counts in its latency)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: list[_Connection] = []
        self.count = 0
        self.waiting: list[asyncio.Future[_Connection]] = []

    async def _open(self) -> _Connection:
        self.count += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        except BaseException:
            self.count -= 1
            raise
        return conn

    async def prefill(self, n: int) -> None:
        conns = await asyncio.gather(*(self._open() for _ in range(min(n, self.size))))
        self.idle.extend(conns)

    async def acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if conn.alive:
                return conn
            self.count -= 1
        if self.count < self.size:
            return await self._open()
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def release(self, conn: _Connection) -> None:
        if not conn.alive:
            self.count -= 1
            conn.close()
            if self.waiting and self.count < self.size:  # a waiter may open a fresh connection
                waiter = self.waiting.pop(0)
                task = asyncio.ensure_future(self._open())
                task.add_done_callback(lambda t: _hand_over(waiter, t))
            return
        while self.waiting:
            waiter = self.waiting.pop(0)
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _hand_over(waiter: asyncio.Future[_Connection], opened: asyncio.Future[_Connection]) -> None:
    if waiter.done():
        if not opened.cancelled() and opened.exception() is None:
            opened.result().close()
        return
    if opened.cancelled():
        waiter.cancel()
    elif (exc := opened.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(opened.result())


class _Recorder:
    """Per-request results as parallel lists (cheap to append, dumped as JSON)."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.latency_s: list[float] = []
        self.status: list[int] = []
        self.error: list[str | None] = []
        self.done_at: list[float] = []

    def add(self, kind: int, t0: float, status: int, error: str | None) -> None:
        end = time.perf_counter()
        self.kind.append(kind)
        self.latency_s.append(end - t0)
        self.status.append(status)
        self.error.append(error)
        self.done_at.append(end)


async def _send(pool: _Pool, raw: bytes, kind: int, t0: float, timeout_s: float, rec: _Recorder) -> None:
    """One request; latency from ``t0``; any non-2xx, timeout or transport failure is an error."""
    conn: _Connection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.acquire()
            status = await conn.request(raw)
    except TimeoutError:
        if conn is not None:
            conn.close()  # an answer may still come on it: never reuse it
        rec.add(kind, t0, 0, "ReadTimeout" if conn is not None else "PoolTimeout")
    except (OSError, ConnectionError) as exc:
        rec.add(kind, t0, 0, type(exc).__name__)
    else:
        rec.add(kind, t0, status, None if 200 <= status < 300 else f"HTTP {status}")
    finally:
        if conn is not None:
            pool.release(conn)


async def _open_loop(
    spec: dict[str, Any], pool: _Pool, raws: list[bytes], kinds: list[int]
) -> dict[str, Any]:
    rate = float(spec["rate"])
    timeout_s, drain_s = float(spec["timeout_s"]), float(spec["drain_s"])
    rec = _Recorder()
    lags: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.02
    for i, raw in enumerate(raws):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.ensure_future(_send(pool, raw, kinds[i], scheduled, timeout_s, rec)))
    _, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {"rec": rec, "started": start, "unfinished": len(pending), "send_lag_s": lags}


async def _closed_loop(
    spec: dict[str, Any], pool: _Pool, raws: list[bytes], kinds: list[int]
) -> dict[str, Any]:
    timeout_s, clients = float(spec["timeout_s"]), int(spec["clients"])
    rec = _Recorder()
    start = time.perf_counter()
    stop_at = start + float(spec["duration_s"])
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter) % len(raws)
            await _send(pool, raws[i], kinds[i], time.perf_counter(), timeout_s, rec)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return {"rec": rec, "started": start, "unfinished": 0, "send_lag_s": []}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one step as ``spec`` says; returns the JSON-able result (see the module docstring)."""
    raws = [r.encode("latin-1") for r in spec["raw"]]
    kinds = [int(k) for k in spec["kind"]]
    pool = _Pool(spec["host"], int(spec["port"]), int(spec["connections"]))
    await pool.prefill(int(spec.get("prefill", spec["connections"])))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        if spec["mode"] == "open":
            out = await _open_loop(spec, pool, raws, kinds)
        else:
            out = await _closed_loop(spec, pool, raws, kinds)
    finally:
        pool.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    rec: _Recorder = out.pop("rec")
    ended = max(rec.done_at, default=time.perf_counter())
    return {
        **out,
        "ended": ended,
        "kind": rec.kind,
        "latency_s": rec.latency_s,
        "status": rec.status,
        "error": rec.error,
        "done_at": rec.done_at,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
