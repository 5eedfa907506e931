"""``GET /model``: a summary of the loaded artifact's manifest."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import ReadKeyRoute, document_api_key
from service.dependencies import RecommenderDep
from service.routes.recommend import ERRORS
from service.schemas import ModelResponse

router = APIRouter(tags=["model"], route_class=ReadKeyRoute, dependencies=[Depends(document_api_key)])


@router.get("/model", response_model=ModelResponse, responses=ERRORS, summary="The loaded model")
async def model_info(recommender: RecommenderDep) -> ModelResponse:
    """Model name, version, dataset, sizes, modalities, offline metrics, device, precision, hyperparameters
    and training run of the loaded model."""
    engine = recommender.engine
    art = engine.artifact
    return ModelResponse(
        model=art.model.name,
        model_version=art.model_version,
        dataset=art.dataset,
        created_at=art.created_at,
        n_users=art.n_users,
        n_items=art.n_items,
        modalities=list(art.modality_names),
        metrics=art.metrics,
        device=str(engine.device),
        precision=engine.precision,
        precision_setting=engine.precision_decision.setting,
        precision_reason=engine.precision_decision.reason,
        bf16_top20_overlap=engine.precision_decision.bf16_top20_overlap,
        hyperparameters=art.model.config.to_dict(),
        fitted=art.model.fitted(),
        training=art.training,
    )
