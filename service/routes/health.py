"""``GET /healthz`` (liveness), ``GET /readyz`` (readiness), ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import MetricsDep, SettingsDep
from service.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """200 while the process serves HTTP."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "the model is loading or failed to load"}},
    summary="Readiness",
)
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """200 once the model is loaded (``degraded`` when the history store is unreachable), else 503; with
    several worker processes, once every worker has loaded it."""
    state = request.app.state
    backend: Literal["memory", "redis"] = "redis" if settings.redis_url else "memory"
    headers = {"Retry-After": str(settings.retry_after_s)}
    if state.recommender is None:
        failed = state.load_error is not None
        body = ReadinessResponse(
            status="failed" if failed else "loading", history_store=backend, detail=state.load_error
        )
        return JSONResponse(status_code=503, content=body.model_dump(), headers=headers)
    announcer = getattr(state, "announcer", None)  # one worker of several: are the others ready too?
    if announcer is not None and (ready := announcer.ready_workers()) < settings.workers:
        body = ReadinessResponse(
            status="loading",
            history_store=backend,
            detail=f"{ready} of {settings.workers} worker processes have loaded the model",
        )
        return JSONResponse(status_code=503, content=body.model_dump(), headers=headers)
    reachable = await state.recommender.store.ping()
    body = ReadinessResponse(
        status="ready" if reachable else "degraded",
        model_version=state.recommender.engine.model_version,
        history_store=backend,
        history_store_reachable=reachable,
        detail=None
        if reachable
        else "history store unreachable: reads use the artifact's histories, writes answer 503",
    )
    return JSONResponse(status_code=200, content=body.model_dump())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Every ``ld4mrec_*`` metric in the Prometheus text format."""
    return Response(content=generate_latest(metrics.exposition()), media_type=CONTENT_TYPE_LATEST)
