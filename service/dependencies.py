"""FastAPI dependencies as ``Annotated`` aliases: settings, metrics, the recommender, the reloader.

They are ``async def`` so that FastAPI calls them on the event loop (a plain ``def`` dependency is run
in a worker thread on every request). The API-key check is not a dependency: FastAPI reads the body
before it solves dependencies, so the key is checked earlier, by the route classes of
:mod:`service.auth`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ServiceNotReadyError
from service.metrics import ServiceMetrics
from service.recommender import Recommender
from service.reloader import ModelReloader
from service.settings import Settings

__all__ = ["MetricsDep", "RecommenderDep", "ReloaderDep", "SettingsDep"]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_recommender(request: Request) -> Recommender:
    """The loaded service state; 503 while the model is loading or after it failed to load."""
    recommender: Recommender | None = request.app.state.recommender
    if recommender is None:
        error = request.app.state.load_error
        raise ServiceNotReadyError(
            f"the model is not available: {error}" if error else "the model is still loading"
        )
    return recommender


async def get_reloader(request: Request) -> ModelReloader:
    """The model reloader; 503 before the lifespan has started."""
    reloader: ModelReloader | None = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise ServiceNotReadyError("the service is starting")
    return reloader


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
ReloaderDep = Annotated[ModelReloader, Depends(get_reloader)]
