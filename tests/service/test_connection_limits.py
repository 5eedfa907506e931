"""Per-connection limits of the real server (issue 14, items 3-4, slow readers): header size (431), the
time to send headers and body (408, slowloris), a client that does not read its answer; with both HTTP
protocols. Legitimate slow-ish clients and keep-alive connections are not hurt. Loopback only; every
wait is bounded by a socket timeout."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from service.http_server import HTTPChoice
from service.settings import Settings
from tests.service.helpers import serve_in_thread

pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)

LIMITS = {"max_header_bytes": 4096, "header_timeout_s": 1.0, "body_timeout_s": 1.0, "send_timeout_s": 0.5}


@pytest.fixture(params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[tuple[str, int]]:
    http: HTTPChoice = request.param
    with serve_in_thread(make_settings(**LIMITS), http=http) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def connect(server: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(server, timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after the socket timeout)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def read_response(sock: socket.socket) -> bytes:
    """One complete response (head + content-length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def refused(server: tuple[str, int], reason: str) -> float:
    """``ld4mrec_connections_refused_total{reason}`` of the server."""
    with urllib.request.urlopen(f"http://{server[0]}:{server[1]}/metrics", timeout=5) as response:
        text = response.read().decode()
    series = f'ld4mrec_connections_refused_total{{reason="{reason}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(series)).split()[1])


def test_headers_over_the_limit_are_431(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert status(answer) == 431 and b"MAX_HEADER_BYTES" in answer
    with connect(server) as sock:  # many small headers count too
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n")
        assert status(read_until_closed(sock)) == 431
    with connect(server) as sock:  # a header just under the limit is fine
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Ok: " + b"a" * 3000 + b"\r\n\r\n")
        assert status(read_response(sock)) == 200
    assert refused(server, "header_size") == 2


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # a connection that never sends anything
        b"GET /recomm",  # a partial request line
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1\r\n",  # headers, never finished (slowloris)
    ],
)
def test_a_request_head_that_never_ends_is_408(server: tuple[str, int], partial: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(partial)
        started = time.monotonic()
        answer = read_until_closed(sock)  # the socket timeout (5 s) fails the test if it stays open
    assert status(answer) == 408 and b"HEADER_TIMEOUT_S" in answer
    assert time.monotonic() - started < 4.0
    assert refused(server, "header_timeout") == 1


def test_a_trickled_head_is_408_even_while_bytes_keep_coming(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        answer = b""
        for _ in range(60):  # one header byte every 50 ms: never idle, never done
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        answer = read_until_closed(sock)
    assert status(answer) == 408


def test_a_body_that_never_ends_is_408(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"history": ['
        )
        answer = read_until_closed(sock)
    assert status(answer) == 408 and b"BODY_TIMEOUT_S" in answer
    assert refused(server, "body_timeout") == 1


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_slow_but_steady_client_and_keep_alive_are_served(
    make_settings: Callable[..., Settings], http: HTTPChoice
) -> None:
    """Generous margins (3 s timeouts): on a loaded machine a test's own sleeps stretch."""
    body = b'{"history": ["1", "2"], "k": 3}'
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    limits = LIMITS | {"header_timeout_s": 3.0, "body_timeout_s": 3.0}
    with serve_in_thread(make_settings(**limits), http=http) as base:
        host, port = base.removeprefix("http://").split(":")
        with connect((host, int(port))) as sock:
            for piece in (head[:10], head[10:40], head[40:]):  # the head in pieces, within 3 s
                sock.sendall(piece)
                time.sleep(0.1)
            sock.sendall(body[:10])
            time.sleep(0.2)
            sock.sendall(body[10:])
            assert status(read_response(sock)) == 200
            time.sleep(3.5)  # idle between requests: longer than HEADER_TIMEOUT_S, shorter than keep-alive
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status(read_response(sock)) == 200
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 2)  # pipelined
            assert status(read_response(sock)) == 200 and status(read_response(sock)) == 200


def test_a_client_that_does_not_read_is_dropped(server: tuple[str, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the server must buffer
    sock.settimeout(10)
    with sock:
        sock.connect(server)
        request = b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: t\r\n\r\n"
        sock.sendall(request * 4)  # ~6 MB of answers, more than the kernel buffers hold
        time.sleep(2.0)  # never read, for 4 x SEND_TIMEOUT_S
        received = 0
        with pytest.raises((ConnectionResetError, AssertionError)):
            while True:
                chunk = sock.recv(1 << 20)
                assert chunk, "closed"
                received += len(chunk)
    assert received < 4 * 1_400_000  # dropped before the whole answer was sent
    assert refused(server, "send_timeout") == 1


def five_xx(server: tuple[str, int]) -> list[str]:
    """The 5xx series of ``ld4mrec_http_requests_total``."""
    with urllib.request.urlopen(f"http://{server[0]}:{server[1]}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return [line for line in lines if line.startswith("ld4mrec_http_requests_total{") and "5xx" in line]


def test_a_dropped_connection_with_pipelined_requests_causes_no_error(server: tuple[str, int]) -> None:
    """uvicorn tells only the newest pipelined request of a lost connection; the others wrote to the
    closed transport (500s and tracebacks with uvloop) when a slow reader was dropped."""
    before = five_xx(server)  # e.g. a /readyz 503 while the model was loading
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        with sock:
            sock.connect(server)
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n" * 300)
            time.sleep(2.0)  # never read: dropped after SEND_TIMEOUT_S with answers still queued
    time.sleep(0.5)
    assert five_xx(server) == before


@pytest.mark.parametrize(
    "head",
    [
        b"content-length: 4\r\ntransfer-encoding: chunked\r\n",  # request smuggling
        b"content-length: abc\r\n",
        b"content-length: -1\r\n",
    ],
)
def test_ambiguous_or_bad_framing_is_400(server: tuple[str, int], head: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n" + head + b"\r\n"
            b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert status(answer) == 400 and answer.count(b"HTTP/1.1 ") == 1  # nothing smuggled through
