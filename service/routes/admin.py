"""``POST /admin/reload``: load a new artifact beside the current one, verify it and swap atomically."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from service.auth import WriteKeyRoute, document_api_key
from service.dependencies import ReloaderDep
from service.routes.recommend import AUTH_ERRORS
from service.schemas import ReloadRequest, ReloadResponse

router = APIRouter(
    prefix="/admin", tags=["admin"], route_class=WriteKeyRoute, dependencies=[Depends(document_api_key)]
)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        **AUTH_ERRORS,
        409: {"description": "another model load is in progress"},
        422: {
            "description": "the path is outside ARTIFACT_ROOT, or the artifact is refused (the message "
            "names the file); the old model keeps serving"
        },
    },
    summary="Hot-reload the model",
)
async def reload_model(
    reloader: ReloaderDep, body: Annotated[ReloadRequest | None, Body()] = None
) -> ReloadResponse:
    """Reads and verifies the artifact (checksums, shapes), builds the model and warms it up in a worker
    thread while the current model keeps serving, then swaps it in: requests already running finish on the
    old model, later ones (and their `model_version`) use the new one. A refused artifact changes nothing.
    The same reload of the configured directory runs on SIGHUP."""
    outcome = await reloader.reload(body.artifact if body is not None else None)
    return ReloadResponse(
        status="reloaded",
        previous_model_version=outcome.previous_model_version,
        model_version=outcome.model_version,
        artifact=str(outcome.artifact),
        seconds=round(outcome.seconds, 4),
    )
