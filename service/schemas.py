"""Request and response bodies (pydantic); they are the documented JSON contract of the API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from model.precision import Precision

__all__ = [
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "BatchRecommendRequest",
    "BatchRecommendResponse",
    "ColdStartRequest",
    "HealthResponse",
    "ItemId",
    "InteractionsRequest",
    "InteractionsResponse",
    "ModelResponse",
    "ReadinessResponse",
    "ReloadRequest",
    "ReloadResponse",
    "RecommendResponse",
    "RecommendedItem",
    "UserId",
]

ID_MAX_LENGTH = 256
# no control characters, line or paragraph separators (the trainer's id rule, training/idmap.py; they
# would reach logs and Redis keys)
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
HistorySource = Literal["artifact", "memory", "redis", "request"]


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float = Field(description="model score; higher is better (comparable within one answer only)")
    rank: int = Field(ge=1, description="1 = best")


class RecommendResponse(BaseModel):
    user_id: str | None = Field(description="the user asked about; null for POST /recommend")
    items: list[RecommendedItem] = Field(
        description="at most k items, best first; fewer if fewer are eligible"
    )
    model_version: str
    history_source: HistorySource = Field(
        description=(
            "where the history came from: 'artifact' (the training history: the user has no stored "
            "history, or the store is unreachable), 'memory' / 'redis' (the history store), "
            "'request' (POST /recommend)"
        )
    )
    cold_start: bool = Field(description="true when the model never saw this user in training")


class _RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(
        None, ge=1, description="how many items; 1..MAX_K (default 20, or MAX_K if smaller)"
    )
    exclude_seen: bool = Field(True, description="leave out the items of the current history")
    exclude: list[ItemId] = Field(
        default_factory=list, description="item ids never to return (unknown ids ignored)"
    )
    candidates: list[ItemId] | None = Field(None, description="when given, rank only these item ids")


class ColdStartRequest(_RankingOptions):
    """Recommendations for a history the caller supplies (a user the model never saw)."""

    history: list[ItemId] = Field(default_factory=list, description="external item ids the user clicked")


class BatchRecommendRequest(_RankingOptions):
    """Recommendations for many users in one call; the options apply to every user."""

    user_ids: list[UserId] = Field(min_length=1, description="users to answer, in order")


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse] = Field(description="one answer per requested user, in request order")


class InteractionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[ItemId] = Field(min_length=1, description="external ids of the items the user clicked")


class InteractionsResponse(BaseModel):
    user_id: str
    added: int = Field(description="items that were not in the history yet (duplicates are ignored)")
    history_length: int = Field(description="items in the stored history now")
    version: int = Field(description="history version; bumped by every write that changes it")
    created: bool = Field(
        description="true when this write created the user: neither the model (training) nor the history "
        "store knew them before; false for every later write, and for a training user's first write "
        "(which seeds the stored history with the training history)"
    )


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    status: Literal["ready", "degraded", "loading", "failed"] = Field(
        description="'degraded': the model is loaded but the history store is unreachable"
    )
    model_version: str | None = None
    history_store: Literal["memory", "redis"]
    history_store_reachable: bool | None = None
    detail: str | None = None


class ModelResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="the registered model name, e.g. 'ld4mrec', 'ease', 'popularity'")
    model_version: str
    dataset: str
    created_at: str
    n_users: int
    n_items: int
    modalities: list[str]
    metrics: dict[str, dict[str, float]] = Field(
        description="offline metrics: {'valid': {...}, 'test': {...}}"
    )
    device: str
    precision: Precision = Field(
        description="precision of the served model: 'fp32', 'bf16' (a bfloat16 copy of the network) or "
        "'int8' (dynamic int8 nn.Linear layers)"
    )
    precision_setting: str = Field(description="LD4MREC_PRECISION: 'auto', 'fp32', 'bf16' or 'int8'")
    precision_reason: str = Field(description="why this precision is served (with 'auto': what was measured)")
    bf16_top20_overlap: float | None = Field(
        description="bf16's mean top-20 overlap with fp32 on training users, measured at load by 'auto' "
        "(null when not measured)"
    )
    hyperparameters: dict[str, Any] = Field(description="the model's configuration")
    fitted: dict[str, Any] = Field(description="what fitting chose, e.g. EASE's L2 strength")
    training: dict[str, Any] = Field(description="the training run: seed, epochs, best epoch, timing")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="artifact directory to load (absolute, or relative to ARTIFACT_ROOT, under which it "
        "must lie); default: the configured directory (ARTIFACT) read again",
    )


class ReloadResponse(BaseModel):
    status: Literal["reloaded"]
    previous_model_version: str | None = Field(description="the model served before; null if none was")
    model_version: str = Field(description="the model served now (also in every later response)")
    artifact: str = Field(description="the directory that was loaded")
    seconds: float = Field(description="time to read, verify, build and warm up the new model")
