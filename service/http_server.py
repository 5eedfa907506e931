"""The HTTP server: uvicorn with per-connection limits, and the listening socket bound before start-up.

uvicorn bounds neither the time a client may take to send a request (a *slowloris* keeps a connection
open for ever by sending a partial request line and headers, then nothing) nor, with httptools, the size
of a request's headers. The protocol classes made by :func:`limited_protocol` add, per connection:

- the request line and headers: at most ``max_header_bytes`` (else ``431``, connection closed), counted
  as the request target plus every header's name and value (+ 4 bytes each) once the head is parsed, and
  as raw bytes while it is incomplete (so a head that never ends is refused as soon as it passes the
  limit); within ``header_timeout_s`` of the request's first byte, or of the connection's opening (else
  ``408``, closed);
- the body: within ``body_timeout_s`` of the end of the headers (else ``408``, closed); time while the
  server itself stopped reading (flow control, a pipelined request waiting its turn) is not counted;
- an answer the client does not read (the socket's send buffer stays full): the connection is dropped
  after ``send_timeout_s``.

Idle keep-alive connections are closed by uvicorn itself (``timeout_keep_alive``, 5 s). WebSocket upgrades
are off (the API has no WebSocket route). :func:`uvicorn_config` is the one place that builds the server's
configuration: ``ld4mrec-serve``, the docker image (which runs it), the tests and the benchmarks use it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

__all__ = [
    "ConnectionLimits",
    "HTTPChoice",
    "limited_protocol",
    "listen_socket",
    "protocol_name",
    "uvicorn_config",
]

log = logging.getLogger("ld4mrec.service")

HTTPChoice = Literal["auto", "h11", "httptools"]
_Phase = Literal["idle", "head", "body"]
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
LINGER_S = 2.0
"""After a refusal the server stops sending (FIN) but reads and discards for this long at most, so that a
client still sending its request reads the answer instead of a connection reset."""


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits (bytes, seconds); see the module docstring."""

    max_header_bytes: int = 16384
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    send_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_header_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.send_timeout_s,
        )


def _error_response(status: int, detail: str) -> bytes:
    """A complete ``{"detail": ...}`` answer that closes the connection (written straight to the socket)."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status].decode()}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _LimitsMixin:
    """Deadlines and the header-size check shared by both protocol classes.

    The protocol reports its read phase through :meth:`_enter`: ``head`` (waiting for, or reading, a
    request line and headers: timed by ``header_timeout_s``), ``body`` (timed by ``body_timeout_s``) or
    ``idle`` (request complete; the app's own timeout and uvicorn's keep-alive timer apply).
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    refusal_hooks: ClassVar[tuple[Callable[[str], None], ...]] = ()  # called with each refusal's reason
    # set by uvicorn's protocol classes
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any

    def _init_limits(self) -> None:
        self._phase: _Phase = "idle"
        self._read_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._head_too_large = False  # set before a parser error is raised to stop a too large head

    def _enter(self, phase: _Phase) -> None:
        if phase == self._phase:
            return  # a deadline runs from the start of its phase
        self._phase = phase
        self._cancel_read_timer()
        if phase == "head":
            self._arm_read_timer(self.limits.header_timeout_s)
        elif phase == "body":
            self._arm_read_timer(self.limits.body_timeout_s)

    def _arm_read_timer(self, seconds: float) -> None:
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._lingering or self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:  # the server stopped reading: not the client's
            self._arm_read_timer(self.limits.body_timeout_s)
            return
        if self._phase == "head":
            what, limit, name = "the request headers", self.limits.header_timeout_s, "HEADER_TIMEOUT_S"
        else:
            what, limit, name = "the request body", self.limits.body_timeout_s, "BODY_TIMEOUT_S"
        log.info("closing a connection: %s did not arrive within %g s (%s)", what, limit, name)
        self._count("header_timeout" if self._phase == "head" else "body_timeout")
        self._refuse(408, f"{what} did not arrive within {limit:g} s ({name})")

    def _count(self, reason: str) -> None:
        for hook in self.refusal_hooks:
            hook(reason)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` when no answer is under way on this connection, then close it (lingering:
        the answer and a FIN are sent, what the client still sends is discarded for ``LINGER_S``)."""
        cycle = self.cycle
        answer_free = cycle is None or cycle.response_complete
        if self._phase == "body" and cycle is not None and not cycle.response_started:
            answer_free = True  # the request being read has no answer yet
        self._cancel_read_timer()
        if not answer_free or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write(_error_response(status, detail))
        self.transport.write_eof()
        self._lingering = True
        self.loop.call_later(LINGER_S, self.transport.close)

    def _head_over_limit(self, size: int) -> bool:
        """True (and remembered) when a parsed head of ``size`` bytes is over the limit."""
        self._head_too_large = size > self.limits.max_header_bytes
        return self._head_too_large

    def _refuse_large_head(self) -> None:
        if self._lingering or self.transport.is_closing():
            return  # refused already
        limit = self.limits.max_header_bytes
        log.info("closing a connection: request headers over %d bytes (MAX_HEADER_BYTES)", limit)
        self._count("header_size")
        self._refuse(431, f"request line and headers larger than {limit} bytes (MAX_HEADER_BYTES)")

    # -- a client that does not read its answer ----------------------------------------------------------
    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing():
            log.info("dropping a connection whose client has not read for %g s", self.limits.send_timeout_s)
            self._count("send_timeout")
            self.transport.abort()

    def _on_pause_writing(self) -> None:
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timed_out)

    def _on_resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _stop_timers(self) -> None:
        self._cancel_read_timer()
        self._on_resume_writing()


class LimitedH11Protocol(_LimitsMixin, H11Protocol):
    """uvicorn's h11 protocol with the limits of :class:`ConnectionLimits`; the phase is read from h11's
    state after every event (h11 itself bounds the buffered head: ``h11_max_incomplete_event_size``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_limits()
        next_event = self.conn.next_event

        def checked_next_event() -> Any:
            """h11's next event; a Request whose parsed head is over the limit, or that has both a
            Content-Length and a Transfer-Encoding (request smuggling: h11 would go by the latter and
            keep the connection; httptools refuses it), is a protocol error (400, connection closed)."""
            event = next_event()
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if self._head_over_limit(size):
                    raise h11.RemoteProtocolError("request head too large")
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding")
            return event

        self.conn.next_event = checked_next_event  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter("head")  # the first request's head is timed from the connection's opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # refused: what still arrives is discarded
        super().data_received(data)
        self._sync_phase()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_phase()

    def _sync_phase(self) -> None:
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase == "head" or self.conn.trailing_data[0]:
                self._enter("head")  # a request has begun (or the connection's first one is awaited)
            else:
                self._enter("idle")
        elif state is h11.SEND_BODY:
            self._enter("body")
        else:
            self._enter("idle")

    def send_400_response(self, msg: str) -> None:
        # a head over the limit is raised as a protocol error: by checked_next_event once parsed, by h11
        # while incomplete (h11_max_incomplete_event_size); answer what it was
        incomplete_too_large = (
            self.conn.their_state is h11.ERROR
            and len(self.conn.trailing_data[0]) > self.limits.max_header_bytes
        )
        if self._head_too_large or incomplete_too_large:
            self._refuse_large_head()
            return
        super().send_400_response(msg)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._on_pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._on_resume_writing()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    """The httptools-based protocol class with limits, or ``None`` when httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(_LimitsMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`; the phase follows
        the parser's callbacks, and the bytes of an unfinished head are counted as they arrive (so a huge
        head is refused after at most one read buffer beyond the limit)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._init_limits()
            self._head_bytes = 0  # raw bytes received since the head began (while incomplete)
            self._head_size = 0  # target + headers parsed so far
            self._cycles: weakref.WeakSet[Any] = weakref.WeakSet()  # every request of this connection

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._enter("head")

        def connection_lost(self, exc: Exception | None) -> None:
            # uvicorn marks only the newest request as disconnected: with pipelined requests the one
            # answering and those queued behind it would then write to a closed transport (a 500 and a
            # traceback with uvloop). Every unanswered request of the connection is told, none is started.
            self._stop_timers()
            for cycle in list(self._cycles):
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            self.pipeline.clear()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # refused: what still arrives is discarded
            if self._phase != "body":
                self._head_bytes += len(data)
            super().data_received(data)
            if (
                self._phase != "body"
                and self._head_bytes > self.limits.max_header_bytes
                and not self.transport.is_closing()
            ):
                self._refuse_large_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._enter("head")

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._head_size += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._head_size += len(name) + len(value) + 4

        def on_headers_complete(self) -> None:
            if self._head_over_limit(self._head_size):
                raise ValueError("request head too large")  # httptools raises a parser error: no app runs
            super().on_headers_complete()
            self._cycles.add(self.cycle)
            self._head_bytes = 0
            self._enter("body")

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._refuse_large_head()
                return
            super().send_400_response(msg)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes = 0
            self._enter("idle")

        def pause_writing(self) -> None:
            super().pause_writing()
            self._on_pause_writing()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._on_resume_writing()

    return LimitedHttpToolsProtocol


