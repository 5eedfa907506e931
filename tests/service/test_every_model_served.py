"""Every registered model is served unchanged: GET /recommend, a posted click is folded in (the clicked item
leaves the next answer, and the answer changes), and a cold-start POST /recommend with a history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.registry import get_model
from service.settings import Settings
from tests.contract.test_models import RUN, TINY_CONFIGS
from tests.service.helpers import running_client
from training.dataset import InteractionData
from training.export import export_artifact
from training.trainer import train

SERVED = sorted(name for name in TINY_CONFIGS if name != get_model("ld4mrec").name)


@pytest.fixture(scope="module", params=SERVED)
def artifact(
    request: pytest.FixtureRequest, synthetic_data: InteractionData, tmp_path_factory
) -> tuple[str, Path]:
    """(name, artifact) of each model but LD4MRec (its tiny artifact is served by the whole suite)."""
    name = str(request.param)
    config = get_model(name).config_class.from_dict(TINY_CONFIGS[name])
    result = train(synthetic_data, name, config, RUN, progress=False)
    return name, export_artifact(result, synthetic_data, RUN, tmp_path_factory.mktemp(name) / "art")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_model_is_served_with_fold_in_and_cold_start(
    artifact: tuple[str, Path], store: str, request: pytest.FixtureRequest
) -> None:
    name, path = artifact
    overrides: dict[str, Any] = {}
    if store == "redis":
        server = request.getfixturevalue("redis_server")
        overrides = {"redis_url": server.url, "redis_prefix": f"served-{name}:"}
    settings = Settings(artifact=path, device="cpu", **overrides)
    with running_client(settings) as client:
        assert client.get("/model").json()["model"] == name
        before = client.get("/recommend/5", params={"k": 10}).json()
        assert before["history_source"] == "artifact" and len(before["items"]) == 10
        top = before["items"][0]["item_id"]
        written = client.post("/users/5/interactions", json={"item_ids": [top]})
        assert written.status_code == 200, written.text
        after = client.get("/recommend/5", params={"k": 10}).json()
        assert after["history_source"] == store
        after_ids = [it["item_id"] for it in after["items"]]
        assert top not in after_ids and after_ids != [it["item_id"] for it in before["items"]]
        cold = client.post("/recommend", json={"history": [top, after_ids[0]], "k": 5})
        assert cold.status_code == 200, cold.text
        body = cold.json()
        assert body["cold_start"] and len(body["items"]) == 5
        assert not {top, after_ids[0]} & {it["item_id"] for it in body["items"]}
