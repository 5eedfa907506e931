"""A user's bad stored data affects that user only (issue 14, item 6): a Redis key of another type, or a
stored history that is not valid data, answers 409 for that user (reads and writes; the record is left
untouched), is logged and counted in ``ld4mrec_history_corrupt_total``, and never trips the store's
backoff or counts as a Redis error: other users' reads and writes go on at once. Real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.helpers import Offline, RedisServer, running_client

pytestmark = pytest.mark.parametrize("store_kind", ["redis"], indirect=True)


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    # a long backoff: had the bad key tripped it, every other user's write would be 503 for 30 s
    with running_client(make_settings(redis_backoff_s=30.0)) as client:
        yield client


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


def key(client: TestClient, user: str) -> str:
    return f"{cast(FastAPI, client.app).state.settings.redis_prefix}user:{user}"


def sample(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def others_are_served(client: TestClient, offline: Offline) -> None:
    """Reads and writes of other users succeed at once (no backoff, no fallback)."""
    user = offline.art.user_ids[5]
    write = client.post(f"/users/{user}/interactions", json={"item_ids": [offline.art.item_ids[0]]})
    assert write.status_code == 200, write.text
    read = client.get(f"/recommend/{user}")
    assert read.status_code == 200 and read.json()["history_source"] == "redis"
    assert client.get(f"/recommend/{offline.art.user_ids[6]}").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(
    "plant",
    [
        lambda r, k: r.set(k, "a string"),
        lambda r, k: r.rpush(k, "1", "2"),
        lambda r, k: r.sadd(k, "1"),
    ],
    ids=["string", "list", "set"],
)
def test_a_key_of_another_type_affects_only_its_user(
    client: TestClient, raw: redis.Redis, offline: Offline, plant: Callable[[redis.Redis, str], Any]
) -> None:
    victim = offline.art.user_ids[3]  # a training user: no silent fallback to the artifact either
    plant(raw, key(client, victim))
    before = raw.dump(key(client, victim))

    read = client.get(f"/recommend/{victim}")
    assert read.status_code == 409 and repr(victim) in read.json()["detail"], read.text
    assert "not valid data" in read.json()["detail"]
    others_are_served(client, offline)

    write = client.post(f"/users/{victim}/interactions", json={"item_ids": ["1"]})
    assert write.status_code == 409 and "nothing was written" in write.json()["detail"]
    others_are_served(client, offline)

    batch = client.post("/recommend/batch", json={"user_ids": [offline.art.user_ids[7], victim]})
    assert batch.status_code == 409 and repr(victim) in batch.json()["detail"]
    assert client.post("/recommend/batch", json={"user_ids": [offline.art.user_ids[7]]}).status_code == 200

    assert raw.dump(key(client, victim)) == before  # left untouched
    assert sample(client, 'ld4mrec_history_corrupt_total{operation="get"}') == 1
    assert sample(client, 'ld4mrec_history_corrupt_total{operation="append"}') == 1
    assert sample(client, 'ld4mrec_history_corrupt_total{operation="get_many"}') == 1
    assert "ld4mrec_redis_errors_total{" not in client.get("/metrics").text  # no store failure counted


@pytest.mark.parametrize(
    "fields",
    [
        {"items": "not json", "version": "1"},
        {"items": '{"a": 1}', "version": "1"},
        {"items": '["1", 2]', "version": "1"},
        {"items": '"1"', "version": "1"},
        {"items": b"\xff\xfe", "version": "1"},
        {"items": '["1", "2"]', "version": "one"},
        {"items": '["1", "2"]', "version": "1.5"},
    ],
    ids=["not-json", "object", "not-strings", "a-string", "not-utf8", "version-word", "version-float"],
)
def test_a_stored_history_that_is_not_valid_data_affects_only_its_user(
    client: TestClient, raw: redis.Redis, offline: Offline, fields: dict[str, str | bytes]
) -> None:
    """Was a 500 on read."""
    victim = "corrupt-user"
    raw.hset(key(client, victim), mapping=cast(Any, fields))
    before = raw.hgetall(key(client, victim))
    read = client.get(f"/recommend/{victim}")
    assert read.status_code == 409 and "not valid data" in read.json()["detail"], read.text
    write = client.post(f"/users/{victim}/interactions", json={"item_ids": ["3"]})
    assert write.status_code == 409 and "nothing was written" in write.json()["detail"], write.text
    assert raw.hgetall(key(client, victim)) == before
    others_are_served(client, offline)
    assert sample(client, 'ld4mrec_history_corrupt_total{operation="get"}') == 1


def test_an_empty_stored_history_is_valid(client: TestClient, raw: redis.Redis, offline: Offline) -> None:
    raw.hset(key(client, "empty-user"), mapping={"items": "{}", "version": "3"})  # Lua's encoding of []
    read = client.get("/recommend/empty-user")
    assert read.status_code == 200 and read.json()["history_source"] == "redis"
    write = client.post("/users/empty-user/interactions", json={"item_ids": ["3"]})
    assert write.status_code == 200 and write.json()["version"] == 4
