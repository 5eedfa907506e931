"""FastAPI dependencies as ``Annotated`` aliases: settings, metrics, the recommender, the reloader, and the
API-key checks (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; constant-time comparison).

With ``API_KEY`` set, writes and ``/admin/*`` need the key (:func:`require_api_key`); reads need it only
with ``PROTECT_READS`` (:func:`require_read_key`). A missing key is 401, a wrong one 403.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ServiceNotReadyError
from service.metrics import ServiceMetrics
from service.recommender import Recommender
from service.reloader import ModelReloader
from service.settings import Settings

__all__ = [
    "MetricsDep",
    "RecommenderDep",
    "ReloaderDep",
    "SettingsDep",
    "require_api_key",
    "require_read_key",
]

API_KEY_HEADER = "X-API-Key"
# Documented in OpenAPI as two alternative schemes; auto_error=False: the checks below answer 401/403.
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKeyHeader", description="the API key"
)
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="Authorization: Bearer <API key>")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def get_recommender(request: Request) -> Recommender:
    """The loaded service state; 503 while the model is loading or after it failed to load."""
    recommender: Recommender | None = request.app.state.recommender
    if recommender is None:
        error = request.app.state.load_error
        raise ServiceNotReadyError(
            f"the model is not available: {error}" if error else "the model is still loading"
        )
    return recommender


def get_reloader(request: Request) -> ModelReloader:
    """The model reloader; 503 before the lifespan has started."""
    reloader: ModelReloader | None = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise ServiceNotReadyError("the service is starting")
    return reloader


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
ReloaderDep = Annotated[ModelReloader, Depends(get_reloader)]


def _credentials(x_api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> list[str]:
    return [key for key in (x_api_key, bearer.credentials if bearer is not None else None) if key]


def check_api_key(settings: Settings, presented: list[str]) -> None:
    """401 when no key was presented, 403 when one is wrong; constant-time comparison."""
    assert settings.api_key is not None
    if not presented:
        raise HTTPException(
            status_code=401,
            detail=f"an API key is required: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.api_key.get_secret_value().encode()
    # every presented key is compared (no early exit), so timing says nothing about which one was wrong
    matches = [hmac.compare_digest(key.encode(), expected) for key in presented]
    if not all(matches):
        raise HTTPException(status_code=403, detail="the API key is not valid")


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Writes and /admin/*: when API_KEY is set, the request must carry it (401 missing, 403 wrong)."""
    if settings.api_key is not None:
        check_api_key(settings, _credentials(x_api_key, bearer))


async def require_read_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reads: open unless PROTECT_READS is true (and API_KEY set); then as :func:`require_api_key`."""
    if settings.api_key is not None and settings.protect_reads:
        check_api_key(settings, _credentials(x_api_key, bearer))
