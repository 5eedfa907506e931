"""Two service replicas (two ``python -m service`` processes) sharing one Redis, as behind a load
balancer: a click written through one is in the next answer of the other, concurrent writes through both
lose nothing, the fold-in cache is shared, and a reload (good or refused) on one leaves the other serving."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.service.helpers import (
    Offline,
    RedisServer,
    ServiceProcess,
    assert_same_ranking,
    copy_artifact,
    http_json,
    wait_http_ready,
)


@dataclass
class Replicas:
    a: ServiceProcess
    b: ServiceProcess
    root: Path
    redis_url: str
    prefix: str

    def wait_foldin_cached(self, user: str, model_version: str, timeout_s: float = 10.0) -> None:
        """Until the user's fold-in for their current history version is in Redis (a read caches it in
        the background, after its answer)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                version, key = client.hmget(f"{self.prefix}user:{user}", ["version", "foldin_key"])
                if version is not None and key == f"{model_version}:{int(version)}".encode():
                    return
                assert time.monotonic() < deadline, "the fold-in was never cached"
                time.sleep(0.01)
        finally:
            client.close()


@pytest.fixture(scope="module")
def replicas(
    tiny_artifact: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    """Replicas A and B of the tiny artifact (``v1``), one Redis, one key prefix, one artifact root."""
    root = tmp_path_factory.mktemp("replicas")
    copy_artifact(tiny_artifact, root / "v1")
    copy_artifact(tiny_artifact, root / "v2", model_version="tiny-v2")
    copy_artifact(tiny_artifact, root / "broken", flip_byte_of="user_states.npy")
    prefix = f"replicas-{uuid.uuid4().hex[:12]}:"
    env = {
        "LD4MREC_REDIS_URL": redis_server.url,
        "LD4MREC_REDIS_PREFIX": prefix,
        "LD4MREC_ARTIFACT_ROOT": str(root),
        "LD4MREC_MAX_WAIT_MS": "1",
    }
    a = ServiceProcess(root / "v1", root / "a.log", env)
    b = ServiceProcess(root / "v1", root / "b.log", env)
    try:
        for replica in (a, b):  # both start side by side
            replica.start(wait=False)
        for replica in (a, b):
            wait_http_ready(replica.base, lambda r=replica: r.proc is not None and r.proc.poll() is None, 120)
        yield Replicas(a, b, root, redis_server.url, prefix)
    finally:
        a.stop()
        b.stop()


def recommend(replica: ServiceProcess, user: str, k: int = 20) -> dict:
    status, body = http_json(f"{replica.base}/recommend/{user}?k={k}")
    assert status == 200, body
    return body


def click(replica: ServiceProcess, user: str, items: list[str]) -> dict:
    status, body = http_json(f"{replica.base}/users/{user}/interactions", "POST", {"item_ids": items})
    assert status == 200, body
    return body


def counter(replica: ServiceProcess, name: str) -> float:
    """An unlabelled counter of the replica's /metrics."""
    with urllib.request.urlopen(f"{replica.base}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def test_a_click_through_one_replica_is_in_the_next_answer_of_the_other(
    replicas: Replicas, offline: Offline
) -> None:
    user = offline.art.user_ids[21]
    before = recommend(replicas.b, user)
    assert before["history_source"] == "artifact"
    clicked = [it["item_id"] for it in before["items"][:3]]
    assert click(replicas.a, user, clicked)["version"] == 1

    after = recommend(replicas.b, user)  # the other replica
    assert after["history_source"] == "redis"
    assert not {it["item_id"] for it in after["items"]} & set(clicked)
    history = offline.history_ids(user) + clicked
    assert_same_ranking(after["items"], offline.top_k([history], [offline.user_index(user)], 20)[0])

    more = [it["item_id"] for it in after["items"][:2]]
    assert click(replicas.b, user, more)["version"] == 2
    back = recommend(replicas.a, user)
    expected = offline.top_k([history + more], [offline.user_index(user)], 20)[0]
    assert_same_ranking(back["items"], expected)
    assert back["items"] == recommend(replicas.b, user)["items"]


def test_concurrent_writes_through_both_replicas_lose_nothing(replicas: Replicas, offline: Offline) -> None:
    user = offline.art.user_ids[22]
    seen = set(offline.history_ids(user))
    new = [i for i in offline.art.item_ids if i not in seen][:24]
    targets = [replicas.a if n % 2 == 0 else replicas.b for n in range(len(new))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda pair: click(pair[0], user, [pair[1]]), zip(targets, new, strict=True)))
    assert sorted(r["version"] for r in results) == list(range(1, len(new) + 1))
    assert all(r["added"] == 1 for r in results)
    assert max(r["history_length"] for r in results) == len(seen) + len(new)
    for replica in (replicas.a, replicas.b):  # every new item is now excluded by both
        answer = recommend(replica, user, k=100)
        assert not {it["item_id"] for it in answer["items"]} & set(new)