def limited_protocol(
    http: HTTPChoice, limits: ConnectionLimits, on_refusal: Callable[[str], None] | None = None
) -> type[asyncio.Protocol]:
    """The protocol class for ``--http`` (``auto`` = httptools when installed, else h11) with ``limits``;
    ``on_refusal(reason)`` is called for every connection refused or dropped (``header_size``,
    ``header_timeout``, ``body_timeout``, ``send_timeout``)."""
    base: type[asyncio.Protocol] | None
    if http == "h11":
        base = LimitedH11Protocol
    else:
        base = _httptools_protocol()
        if base is None:
            if http == "httptools":
                raise RuntimeError("--http httptools: httptools is not installed (pip install httptools)")
            base = LimitedH11Protocol
    hooks = (on_refusal,) if on_refusal is not None else ()
    return type(base.__name__, (base,), {"limits": limits, "refusal_hooks": hooks})


def protocol_name(protocol: type[asyncio.Protocol]) -> str:
    """uvicorn's name of the protocol a limited class extends (``HttpToolsProtocol`` or ``H11Protocol``)."""
    for klass in protocol.__mro__:
        if klass.__module__.startswith("uvicorn."):
            return klass.__name__
    return protocol.__name__


def uvicorn_config(
    app: Any,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    http: HTTPChoice = "auto",
    loop: str = "auto",
    log_level: str = "info",
    access_log: bool = True,
) -> uvicorn.Config:
    """The server's configuration: the protocol with :class:`ConnectionLimits` from ``settings`` (refusals
    counted in the app's ``ld4mrec_connections_refused_total``), no WebSockets, the graceful-shutdown
    timeout of ``settings``."""
    limits = ConnectionLimits.from_settings(settings)
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    on_refusal = None if metrics is None else lambda reason: metrics.connections_refused.labels(reason).inc()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=limited_protocol(http, limits, on_refusal),
        ws="none",
        h11_max_incomplete_event_size=limits.max_header_bytes,
        loop=loop,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(math.ceil(settings.shutdown_timeout_s)),
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` (IPv6 when ``host`` has a colon), not yet listening; raises
    ``OSError`` (e.g. the port is in use). Bound *before* the server starts, so that a taken port is the
    first and only error rather than a failure after the start-up log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
