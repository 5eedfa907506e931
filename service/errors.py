"""Domain errors of the service and the handlers that turn every error into JSON ``{"detail": ...}``.

Validation errors are 422 with FastAPI's list of ``{"loc", "msg", "type"}`` entries (``loc`` names the
field; a refused reload artifact is one too, naming the file); a missing user is 404; a reload while
another runs is 409; an unreachable history store, a model still loading or a full scoring queue is 503
with ``Retry-After``; anything unexpected is logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batcher import BatcherClosedError, BatcherOverloadedError
from service.history_store import StoreUnavailableError

__all__ = [
    "ArtifactRefusedError",
    "FieldError",
    "ReloadInProgressError",
    "ServiceNotReadyError",
    "UnknownItemsError",
    "UnknownUserError",
    "install_exception_handlers",
]

log = logging.getLogger(__name__)

_SHOWN_IDS = 20  # at most this many ids are quoted in a message


def _quote(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


class FieldError(ValueError):
    """A request field holds a value the service refuses (answered 422, ``loc`` names the field)."""

    def __init__(self, loc: Sequence[str | int], message: str, error_type: str = "value_error") -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.message = message
        self.error_type = error_type

    def detail(self) -> list[dict[str, object]]:
        return [{"loc": list(self.loc), "msg": self.message, "type": self.error_type}]


class UnknownItemsError(FieldError):
    """Item ids the loaded model does not know (answered 422 naming them)."""

    def __init__(self, loc: Sequence[str | int], item_ids: Sequence[str]) -> None:
        super().__init__(
            loc, f"unknown item ids (not in the model's catalogue): {_quote(item_ids)}", "unknown_item"
        )
        self.item_ids = list(item_ids)


class ArtifactRefusedError(FieldError):
    """A reload's artifact was refused (answered 422; the message names the file; the old model stays)."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(loc, message, "artifact_refused")


class ReloadInProgressError(RuntimeError):
    """Another model (re)load is running (answered 409)."""


class UnknownUserError(LookupError):
    """Users neither the model nor the history store knows (answered 404)."""

    def __init__(self, user_ids: Sequence[str]) -> None:
        noun = "user_id" if len(user_ids) == 1 else "user_ids"
        super().__init__(
            f"unknown {noun} {_quote(user_ids)}: not in the model and no stored history; "
            "POST /users/{user_id}/interactions creates a user, POST /recommend serves a history directly"
        )
        self.user_ids = list(user_ids)


class ServiceNotReadyError(RuntimeError):
    """The model is not loaded (yet, or it failed to load) (answered 503)."""


def install_exception_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register JSON handlers for every error the service can raise."""
    retry_after = {"Retry-After": str(retry_after_s)}

    async def field_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return JSONResponse(status_code=422, content={"detail": exc.detail()})

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    async def unknown_user(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    async def store_unavailable(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StoreUnavailableError)
        log.warning("%s", exc)
        if exc.operation == "append":
            detail = f"the history store is unreachable: nothing was written; retry in {retry_after_s} s"
        else:
            detail = (
                "the history store is unreachable and the model has no history for this user; "
                f"retry in {retry_after_s} s"
            )
        return JSONResponse(status_code=503, content={"detail": detail}, headers=retry_after)

    async def not_ready(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers=retry_after)

    async def overloaded(_: Request, exc: Exception) -> JSONResponse:
        log.warning("load shed: %s", exc)
        return JSONResponse(status_code=503, content={"detail": f"{exc}; retry"}, headers=retry_after)

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error; it has been logged"})

    app.add_exception_handler(FieldError, field_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(UnknownUserError, unknown_user)
    app.add_exception_handler(StoreUnavailableError, store_unavailable)
    app.add_exception_handler(ServiceNotReadyError, not_ready)
    app.add_exception_handler(BatcherClosedError, not_ready)
    app.add_exception_handler(BatcherOverloadedError, overloaded)
    app.add_exception_handler(ReloadInProgressError, conflict)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
