"""ASGI middleware: HTTP metrics by route template, cancelling requests whose client disconnected, the
request timeout, the request-body size limit.

Order (outermost first): metrics -> disconnect -> timeout -> body limit -> the app, so 413s, timeouts and
disconnects are counted and a slowly sent body counts against the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

__all__ = [
    "BodySizeLimitMiddleware",
    "DisconnectMiddleware",
    "HTTPMetricsMiddleware",
    "RequestTimeoutMiddleware",
]

log = logging.getLogger(__name__)


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer ``{"detail": detail}`` with ``status`` straight from a middleware."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str:
    """The route template of a request (``/recommend/{user_id}``); ``unmatched`` for unknown paths.

    Requests answered before routing (a 413) are matched against the app's routes here."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class HTTPMetricsMiddleware:
    """Labels are the route *template* (``/recommend/{user_id}``, never a user id), method, status class."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, method, status class) -> its duration and count series: labels() once, not per request
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics = self.metrics
        metrics.http_in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        except BaseException:
            status = 500
            raise
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (route_template(scope), method, f"{status // 100}xx")
            series = self._series.get(key)
            if series is None:
                series = (metrics.http_duration.labels(*key), metrics.http_requests.labels(*key))
                self._series[key] = series
            series[0].observe(time.perf_counter() - started)
            series[1].inc()
            metrics.http_in_flight.dec()


class BodyTooLargeError(HTTPException):
    """The request body exceeds MAX_BODY_BYTES (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (MAX_BODY_BYTES)")


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from ``Content-Length``, else while the body streams in
    (a chunked body is cut off as soon as it passes the limit; it is never read whole)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False  # the server refuses a malformed Content-Length itself
                if too_large:
                    await send_json(send, 413, BodyTooLargeError(limit).detail, {"Connection": "close"})
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)  # FastAPI passes HTTPExceptions from body reading on
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as exc:
            if started:
                raise
            await send_json(send, 413, exc.detail, {"Connection": "close"})


class RequestTimeoutMiddleware:
    """A request not answered within ``timeout_s`` is cancelled and answered 503 + Retry-After (never a
    500). Paths starting with one of ``exempt_prefixes`` (the admin routes: a reload may take long) are
    not timed."""

    def __init__(
        self, app: ASGIApp, timeout_s: float, retry_after_s: int, exempt_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timeout = asyncio.timeout(self.timeout_s)
        try:
            async with timeout:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not timeout.expired():
                raise
            log.warning(
                "%s %s timed out after %.1f s", scope.get("method"), scope.get("path"), self.timeout_s
            )
            if started:
                return  # the answer was already under way: nothing more can be sent
            await send_json(
                send,
                503,
                f"the request timed out after {self.timeout_s:g} s (REQUEST_TIMEOUT_S); retry",
                {"Retry-After": str(self.retry_after_s)},
            )


def _has_body(scope: Scope) -> bool:
    """True when the request announces a body (a non-zero Content-Length, or Transfer-Encoding)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class DisconnectMiddleware:
    """A request whose client disconnects before its answer starts is cancelled, for paths starting with
    one of ``prefixes``: its scoring rows are cancelled in the queue, so the batcher drops them unscored.

    ASGI tells an app about a disconnect only when it calls ``receive()``, which a route does not do once
    it has read its body; so a watcher task waits on ``receive()`` once the body has been read (at once
    for a request without one) and cancels the request's task on ``http.disconnect``. Counted in
    ``ld4mrec_client_disconnects_total`` and in the HTTP metrics with status 499 (nothing is sent).
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        replay: deque[Message] = deque()  # read by the watcher before the app asked for it
        body_read = asyncio.Event()
        if not _has_body(scope):
            replay.append(await receive())  # the empty body: at hand at once
            body_read.set()
        started = gone = False

        async def app_receive() -> Message:
            if replay:
                return replay.popleft()
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            if not started:  # once the answer is under way there is nothing left to save
                gone = True
                task.cancel()

        watcher = asyncio.create_task(watch(), name="ld4mrec-disconnect-watch")
        try:
            await self.app(scope, app_receive, tracking_send)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:
                raise  # cancelled by someone else (shutdown, a timeout outside)
            self.metrics.client_disconnects.inc()
            log.info(
                "%s %s: the client disconnected; the request was dropped", scope["method"], scope["path"]
            )
            with contextlib.suppress(Exception):  # the server ignores it (or raises): the client is gone
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
