"""POST /admin/reload: a good artifact is swapped in (model_version changes, metrics follow), in-flight
requests finish on the old model, a corrupt or missing-file artifact is refused naming the file while the
old model keeps serving, paths outside the artifact root are refused, one reload at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import service.reloader
from service.app import create_app
from service.engine import Engine, ScoredItems, ScoringRequest
from service.settings import Settings
from tests.service.helpers import Offline, copy_artifact, running_client

# the store plays no part in a reload: the in-process one is enough
pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)


@pytest.fixture
def artifacts(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A root with ``v1`` (the tiny artifact) and ``v2`` (the same weights, another model_version)."""
    root = tmp_path / "artifacts"
    root.mkdir()
    copy_artifact(tiny_artifact, root / "v1")
    copy_artifact(tiny_artifact, root / "v2", model_version="tiny-v2")
    return root


@pytest.fixture
def client(make_settings: Callable[..., Settings], artifacts: Path) -> Iterator[TestClient]:
    with running_client(make_settings(artifact=artifacts / "v1")) as client:
        yield client


def reloads(client: TestClient) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ld4mrec_model_reloads_total{"):
            out[line.split('result="')[1].split('"')[0]] = float(line.split()[-1])
    return out


def test_a_good_reload_swaps_the_model(client: TestClient, offline: Offline, artifacts: Path) -> None:
    old = offline.art.model_version
    assert reloads(client) == {"success": 0.0, "failure": 0.0}  # both series exist before any reload
    assert client.get("/recommend/0").json()["model_version"] == old

    response = client.post("/admin/reload", json={"artifact": str(artifacts / "v2")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "reloaded" and body["previous_model_version"] == old
    assert body["model_version"] == "tiny-v2" and body["artifact"] == str((artifacts / "v2").resolve())
    assert client.get("/recommend/0").json()["model_version"] == "tiny-v2"
    assert client.post("/recommend", json={"history": ["1"]}).json()["model_version"] == "tiny-v2"
    assert client.get("/model").json()["model_version"] == "tiny-v2"
    assert client.get("/readyz").json()["model_version"] == "tiny-v2"
    text = client.get("/metrics").text
    assert 'model_version="tiny-v2"' in text and f'model_version="{old}"' not in text
    assert reloads(client) == {"success": 1.0, "failure": 0.0}

    relative = client.post("/admin/reload", json={"artifact": "v1"})  # relative to the artifact root
    assert relative.status_code == 200 and relative.json()["model_version"] == old
    again = client.post("/admin/reload")  # no body: the configured directory (v1) read again
    assert again.status_code == 200 and again.json()["previous_model_version"] == old


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ({"flip_byte_of": "model.cnet.out.weight.npy"}, "model.cnet.out.weight.npy"),
        ({"flip_byte_of": "user_states.npy"}, "user_states.npy"),
        ({"remove": "model.item_factors.npy"}, "model.item_factors.npy"),
    ],
)
def test_a_refused_artifact_keeps_the_old_model_serving(
    client: TestClient, offline: Offline, artifacts: Path, damage: dict[str, str], named: str
) -> None:
    broken = copy_artifact(artifacts / "v2", artifacts / "broken", **damage)
    response = client.post("/admin/reload", json={"artifact": str(broken)})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "artifact"] and error["type"] == "artifact_refused"
    assert named in error["msg"] and f"still serving model {offline.art.model_version}" in error["msg"]
    served = client.get("/recommend/0")
    assert served.status_code == 200 and served.json()["model_version"] == offline.art.model_version
    assert reloads(client) == {"success": 0.0, "failure": 1.0}


@pytest.mark.parametrize("path", ["/etc", "../../..", "v1/../../outside", "a\x00b"])
def test_paths_outside_the_artifact_root_are_refused(client: TestClient, path: str) -> None:
    response = client.post("/admin/reload", json={"artifact": path})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "artifact"]
    assert reloads(client) == {"success": 0.0, "failure": 0.0}  # nothing was even tried


def test_a_configured_artifact_root_widens_or_narrows_what_reload_may_read(
    make_settings: Callable[..., Settings], artifacts: Path, tiny_artifact: Path
) -> None:
    with running_client(make_settings(artifact=artifacts / "v1", artifact_root=artifacts / "v2")) as client:
        assert client.post("/admin/reload", json={"artifact": str(artifacts / "v2")}).status_code == 200
        assert client.post("/admin/reload").status_code == 200  # the configured artifact always may
        assert client.post("/admin/reload", json={"artifact": str(tiny_artifact)}).status_code == 422


def test_in_flight_requests_finish_on_the_old_model(
    client: TestClient, offline: Offline, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_engine = cast(FastAPI, client.app).state.recommender.engine
    score = old_engine.score
    entered, release = threading.Event(), threading.Event()

    def held(requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        entered.set()
        release.wait(10)
        return score(requests)

    monkeypatch.setattr(old_engine, "score", held)
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(client.get, "/recommend/0")
        assert entered.wait(10)  # its pass is running on the old model
        reload = client.post("/admin/reload", json={"artifact": str(artifacts / "v2")})
        assert reload.status_code == 200  # the reload did not wait for the pass
        later = pool.submit(client.get, "/recommend/1")
        time.sleep(0.1)
        release.set()
        assert in_flight.result(10).json()["model_version"] == offline.art.model_version
        assert later.result(10).json()["model_version"] == "tiny-v2"


def test_one_reload_at_a_time(client: TestClient, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load = service.reloader.load_engine
    started, release = threading.Event(), threading.Event()

    def slow_load(path: Path, settings: Settings) -> Engine:
        started.set()
        release.wait(10)
        return load(path, settings)

    monkeypatch.setattr(service.reloader, "load_engine", slow_load)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.post, "/admin/reload", json={"artifact": str(artifacts / "v2")})
        assert started.wait(10)
        second = client.post("/admin/reload")
        assert second.status_code == 409 and "in progress" in second.json()["detail"]
        assert client.get("/recommend/0").status_code == 200  # serving meanwhile
        release.set()
        assert first.result(10).status_code == 200


def test_a_reload_repairs_a_failed_start(make_settings: Callable[..., Settings], artifacts: Path) -> None:
    broken = copy_artifact(artifacts / "v2", artifacts / "broken", flip_byte_of="model.z_in.npy")
    with TestClient(create_app(make_settings(artifact=broken))) as client:
        for _ in range(500):
            if client.get("/readyz").json()["status"] == "failed":
                break
            time.sleep(0.02)
        assert "model.z_in.npy" in client.get("/readyz").json()["detail"]
        fixed = client.post("/admin/reload", json={"artifact": str(artifacts / "v2")})
        assert fixed.status_code == 200 and fixed.json()["previous_model_version"] is None
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/recommend/0").json()["model_version"] == "tiny-v2"
