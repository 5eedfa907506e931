"""Fixtures of the service tests: real redis-servers, apps with their lifespan on, the offline reference."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model.artifact import read_artifact
from service.settings import Settings
from tests.service.helpers import Offline, RedisServer, running_client

STORE_KINDS = ("memory", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session (tests isolate themselves by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (to kill and restart)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(
    tiny_artifact: Path, store_kind: str, request: pytest.FixtureRequest
) -> Callable[..., Settings]:
    """Settings for the tiny artifact and the parametrized store (a fresh Redis key prefix per test)."""
    base: dict[str, Any] = {
        "artifact": tiny_artifact,
        "device": "cpu",
        "max_wait_ms": 2.0,
        "precision": "fp32",
    }
    if store_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        base |= {"redis_url": server.url, "redis_prefix": f"test-{uuid.uuid4().hex[:12]}:"}

    def make(**overrides: Any) -> Settings:
        return Settings(**(base | overrides))

    return make


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The service on the tiny artifact with the parametrized history store."""
    with running_client(make_settings()) as client:
        yield client


@pytest.fixture(scope="session")
def offline(tiny_artifact: Path) -> Offline:
    return Offline(read_artifact(tiny_artifact))
