"""ASGI middleware recording the HTTP metrics (duration, count, in-flight) by route template."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

__all__ = ["HTTPMetricsMiddleware"]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class HTTPMetricsMiddleware:
    """Labels are the route *template* (``/recommend/{user_id}``, never a user id), method, status class."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            labels = {"route": route, "method": method, "status_class": f"{status // 100}xx"}
            metrics.http_duration.labels(**labels).observe(time.perf_counter() - started)
            metrics.http_requests.labels(**labels).inc()
            metrics.http_in_flight.dec()
