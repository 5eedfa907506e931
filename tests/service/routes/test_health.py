"""/healthz, /readyz (loading, failed, ready, degraded), /metrics, /model, the API key, OpenAPI."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import service.reloader
from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.service.helpers import Offline, RedisServer, running_client, wait_ready

CONTRACT_METRICS = [
    "ld4mrec_http_requests_total",
    "ld4mrec_http_request_duration_seconds",
    "ld4mrec_http_requests_in_flight",
    "ld4mrec_batch_size",
    "ld4mrec_batch_queue_wait_seconds",
    "ld4mrec_model_forward_seconds",
    "ld4mrec_redis_errors_total",
    "ld4mrec_history_fallback_reads_total",
    "ld4mrec_foldin_cache_hits_total",
    "ld4mrec_foldin_cache_misses_total",
    "ld4mrec_model_info",
    "ld4mrec_model_reloads_total",
]


def test_readyz_is_503_until_the_model_is_loaded(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    load = service.reloader.load_engine

    def slow_load(path: Path, settings: Settings) -> Engine:
        release.wait(10)
        return load(path, settings)

    monkeypatch.setattr(service.reloader, "load_engine", slow_load)
    with TestClient(create_app(make_settings())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        refused = client.get("/recommend/0")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "still loading" in refused.json()["detail"]
        release.set()
        wait_ready(client)
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/recommend/0").status_code == 200


def test_a_corrupt_artifact_is_refused_naming_the_file(
    make_settings: Callable[..., Settings], tiny_artifact: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    (broken / "user_states.npy").write_bytes(b"not an array")
    with TestClient(create_app(make_settings(artifact=broken))) as client:
        for _ in range(500):
            readiness = client.get("/readyz").json()
            if readiness["status"] != "loading":
                break
            threading.Event().wait(0.02)
        assert readiness["status"] == "failed" and "user_states.npy" in readiness["detail"]
        refused = client.get("/recommend/0")
        assert refused.status_code == 503 and "user_states.npy" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_readyz_reports_the_model_and_the_store(
    client: TestClient, offline: Offline, store_kind: str
) -> None:
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["model_version"] == offline.art.model_version
    assert body["history_store"] == store_kind and body["history_store_reachable"] is True


def test_readyz_is_degraded_while_redis_is_unreachable(tiny_artifact: Path, own_redis: RedisServer) -> None:
    settings = Settings(artifact=tiny_artifact, device="cpu", redis_url=own_redis.url)
    with running_client(settings) as client:
        own_redis.stop()
        degraded = client.get("/readyz")
        assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
        assert degraded.json()["history_store_reachable"] is False
        own_redis.start()
        assert client.get("/readyz").json()["status"] == "ready"


def test_model_summarises_the_manifest(client: TestClient, offline: Offline) -> None:
    body = client.get("/model").json()
    art = offline.art
    assert body["model_version"] == art.model_version and body["dataset"] == art.dataset
    assert body["metrics"] == art.metrics and set(body["metrics"]) == {"valid", "test"}
    assert (body["n_users"], body["n_items"]) == (art.n_users, art.n_items)
    assert body["modalities"] == list(art.modality_names) and body["device"] == "cpu"


def test_metrics_exposes_the_contract_without_user_ids(client: TestClient, offline: Offline) -> None:
    user = offline.art.user_ids[37]
    client.get(f"/recommend/{user}")
    client.get("/recommend/nobody-here")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in CONTRACT_METRICS:
        assert f"# TYPE {name} " in text, name
    art = offline.art
    assert f'ld4mrec_model_info{{dataset="{art.dataset}",model_version="{art.model_version}"}} 1.0' in text
    ok = 'ld4mrec_http_requests_total{method="GET",route="/recommend/{user_id}",status_class="2xx"}'
    assert ok in text
    assert 'route="/recommend/{user_id}",status_class="4xx"' in text
    assert 'ld4mrec_http_request_duration_seconds_bucket{le="0.001",' in text
    assert 'ld4mrec_http_request_duration_seconds_bucket{le="5.0",' in text
    assert "nobody-here" not in text and f'"{user}"' not in text


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/recommend/{user_id}",
        "/recommend",
        "/recommend/batch",
        "/users/{user_id}/interactions",
        "/healthz",
        "/readyz",
        "/metrics",
        "/model",
        "/admin/reload",
    } <= set(paths)
    fields = client.get("/openapi.json").json()["components"]["schemas"]["RecommendResponse"]["properties"]
    assert set(fields) == {"user_id", "items", "model_version", "history_source", "cold_start"}


def test_an_unexpected_error_is_500_without_a_traceback(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_client(make_settings(), raise_server_exceptions=False) as client:
        recommender = cast(FastAPI, client.app).state.recommender

        def broken(*_: object) -> None:
            raise ZeroDivisionError("boom")

        monkeypatch.setattr(recommender.engine, "score", broken)
        response = client.get("/recommend/0")
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error; it has been logged"}
        assert "Traceback" not in response.text and "boom" not in response.text
        assert 'status_class="5xx"' in client.get("/metrics").text
