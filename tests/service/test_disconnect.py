"""A request whose client disconnects before its answer is dropped before scoring (issue 14, item 5): the
disconnect cancels the request, its scoring row is cancelled in the queue and the batcher skips it; it is
counted in ``ld4mrec_client_disconnects_total``. Real uvicorn server on loopback; every wait is bounded."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

import pytest

from service.engine import Engine, ScoredItems, ScoringRequest
from service.http_server import HTTPChoice
from service.settings import Settings
from tests.service.helpers import Offline, http_json, serve_in_thread

pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize(("method", "http"), [("GET", "httptools"), ("POST", "h11")])
def test_a_request_whose_client_left_is_never_scored(
    make_settings: Callable[..., Settings],
    offline: Offline,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    http: HTTPChoice,
) -> None:
    holder, leaver = offline.art.user_ids[1], offline.art.user_ids[2]
    scored: list[int] = []
    blocked, release = threading.Event(), threading.Event()
    score = Engine.score

    def blocking_score(self: Engine, requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        scored.extend(r.user_index for r in requests)
        if not blocked.is_set():  # the first pass holds the forward thread until released
            blocked.set()
            release.wait(20)
        return score(self, requests)

    with serve_in_thread(make_settings(), http=http) as base:
        monkeypatch.setattr(Engine, "score", blocking_score)
        answers: list[int] = []
        first = threading.Thread(target=lambda: answers.append(http_json(f"{base}/recommend/{holder}")[0]))
        first.start()
        try:
            wait_for(blocked.is_set, "the first pass")
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                if method == "GET":
                    sock.sendall(f"GET /recommend/{leaver} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                else:  # a cold-start request: the body is read, then the client leaves
                    body = b'{"history": ["1", "2"], "k": 5}'
                    sock.sendall(
                        b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                # queued behind the blocked pass (this /metrics request is the third in flight)
                wait_for(lambda: metric(base, "ld4mrec_http_requests_in_flight") == 3, "the request queued")
            wait_for(
                lambda: metric(base, "ld4mrec_client_disconnects_total") == 1, "the disconnect to be noticed"
            )
        finally:
            release.set()
            first.join(timeout=20)
        assert answers == [200]
        wait_for(lambda: metric(base, "ld4mrec_http_requests_in_flight") == 1, "every request to finish")
        time.sleep(0.2)  # any pass that would still score the dropped request has run by now
        left_out = offline.user_index(leaver) if method == "GET" else -1
        assert offline.user_index(holder) in scored and left_out not in scored, scored
        assert http_json(f"{base}/recommend/{leaver}")[0] == 200  # the service goes on serving that user
