"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan creates the history store and the micro-batcher, then loads the artifact in a worker
thread (:class:`~service.reloader.ModelReloader`); until it is loaded ``/readyz`` and the model endpoints
answer 503 (Retry-After). All state the routes use lives in one object, ``app.state.recommender``
(``None`` until loaded), whose ``engine`` a reload (``POST /admin/reload``, SIGHUP) swaps atomically.

Shutdown (SIGTERM/SIGINT under uvicorn): uvicorn stops accepting connections and waits for the requests
in flight; then the lifespan stops reloads, drains the batcher (everything queued is scored) and closes
the history store (the Redis pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI

from service import __version__
from service.batcher import MicroBatcher
from service.docs import install_docs
from service.errors import install_exception_handlers
from service.history_store import HistoryStore, InMemoryHistoryStore, RedisHistoryStore
from service.metrics import ServiceMetrics
from service.middleware import (
    BodySizeLimitMiddleware,
    DisconnectMiddleware,
    HTTPMetricsMiddleware,
    RequestTimeoutMiddleware,
)
from service.reloader import ModelReloader
from service.routes import admin, health, interactions, model, recommend
from service.settings import Settings
from service.workers import ANNOUNCE_SIGNAL, ReloadAnnouncer

__all__ = ["create_app", "create_store"]

log = logging.getLogger("ld4mrec.service")

DESCRIPTION = """\
Recommendations from an LD4MRec artifact with single-step, forward-free inference.

`GET /recommend/{user_id}` ranks the catalogue for the user's current history: the history stored by
`POST /users/{user_id}/interactions` (Redis or in-process), else the training history. Concurrent
requests share batched forward passes. Errors are JSON `{"detail": ...}`.

When the server has an API key (`LD4MREC_API_KEY`), writes and `/admin/*` need it, as
`Authorization: Bearer <key>` or `X-API-Key: <key>` (401 missing, 403 wrong); reads need it only with
`LD4MREC_PROTECT_READS=true`. `/healthz`, `/readyz` and `/metrics` are always open.
"""


def create_store(settings: Settings, metrics: ServiceMetrics) -> HistoryStore:
    """Redis when ``REDIS_URL`` is set, else the in-process store."""
    if settings.redis_url:
        return RedisHistoryStore(
            settings.redis_url,
            metrics,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_connect_timeout_s,
            max_connections=settings.redis_max_connections,
            retries=settings.redis_retries,
            backoff_s=settings.redis_backoff_s,
        )
    return InMemoryHistoryStore(max_users=settings.memory_max_users)


def _install_signals(reloader: ModelReloader, announcer: ReloadAnnouncer | None) -> Callable[[], object]:
    """SIGHUP reloads the configured artifact; in a worker of several, SIGUSR1 loads the artifact another
    worker announced (:mod:`service.workers`). Returns the undo. Only possible on the main thread's loop
    (uvicorn's); under a TestClient (another thread) there are no signal handlers."""
    loop = asyncio.get_running_loop()
    handlers: dict[int, Callable[[], object]] = {signal.SIGHUP: reloader.reload_in_background}
    if announcer is not None:
        handlers[ANNOUNCE_SIGNAL] = lambda: reloader.follow(announcer)
    try:
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        log.debug("no SIGHUP handler: not on the main thread's event loop")
        return lambda: None

    def undo() -> None:
        for sig in handlers:
            loop.remove_signal_handler(sig)

    return undo


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    if settings.api_key is None:
        log.warning("LD4MREC_API_KEY is not set: writes and /admin/reload are open to every client")
    store = create_store(settings, metrics)
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_s, metrics, max_queue=settings.max_queue)
    batcher.start()
    announcer: ReloadAnnouncer | None = app.state.announcer
    reloader = ModelReloader(app.state, settings, store, batcher, metrics, announcer)
    app.state.reloader = reloader
    reloader.start(on_failure=app.state.on_load_failure, artifact=app.state.start_artifact)
    remove_signals = _install_signals(reloader, announcer)
    try:
        yield
    finally:
        remove_signals()
        log.info("shutting down: in-flight requests are done; draining the scoring queue")
        await reloader.close()
        drained = await batcher.stop(timeout_s=settings.shutdown_timeout_s)
        if app.state.recommender is not None:
            await app.state.recommender.drain()  # fold-in cache writes under way
        app.state.recommender = None
        await store.close()
        log.info("shutdown complete: %d queued scoring requests drained, history store closed", drained)


def create_app(
    settings: Settings | None = None,
    on_load_failure: Callable[[str], None] | None = None,
    announcer: ReloadAnnouncer | None = None,
    start_artifact: Path | None = None,
) -> FastAPI:
    """The service app; the model is loaded by its lifespan (run it under uvicorn or a TestClient).

    ``on_load_failure(message)`` is called when the start-up artifact is refused (the CLI stops the
    server then); without it the app keeps running with ``/readyz`` = ``failed``. ``announcer``: in a
    worker of several (:mod:`service.workers`), how a reload reaches the other workers;
    ``start_artifact``: the artifact to load at start-up instead of ``settings.artifact`` (what the other
    workers serve after a reload).
    """
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="LD4MRec recommendation service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.recommender = None
    app.state.load_error = None
    app.state.reloader = None
    app.state.on_load_failure = on_load_failure
    app.state.announcer = announcer
    app.state.start_artifact = start_artifact
    install_exception_handlers(app, settings.retry_after_s)
    # added innermost first: metrics -> disconnect -> timeout -> body limit -> routes
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestTimeoutMiddleware,
        timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        exempt_prefixes=("/admin/",),
    )
    # only the reads are cancelled when their client goes: a write is finished (or refused) either way
    app.add_middleware(DisconnectMiddleware, metrics=app.state.metrics, prefixes=("/recommend",))
    app.add_middleware(HTTPMetricsMiddleware, metrics=app.state.metrics)
    app.include_router(recommend.plain_router)  # GET /recommend/{user_id}
    for module in (recommend, interactions, model, admin, health):
        app.include_router(module.router)
    install_docs(app)
    return app
