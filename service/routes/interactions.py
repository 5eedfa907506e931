"""``POST /users/{user_id}/interactions``: append clicks to a user's online history."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import WriteKeyRoute, document_api_key
from service.dependencies import RecommenderDep
from service.routes.recommend import ERRORS, UserIdPath
from service.schemas import InteractionsRequest, InteractionsResponse

router = APIRouter(tags=["interactions"], route_class=WriteKeyRoute, dependencies=[Depends(document_api_key)])


@router.post(
    "/users/{user_id}/interactions",
    response_model=InteractionsResponse,
    responses=ERRORS,
    summary="Record clicks of a user",
)
async def add_interactions(
    recommender: RecommenderDep,
    user_id: UserIdPath,
    body: InteractionsRequest,
) -> InteractionsResponse:
    """Appends the items to the user's stored history (duplicates are ignored; a new user is created).

    The next ``GET /recommend/{user_id}`` ranks for the new history and leaves these items out.
    When the history store is unreachable nothing is written and the answer is 503 with Retry-After.
    """
    result = await recommender.add_interactions(user_id, body.item_ids)
    return InteractionsResponse(
        user_id=user_id,
        added=result.added,
        history_length=result.length,
        version=result.version,
        created=result.created,
    )
