"""The load-generator process of bench/serve_load.py (bench/_httpload.py, run through _loadgen.run_step)
against a tiny HTTP server in this process: open-loop latency runs from the scheduled send time (a slow
server shows up as latency, not as fewer requests), non-2xx answers and dropped connections are errors,
the closed loop keeps N requests in flight, and the process reports its own CPU time."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _loadgen import Request, run_step, summarise  # noqa: E402


class TinyServer:
    """HTTP/1.1 keep-alive server on a free loopback port: answers ``/ok`` 200 after ``delay_s``,
    ``/fail`` 500, ``/drop`` by closing the connection; one request at a time per connection."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.port = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TinyServer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(x.lower().partition(": ")[::2] for x in lines[1:] if x)
                length = int(headers.get("content-length", 0))
                if length:
                    await reader.readexactly(length)
                if path == "/drop":
                    writer.close()
                    return
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
                await asyncio.sleep(self.delay_s)
                self._in_flight -= 1
                status = b"200 OK" if path == "/ok" else b"500 Internal Server Error"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
def slow_server() -> Iterator[TinyServer]:
    with TinyServer(delay_s=0.05) as server:
        yield server


def test_open_loop_latency_runs_from_the_scheduled_send(slow_server: TinyServer) -> None:
    """One connection, 50 ms per answer, 20 requests scheduled 20 ms apart: they queue for the
    connection, and that wait is latency (the last is answered ~1 s after t0, scheduled at 0.38 s)."""
    requests = [Request("get", "GET", "/ok") for _ in range(20)]
    step, cpu_s = run_step(
        f"http://127.0.0.1:{slow_server.port}", {}, requests, "open", 50.0, connections=1, drain_s=5.0
    )
    out = summarise(step)
    assert out["ok"] == 20 and out["errors"] == 0
    latencies = np.array([s.latency_s for s in step.samples])
    assert latencies.max() > 0.45  # coordinated omission would report ~0.05 s for every request
    assert latencies.min() >= 0.045
    assert out["client_send_lag_ms_p99"] < 100  # sends kept to the schedule
    assert cpu_s > 0


def test_open_loop_with_enough_connections_sees_the_service_time(slow_server: TinyServer) -> None:
    requests = [Request("get", "GET", "/ok") for _ in range(20)]
    step, _ = run_step(
        f"http://127.0.0.1:{slow_server.port}", {}, requests, "open", 50.0, connections=8, drain_s=5.0
    )
    latencies = np.array([s.latency_s for s in step.samples])
    assert len(latencies) == 20 and latencies.max() < 0.3


def test_non_2xx_and_dropped_connections_are_errors(slow_server: TinyServer) -> None:
    requests = [
        Request("get", "GET", "/ok"),
        Request("write", "POST", "/fail", {"item_ids": ["a"]}),
        Request("cold", "GET", "/drop"),
        Request("get", "GET", "/ok"),
    ]
    step, _ = run_step(
        f"http://127.0.0.1:{slow_server.port}", {}, requests, "open", 20.0, connections=2, drain_s=5.0
    )
    out = summarise(step)
    assert out["sent"] == 4 and out["ok"] == 2
    assert out["error_kinds"].get("HTTP 500") == 1
    assert sum(v for k, v in out["error_kinds"].items() if not k.startswith("HTTP")) == 1


def test_closed_loop_keeps_n_requests_in_flight(slow_server: TinyServer) -> None:
    requests = [Request("get", "GET", "/ok")]
    step, _ = run_step(f"http://127.0.0.1:{slow_server.port}", {}, requests, "closed", 4, duration_s=0.6)
    out = summarise(step)
    assert out["errors"] == 0
    assert slow_server.max_in_flight == 4
    assert 30 <= out["ok"] <= 60  # 4 clients x 0.6 s / 0.05 s per answer
