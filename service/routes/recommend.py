"""``GET /recommend/{user_id}``, ``POST /recommend`` (cold start), ``POST /recommend/batch``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from service.auth import ReadKeyRoute, document_api_key
from service.dependencies import RecommenderDep
from service.recommender import RankOptions
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


def split_ids(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; empty pieces are dropped; ``None`` stays ``None``."""
    if values is None:
        return None
    return [piece for value in values for piece in value.split(",") if piece]


@router.get(
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
) -> RecommendResponse:
    """Ranks the catalogue for the user's *current* history (stored, else the training history)."""
    options = RankOptions(k, exclude_seen, split_ids(exclude) or [], split_ids(candidates), where="query")
    return await recommender.for_user(user_id, options)


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses=ERRORS,
    summary="Top-k items for a given history",
)
async def recommend_history(recommender: RecommenderDep, body: ColdStartRequest) -> RecommendResponse:
    """Cold start: ranks the catalogue for the history in the body (a user the model never saw)."""
    options = RankOptions(body.k, body.exclude_seen, body.exclude, body.candidates, where="body")
    return await recommender.for_history(body.history, options)


@router.post(
    "/recommend/batch",
    response_model=BatchRecommendResponse,
    responses={404: {"description": "some users are unknown (all are named)"}, **ERRORS},
    summary="Top-k items for many users",
)
async def recommend_batch(recommender: RecommenderDep, body: BatchRecommendRequest) -> BatchRecommendResponse:
    """One answer per user, in order; unknown users make the whole call 404 naming them."""
    recommender.check_users(body.user_ids)
    options = RankOptions(body.k, body.exclude_seen, body.exclude, body.candidates, where="body")
    return BatchRecommendResponse(results=await recommender.for_users(body.user_ids, options))
