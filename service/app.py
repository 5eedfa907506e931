"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan creates the history store and the micro-batcher, then loads the artifact in a worker
thread; until it is loaded ``/readyz`` and the model endpoints answer 503 (Retry-After). All state the
routes use lives in one object, ``app.state.recommender`` (``None`` until loaded), whose ``engine`` can
be swapped atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import numpy as np
import torch
from fastapi import FastAPI

from model.artifact import ArtifactError
from service import __version__
from service.batcher import MicroBatcher
from service.engine import Engine, ScoringRequest
from service.errors import install_exception_handlers
from service.history_store import HistoryStore, InMemoryHistoryStore, RedisHistoryStore
from service.metrics import ServiceMetrics
from service.middleware import HTTPMetricsMiddleware
from service.recommender import Recommender
from service.routes import health, interactions, model, recommend
from service.settings import Settings, resolve_device

__all__ = ["create_app", "create_store"]

log = logging.getLogger("ld4mrec.service")

DESCRIPTION = """\
Recommendations from an LD4MRec artifact with single-step, forward-free inference.

`GET /recommend/{user_id}` ranks the catalogue for the user's current history: the history stored by
`POST /users/{user_id}/interactions` (Redis or in-process), else the training history. Concurrent
requests share batched forward passes. Errors are JSON `{"detail": ...}`.
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
    return InMemoryHistoryStore()


def _load_engine(settings: Settings) -> Engine:
    """Read the artifact, build the model and run one warm-up pass (worker thread)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = Engine.load(settings.artifact, resolve_device(settings.device))
    engine.score([ScoringRequest(-1, np.zeros(0, dtype=np.int64), None, 1)])
    return engine


async def _load_model(app: FastAPI, store: HistoryStore, batcher: MicroBatcher) -> None:
    settings: Settings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    try:
        engine = await asyncio.to_thread(_load_engine, settings)
    except ArtifactError as exc:
        app.state.load_error = f"artifact refused: {exc}"
        log.error("cannot serve: the artifact is refused: %s", exc)
        return
    except Exception as exc:
        app.state.load_error = f"model could not be loaded: {type(exc).__name__}: {exc}"
        log.exception("cannot serve: loading %s failed", settings.artifact)
        return
    metrics.set_model(engine.model_version, engine.dataset)
    app.state.recommender = Recommender(engine, store, batcher, metrics, settings)
    log.info("ready: model %s, history store %s", engine.model_version, store.backend)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store = create_store(settings, app.state.metrics)
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_s, app.state.metrics)
    batcher.start()
    loader = asyncio.create_task(_load_model(app, store, batcher), name="ld4mrec-load-model")
    try:
        yield
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        app.state.recommender = None
        await batcher.stop()
        await store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app; the model is loaded by its lifespan (run it under uvicorn or a TestClient)."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="LD4MRec recommendation service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.recommender = None
    app.state.load_error = None
    install_exception_handlers(app, settings.retry_after_s)
    app.add_middleware(HTTPMetricsMiddleware, metrics=app.state.metrics)
    for module in (recommend, interactions, model, health):
        app.include_router(module.router)
    return app
