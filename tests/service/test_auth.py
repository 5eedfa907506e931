"""API keys: with LD4MREC_API_KEY set, writes and /admin/* need it (Authorization: Bearer or X-API-Key;
401 missing, 403 wrong, constant-time comparison); reads are open unless PROTECT_READS; probes always."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

import service.auth
from service.settings import Settings
from tests.service.helpers import running_client

# the history store plays no part here: the in-process one is enough
pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)

KEY = "s3cret-key"
WRITE = ("POST", "/users/0/interactions", {"item_ids": ["1"]})
RELOAD = ("POST", "/admin/reload", None)
READS = [
    ("GET", "/recommend/0", None),
    ("POST", "/recommend", {"history": ["1"]}),
    ("POST", "/recommend/batch", {"user_ids": ["0"]}),
    ("GET", "/model", None),
]
PROBES = ["/healthz", "/readyz", "/metrics"]


def call(client: TestClient, endpoint: tuple[str, str, Any], headers: dict[str, str] | None = None) -> Any:
    method, path, body = endpoint
    return client.request(method, path, json=body, headers=headers or {})


@pytest.fixture
def keyed(make_settings: Callable[..., Settings]) -> Any:
    with running_client(make_settings(api_key=KEY)) as client:
        yield client


@pytest.mark.parametrize("endpoint", [WRITE, RELOAD], ids=["write", "reload"])
def test_writes_and_admin_need_the_key(keyed: TestClient, endpoint: tuple[str, str, Any]) -> None:
    missing = call(keyed, endpoint)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["detail"] and "X-API-Key" in missing.json()["detail"]
    for wrong in ({"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}, {"X-API-Key": KEY[:-1]}):
        refused = call(keyed, endpoint, wrong)
        assert refused.status_code == 403 and refused.json() == {"detail": "the API key is not valid"}
    assert call(keyed, endpoint, {"Authorization": "Basic " + KEY}).status_code == 401  # not a bearer token
    # one right and one wrong credential is still refused
    both = call(keyed, endpoint, {"X-API-Key": KEY, "Authorization": "Bearer nope"})
    assert both.status_code == 403
    assert call(keyed, endpoint, {"X-API-Key": KEY}).status_code == 200
    assert call(keyed, endpoint, {"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_a_refused_write_writes_nothing(keyed: TestClient) -> None:
    assert call(keyed, ("POST", "/users/auth-victim/interactions", {"item_ids": ["1"]})).status_code == 401
    assert keyed.get("/recommend/auth-victim").status_code == 404  # the user was never created


def test_reads_and_probes_are_open_by_default(keyed: TestClient) -> None:
    for endpoint in READS:
        assert call(keyed, endpoint).status_code == 200, endpoint
    for probe in PROBES:
        assert keyed.get(probe).status_code == 200


def test_protect_reads_keys_the_reads_but_not_the_probes(make_settings: Callable[..., Settings]) -> None:
    with running_client(make_settings(api_key=KEY, protect_reads=True)) as client:
        for endpoint in READS:
            assert call(client, endpoint).status_code == 401, endpoint
            assert call(client, endpoint, {"X-API-Key": "nope"}).status_code == 403, endpoint
            assert call(client, endpoint, {"Authorization": f"Bearer {KEY}"}).status_code == 200, endpoint
        for probe in PROBES:
            assert client.get(probe).status_code == 200


def test_without_a_key_everything_is_open(make_settings: Callable[..., Settings]) -> None:
    with running_client(make_settings(protect_reads=True)) as client:
        for endpoint in [WRITE, RELOAD, *READS]:
            assert call(client, endpoint).status_code == 200, endpoint


def test_keys_are_compared_in_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(service.auth.hmac, "compare_digest", spy)
    assert call(keyed, WRITE, {"X-API-Key": "nope"}).status_code == 403
    assert compared == [(b"nope", KEY.encode())]


def test_openapi_documents_both_key_schemes(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["Bearer"]["scheme"].lower() == "bearer"
    assert schemes["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the API key",
    }
    responses = schema["paths"]["/users/{user_id}/interactions"]["post"]["responses"]
    assert {"401", "403"} <= set(responses)