def test_the_fold_in_cache_is_shared(replicas: Replicas, offline: Offline) -> None:
    user = offline.art.user_ids[23]
    click(replicas.a, user, [offline.art.item_ids[0], offline.art.item_ids[1]])
    version = recommend(replicas.a, user)["model_version"]  # computes the fold-in and caches it in Redis
    replicas.wait_foldin_cached(user, version)
    hits, misses = (counter(replicas.b, f"ld4mrec_foldin_cache_{k}_total") for k in ("hits", "misses"))
    recommend(replicas.b, user)
    assert counter(replicas.b, "ld4mrec_foldin_cache_hits_total") == hits + 1
    assert counter(replicas.b, "ld4mrec_foldin_cache_misses_total") == misses


def test_a_reload_on_one_replica_leaves_the_other_serving(replicas: Replicas, offline: Offline) -> None:
    user = offline.art.user_ids[24]
    v1 = recommend(replicas.b, user)["model_version"]
    statuses: list[int] = []
    done = threading.Event()

    def keep_asking_b() -> None:
        while not done.is_set():
            statuses.append(http_json(f"{replicas.b.base}/recommend/{user}")[0])

    poller = threading.Thread(target=keep_asking_b)
    poller.start()
    try:
        status, body = http_json(f"{replicas.a.base}/admin/reload", "POST", {"artifact": "v2"}, timeout=60)
    finally:
        done.set()
        poller.join(timeout=30)
    assert status == 200 and body["model_version"] == "tiny-v2", body
    assert statuses and set(statuses) == {200}, "B answered every request during A's reload"
    assert recommend(replicas.a, user)["model_version"] == "tiny-v2"
    assert recommend(replicas.b, user)["model_version"] == v1

    # Both still share the histories: a click through B (v1) is in A's next answer (v2); A's fold-in of
    # it is its own (the cache is keyed by model version), and the ranking is the model's.
    clicked = [it["item_id"] for it in recommend(replicas.b, user)["items"][:2]]
    click(replicas.b, user, clicked)
    misses = counter(replicas.a, "ld4mrec_foldin_cache_misses_total")
    recommend(replicas.b, user)  # B caches its v1 fold-in
    replicas.wait_foldin_cached(user, v1)
    answer = recommend(replicas.a, user)
    assert answer["model_version"] == "tiny-v2" and answer["history_source"] == "redis"
    assert counter(replicas.a, "ld4mrec_foldin_cache_misses_total") == misses + 1
    expected = offline.top_k([offline.history_ids(user) + clicked], [offline.user_index(user)], 20)[0]
    assert_same_ranking(answer["items"], expected)

    # A refused reload on B changes nothing anywhere.
    status, body = http_json(f"{replicas.b.base}/admin/reload", "POST", {"artifact": "broken"}, timeout=60)
    assert status == 422 and "user_states.npy" in str(body)
    assert recommend(replicas.b, user)["model_version"] == v1
    assert recommend(replicas.a, user)["model_version"] == "tiny-v2"
