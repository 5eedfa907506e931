"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (schemathesis + hypothesis):
valid and invalid inputs for every operation, including the write and admin endpoints, sent with no key,
a wrong key and the right key (both header forms) to a real uvicorn server. No input gives a 5xx; keys
are enforced exactly as documented. Bounded: a fixed number of examples per operation, no shrinking
database, deterministic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import copy_artifact, serve_in_thread

KEY = "fuzz-key"
KEYED = {("POST", "/users/{user_id}/interactions"), ("POST", "/admin/reload")}
AUTH_HEADERS = {"authorization", "x-api-key"}
CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong": {"X-API-Key": "not-the-key"},
    "bearer": {"Authorization": f"Bearer {KEY}"},
    "header": {"X-API-Key": KEY},
}

# the schema the server publishes: built from the same app code (the test below checks they are equal)
schema = schemathesis.openapi.from_dict(create_app(Settings(api_key=SecretStr(KEY))).openapi())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=40,
    deterministic=True,
    with_security_parameters=False,  # the test picks the credentials itself
)


@pytest.fixture(scope="module")
def base_url(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    artifact = copy_artifact(tiny_artifact, root / "current")
    limits: dict[str, Any] = {
        "max_ids": 50,
        "max_history": 50,
        "max_batch_users": 20,
        "max_body_bytes": 65536,
    }
    with serve_in_thread(Settings(artifact=artifact, device="cpu", api_key=SecretStr(KEY), **limits)) as base:
        yield base


def test_the_fuzzed_schema_is_the_served_one(base_url: str) -> None:
    served = httpx.get(f"{base_url}/openapi.json").json()
    assert served == schema.raw_schema


@schema.parametrize()
@schema.given(credentials=st.sampled_from(sorted(CREDENTIALS)))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_input_gives_a_server_error(case: Any, credentials: str, base_url: str) -> None:
    generated = {k: v for k, v in (case.headers or {}).items() if k.lower() not in AUTH_HEADERS}
    headers = generated | CREDENTIALS[credentials]
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    assert response.status_code < 500, (
        f"{response.status_code} {response.text[:500]}\n{case.as_curl_command()}"
    )
    if response.status_code >= 400:
        assert "detail" in response.json(), response.text[:500]  # every error is JSON {"detail": ...}
    keyed = (case.method.upper(), case.path) in KEYED
    if keyed and credentials == "none":
        assert response.status_code == 401, response.text[:500]
    elif keyed and credentials == "wrong":
        assert response.status_code == 403, response.text[:500]
    elif not keyed or credentials in ("bearer", "header"):
        assert response.status_code not in (401, 403), response.text[:500]
