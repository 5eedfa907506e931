"""Domain errors of the service and the handlers that turn every error into JSON ``{"detail": ...}``.

Validation errors are 422 with FastAPI's list of ``{"loc", "msg", "type"}`` entries (``loc`` names the
field; a refused reload artifact is one too, naming the file), capped: at most :data:`MAX_ERRORS`
entries, short strings, the offending ``input`` only when it is a short scalar (never unbounded input
echoed back); a missing user is 404; a reload while another runs, or a user whose stored history is not
valid data, is 409; an unreachable history store, a model still loading or a full scoring queue is 503
with ``Retry-After``; a client that disconnected gets nothing (counted as 499); anything unexpected is
logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.batcher import BatcherClosedError, BatcherOverloadedError
from service.history_store import CorruptHistoryError, StoreUnavailableError

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "MAX_ERRORS",
    "ArtifactRefusedError",
    "FieldError",
    "ReloadInProgressError",
    "ServiceNotReadyError",
    "UnknownItemsError",
    "UnknownUserError",
    "install_exception_handlers",
    "public_errors",
]

log = logging.getLogger(__name__)

_SHOWN_IDS = 20  # at most this many ids are quoted in a message
MAX_ERRORS = 20  # validation errors listed in one answer, at most
_SHORT = 64  # characters of a loc element or an echoed input, at most
CLIENT_CLOSED_REQUEST = 499  # nginx's code for a request whose client went away (never sent)


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


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters and made encodable (lone surrogates escaped)."""
    cut = value if len(value) <= limit else value[:limit] + "..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def _small_scalar(value: Any) -> bool:
    """True for an input short enough to echo back (never a list, an object or a long string)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= _SHORT


def public_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors as answered: at most MAX_ERRORS entries (then one that counts the
    rest), ``loc`` / ``msg`` strings cut short, ``input`` only when it is a short scalar."""
    public: list[dict[str, Any]] = []
    for error in errors[:MAX_ERRORS]:
        loc = [p if isinstance(p, int) else _text(str(p), _SHORT) for p in error.get("loc", ())]
        entry: dict[str, Any] = {
            "loc": loc,
            "msg": _text(str(error.get("msg", "")), 200),
            "type": _text(str(error.get("type", "")), _SHORT),
        }
        value = error.get("input")
        if "input" in error and _small_scalar(value):
            entry["input"] = _text(value, _SHORT) if isinstance(value, str) else value
        public.append(entry)
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        public.append({"loc": [], "msg": f"and {more} more errors", "type": "too_many_errors"})
    return public


def install_exception_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register JSON handlers for every error the service can raise."""
    retry_after = {"Retry-After": str(retry_after_s)}

    async def field_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return JSONResponse(status_code=422, content={"detail": exc.detail()})

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(status_code=422, content={"detail": public_errors(exc.errors())})

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

    async def corrupt_history(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CorruptHistoryError)
        return JSONResponse(status_code=409, content={"detail": exc.public_message()})

    async def client_gone(request: Request, _: Exception) -> Response:
        log.info("%s %s: the client disconnected before its body was read", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody receives it; counted as a 4xx

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
    app.add_exception_handler(CorruptHistoryError, corrupt_history)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
