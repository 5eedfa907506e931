"""FastAPI dependencies as ``Annotated`` aliases: settings, metrics, the recommender, the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from service.errors import ServiceNotReadyError
from service.metrics import ServiceMetrics
from service.recommender import Recommender
from service.settings import Settings

__all__ = ["MetricsDep", "RecommenderDep", "SettingsDep", "require_api_key"]

API_KEY_HEADER = "X-API-Key"


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


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(alias=API_KEY_HEADER, include_in_schema=False)] = None,
) -> None:
    """When API_KEY is set, the request must carry it in ``X-API-Key`` (401 otherwise)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected):
        raise HTTPException(
            status_code=401,
            detail=f"missing or invalid {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
