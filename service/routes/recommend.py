"""``GET /recommend/{user_id}``, ``POST /recommend`` (cold start), ``POST /recommend/batch``."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from service.auth import Handler, ReadKeyRoute, check_api_key, document_api_key, presented_keys
from service.dependencies import RecommenderDep
from service.recommender import RankOptions
from service.responses import FastJSONResponse
from service.schemas import (
    ID_MAX_LENGTH,
    ID_PATTERN,
    BatchRecommendRequest,
    BatchRecommendResponse,
    ColdStartRequest,
    RecommendResponse,
)

router = APIRouter(tags=["recommend"], route_class=ReadKeyRoute, dependencies=[Depends(document_api_key)])

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "the API key is required and missing (Authorization: Bearer, or X-API-Key)"},
    403: {"description": "the API key is wrong"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"description": "the request body is larger than MAX_BODY_BYTES"},
    422: {"description": "a parameter is invalid; `detail[].loc` names it"},
    503: {
        "description": "the model is loading, the history store is unreachable, the service is overloaded "
        "or the request timed out (Retry-After)"
    },
}
UserIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=ID_PATTERN,
        description="external user id (1-256 characters, no control characters or line separators)",
    ),
]
IdList = Annotated[
    list[str] | None,
    Query(description="item ids, comma-separated and/or repeated (`?exclude=a,b&exclude=c`)"),
]


_USER_ID = re.compile(ID_PATTERN)
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
_LISTS = frozenset({"exclude", "candidates"})


def plain_options(query_string: bytes) -> RankOptions | None:
    """The options of an ordinary ``GET /recommend/{user_id}`` query (``k`` in ASCII digits, ``exclude_seen``
    true/false/1/0, each at most once; any ``exclude`` / ``candidates``), parsed without FastAPI; ``None``
    for anything else, which FastAPI then parses and validates (and answers 422 where due)."""
    k: int | None = None
    exclude_seen = True
    lists: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in _LISTS:
            lists.setdefault(name, []).append(value)
            continue
        if name in seen:
            return None
        seen.add(name)
        if name == "k":
            # at most 9 digits: int() of a longer string may be refused (Python's 4300-digit limit)
            if not (value.isascii() and value.isdigit() and len(value) <= 9) or int(value) < 1:
                return None
            k = int(value)
        elif name == "exclude_seen":
            if value not in _BOOLS:
                return None
            exclude_seen = _BOOLS[value]
    exclude = split_ids(lists.get("exclude")) or []
    return RankOptions(k, exclude_seen, exclude, split_ids(lists.get("candidates")), where="query")


class PlainReadRoute(ReadKeyRoute):
    """``GET /recommend/{user_id}``, the hot read: an ordinary request (a valid user id,
    :func:`plain_options`, the model loaded) is answered without FastAPI's per-request dependency and
    parameter solving (a third of the event loop's time per request in the profile, see BENCHMARKS.md);
    anything else goes the FastAPI way. Both give the same answer for the same request; the API key is
    checked first either way."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()  # the API key check, then FastAPI

        async def plain(request: Request) -> Response:
            state = request.app.state
            recommender = state.recommender
            user_id = request.path_params.get("user_id", "")
            options = plain_options(request.scope.get("query_string", b""))
            if (
                recommender is None
                or options is None
                or len(user_id) > ID_MAX_LENGTH
                or _USER_ID.search(user_id) is None
            ):
                return await handler(request)
            settings = state.settings
            if ReadKeyRoute.key_required(settings):
                check_api_key(settings, presented_keys(request.headers))
            return FastJSONResponse(await recommender.for_user(user_id, options))

        return plain


def split_ids(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; empty pieces are dropped; ``None`` stays ``None``."""
    if values is None:
        return None
    return [piece for value in values for piece in value.split(",") if piece]


# the hot read has its own route class, hence its own router (the app includes both)
plain_router = APIRouter(
    tags=["recommend"], route_class=PlainReadRoute, dependencies=[Depends(document_api_key)]
)


@plain_router.get(
    "/recommend/{user_id}",
    response_model=RecommendResponse,
    responses={404: {"description": "neither the model nor the history store knows this user"}, **ERRORS},
    summary="Top-k items for a user",
)
async def recommend_user(
    recommender: RecommenderDep,
    user_id: UserIdPath,
    k: Annotated[int | None, Query(ge=1, description="1..MAX_K (default 20, or MAX_K if smaller)")] = None,
    exclude_seen: Annotated[bool, Query(description="leave out the items of the current history")] = True,
    exclude: IdList = None,
    candidates: IdList = None,
) -> FastJSONResponse:
    """Ranks the catalogue for the user's *current* history (stored, else the training history)."""
    options = RankOptions(k, exclude_seen, split_ids(exclude) or [], split_ids(candidates), where="query")
    return FastJSONResponse(await recommender.for_user(user_id, options))


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses=ERRORS,
    summary="Top-k items for a given history",
)
async def recommend_history(recommender: RecommenderDep, body: ColdStartRequest) -> FastJSONResponse:
    """Cold start: ranks the catalogue for the history in the body (a user the model never saw)."""
    options = RankOptions(body.k, body.exclude_seen, body.exclude, body.candidates, where="body")
    return FastJSONResponse(await recommender.for_history(body.history, options))


@router.post(
    "/recommend/batch",
    response_model=BatchRecommendResponse,
    responses={404: {"description": "some users are unknown (all are named)"}, **ERRORS},
    summary="Top-k items for many users",
)
async def recommend_batch(recommender: RecommenderDep, body: BatchRecommendRequest) -> FastJSONResponse:
    """One answer per user, in order; unknown users make the whole call 404 naming them."""
    recommender.check_users(body.user_ids)
    options = RankOptions(body.k, body.exclude_seen, body.exclude, body.candidates, where="body")
    return FastJSONResponse({"results": await recommender.for_users(body.user_ids, options)})
