"""Redis killed mid-test: reads keep working from the artifact, writes are 503 + Retry-After (never a
silently lost write), and the service recovers by itself when Redis is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from fastapi import FastAPI

from service.settings import Settings
from tests.service.helpers import Offline, RedisServer, running_client


def counter(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reads_fall_back_writes_refuse_and_the_service_recovers(
    tiny_artifact: Path, own_redis: RedisServer, offline: Offline
) -> None:
    settings = Settings(artifact=tiny_artifact, device="cpu", redis_url=own_redis.url, redis_backoff_s=0.2)
    user, other = offline.art.user_ids[3], offline.art.user_ids[4]
    new_item = next(i for i in offline.art.item_ids if i not in offline.history_ids(user))
    with running_client(settings) as client:
        assert client.post(f"/users/{user}/interactions", json={"item_ids": [new_item]}).status_code == 200
        assert client.post("/users/only-in-redis/interactions", json={"item_ids": ["1"]}).status_code == 200
        assert client.get(f"/recommend/{user}").json()["history_source"] == "redis"
        deadline = time.monotonic() + 10  # its fold-in is cached in the background, after the answer
        while cast(FastAPI, client.app).state.recommender.pending_writes:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        own_redis.stop()  # -- Redis is gone ------------------------------------------------------------
        read = client.get(f"/recommend/{user}?k=20")
        assert read.status_code == 200 and read.json()["history_source"] == "artifact"
        assert [it["item_id"] for it in read.json()["items"]] == [
            i for i, _ in offline.for_users([user], 20)[0]
        ]
        batch = client.post("/recommend/batch", json={"user_ids": [user, other]})
        assert batch.status_code == 200
        assert {r["history_source"] for r in batch.json()["results"]} == {"artifact"}

        write = client.post(f"/users/{user}/interactions", json={"item_ids": ["2"]})
        assert write.status_code == 503 and write.headers["Retry-After"] == "1"
        assert "nothing was written" in write.json()["detail"]
        only_in_store = client.get("/recommend/only-in-redis")  # only Redis knows this user: 503, not 404
        assert only_in_store.status_code == 503 and "Retry-After" in only_in_store.headers
        assert client.get("/readyz").json()["status"] == "degraded"
        assert client.post("/recommend", json={"history": ["1", "2"]}).status_code == 200  # needs no store

        metrics = client.get("/metrics").text
        assert counter(metrics, "ld4mrec_history_fallback_reads_total ") >= 3
        assert counter(metrics, 'ld4mrec_redis_errors_total{operation="get"}') >= 1

        own_redis.start()  # -- Redis is back (empty: it keeps nothing on disk) --------------------------
        deadline = time.monotonic() + 10
        while (
            write := client.post(f"/users/{user}/interactions", json={"item_ids": ["2"]})
        ).status_code != 200:
            assert write.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.05)
        assert write.json()["version"] == 1  # a new stored history: nothing half-written survived
        assert client.get(f"/recommend/{user}").json()["history_source"] == "redis"
        assert client.get("/readyz").json()["status"] == "ready"
