"""LD4MREC_PRECISION: the service serves int8 (dynamic int8 nn.Linear) or bf16 when asked, says so in
``GET /model`` and its start-up log, keeps it across reloads; ``auto`` (the default) serves bf16 only on a
device with native bf16 and a measured top-20 overlap with fp32 >= 0.95, else fp32, and says why; int8 on a
GPU stops ``ld4mrec-serve`` at start-up (the settings' validation of the value itself is in
test_settings.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from model.precision import quantised_layers
from service import engine as engine_module
from service.cli import main
from service.settings import Settings
from tests.service.helpers import Offline, copy_artifact, running_client

# the precision concerns the model only: the in-process store is enough
memory_store = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)


def served_model_layers(client: TestClient) -> list[str]:
    return quantised_layers(cast(FastAPI, client.app).state.recommender.engine.model.net)


@memory_store
def test_fp32_is_served_and_reported(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert settings.precision == "fp32"
    with running_client(settings) as client:
        body = client.get("/model").json()
        assert body["precision"] == "fp32" and body["device"] == "cpu"
        assert body["precision_setting"] == "fp32" and body["bf16_top20_overlap"] is None
        assert served_model_layers(client) == []


def test_auto_is_the_default() -> None:
    assert Settings().precision == "auto"


@memory_store
def test_auto_serves_fp32_on_a_cpu_without_native_bf16(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "native_bf16", lambda device: False)
    with running_client(make_settings(precision="auto")) as client:
        body = client.get("/model").json()
        assert (body["precision"], body["precision_setting"]) == ("fp32", "auto")
        assert "no native bf16" in body["precision_reason"] and body["bf16_top20_overlap"] is None


@memory_store
@pytest.mark.parametrize("threshold", [0.95, 1.01])
def test_auto_serves_bf16_where_the_measured_overlap_is_high_enough(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    offline: Offline,
    threshold: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With native bf16 (pretended), auto measures bf16's overlap on training users: bf16 when it reaches
    the bar (0.95), fp32 when it does not (a bar of 1.01 no overlap reaches)."""
    monkeypatch.setattr(engine_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(engine_module, "AUTO_MIN_OVERLAP", threshold)
    with caplog.at_level(logging.INFO), running_client(make_settings(precision="auto")) as client:
        body = client.get("/model").json()
        overlap = body["bf16_top20_overlap"]
        assert overlap is not None and 0.0 <= overlap <= 1.0
        assert overlap >= 0.95  # the tiny model's bf16 ranking is close to fp32's
        expected = "bf16" if overlap >= threshold else "fp32"
        assert (body["precision"], body["precision_setting"]) == (expected, "auto")
        assert f"{overlap:.4f}" in body["precision_reason"]
        got = client.get("/recommend/0", params={"k": 20})
        assert got.status_code == 200 and len(got.json()["items"]) == 20
        fp32 = {item for item, _ in offline.for_users(["0"], 20)[0]}
        assert len({i["item_id"] for i in got.json()["items"]} & fp32) >= 15
    assert any(f"precision {expected} (auto:" in r.getMessage() for r in caplog.records)


@memory_store
def test_bf16_serves_recommendations(make_settings: Callable[..., Settings], offline: Offline) -> None:
    with running_client(make_settings(precision="bf16")) as client:
        assert client.get("/model").json()["precision"] == "bf16"
        got = client.get("/recommend/0", params={"k": 20})
        assert got.status_code == 200, got.text
        fp32 = {item for item, _ in offline.for_users(["0"], 20)[0]}
        assert len({i["item_id"] for i in got.json()["items"]} & fp32) >= 15
        cold = client.post("/recommend", json={"history": ["1", "2"], "k": 5})
        assert cold.status_code == 200 and len(cold.json()["items"]) == 5


@memory_store
def test_int8_serves_recommendations_and_reports_int8(
    make_settings: Callable[..., Settings], offline: Offline, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="ld4mrec.service"),
        running_client(make_settings(precision="int8")) as client,
    ):
        body = client.get("/model").json()
        assert body["precision"] == "int8" and body["device"] == "cpu"
        assert "cnet.out" in served_model_layers(client)

        got = client.get("/recommend/0", params={"k": 20})
        assert got.status_code == 200, got.text
        items = got.json()["items"]
        assert len(items) == 20 and [i["rank"] for i in items] == list(range(1, 21))
        assert not {i["item_id"] for i in items} & set(offline.history_ids("0"))  # seen items left out
        fp32 = {item for item, _ in offline.for_users(["0"], 20)[0]}
        assert len({i["item_id"] for i in items} & fp32) >= 14  # int8 ranks close to fp32

        cold = client.post("/recommend", json={"history": ["1", "2"], "k": 5})
        assert cold.status_code == 200 and len(cold.json()["items"]) == 5
        batch = client.post("/recommend/batch", json={"user_ids": ["0", "1", "2"], "k": 10})
        assert batch.status_code == 200 and [len(r["items"]) for r in batch.json()["results"]] == [10] * 3
    assert any("precision int8" in r.getMessage() and "ready" in r.getMessage() for r in caplog.records)


@memory_store
def test_a_reload_keeps_the_precision(
    make_settings: Callable[..., Settings], tiny_artifact: Path, tmp_path: Path
) -> None:
    copy_artifact(tiny_artifact, tmp_path / "v1")
    copy_artifact(tiny_artifact, tmp_path / "v2", model_version="tiny-v2")
    with running_client(make_settings(artifact=tmp_path / "v1", precision="int8")) as client:
        reloaded = client.post("/admin/reload", json={"artifact": "v2"})
        assert reloaded.status_code == 200, reloaded.text
        body = client.get("/model").json()
        assert (body["model_version"], body["precision"]) == ("tiny-v2", "int8")
        assert "cnet.out" in served_model_layers(client)
        assert client.get("/recommend/0").json()["model_version"] == "tiny-v2"


def test_serve_refuses_int8_on_a_gpu_at_start_up(
    tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("LD4MREC_PRECISION", "int8")
    monkeypatch.setenv("LD4MREC_DEVICE", "cuda")
    assert main(["--artifact", str(tiny_artifact)]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "precision 'int8' runs on the CPU only" in err
