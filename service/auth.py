"""API keys: who may write, reload and (optionally) read.

With ``API_KEY`` set, writes and ``/admin/*`` need the key (:class:`WriteKeyRoute`); reads need it only
with ``PROTECT_READS`` (:class:`ReadKeyRoute`). The key comes as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; every presented key is compared in constant time (``hmac.compare_digest``). No key
is 401, a wrong one 403. The check runs in the route class, *before* the body is read or validated, so
an unauthenticated request learns nothing about validation and costs no JSON parsing; then the body
passes :mod:`service.body_guard`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from service.body_guard import JSONBodyRoute
from service.settings import Settings

__all__ = ["API_KEY_HEADER", "ReadKeyRoute", "WriteKeyRoute", "check_api_key", "document_api_key"]

API_KEY_HEADER = "X-API-Key"
# Declared so that OpenAPI documents the two alternative schemes; auto_error=False: the checks answer.
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKeyHeader", description="the API key"
)
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="Authorization: Bearer <API key>")


async def document_api_key(
    x_api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Puts the key schemes into OpenAPI; the check itself is the route class's (before the body)."""


def presented_keys(headers: Headers) -> list[str]:
    """The keys a request carries: ``X-API-Key`` and/or the token of ``Authorization: Bearer``."""
    keys = [headers[API_KEY_HEADER]] if headers.get(API_KEY_HEADER) else []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    return keys


def check_api_key(settings: Settings, presented: list[str]) -> None:
    """401 when no key was presented, 403 when one is wrong (``settings.api_key`` must be set)."""
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


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class _KeyedRoute(JSONBodyRoute):
    """A route whose handler checks the API key before the body is read (then the body guard runs)."""

    @staticmethod
    def key_required(settings: Settings) -> bool:
        raise NotImplementedError

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        key_required = self.key_required

        async def checked(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            if key_required(settings):
                check_api_key(settings, presented_keys(request.headers))
            return await handler(request)

        return checked


class WriteKeyRoute(_KeyedRoute):
    """Writes and admin: keyed whenever ``API_KEY`` is set."""

    @staticmethod
    def key_required(settings: Settings) -> bool:
        return settings.api_key is not None


class ReadKeyRoute(_KeyedRoute):
    """Reads: keyed only when ``API_KEY`` is set and ``PROTECT_READS`` is true."""

    @staticmethod
    def key_required(settings: Settings) -> bool:
        return settings.api_key is not None and settings.protect_reads
