"""Both history stores: seeding, idempotent appends, versions, trimming, the fold-in cache, atomicity;
and the Redis store's failure path (errors counted, StoreUnavailableError, backoff, recovery)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from service.history_store import HistoryStore, InMemoryHistoryStore, RedisHistoryStore, StoreUnavailableError
from service.metrics import ServiceMetrics
from tests.service.helpers import RedisServer

T = TypeVar("T")
SEED = ["a", "b", "c"]


def run_with(
    store_kind: str, request: pytest.FixtureRequest, body: Callable[[HistoryStore], Awaitable[T]]
) -> T:
    """Run ``body(store)`` on a fresh store of the given kind (Redis: a fresh key prefix)."""

    async def main() -> T:
        store: HistoryStore
        if store_kind == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisHistoryStore(server.url, ServiceMetrics(), prefix=f"test-{uuid.uuid4().hex[:12]}:")
        else:
            store = InMemoryHistoryStore()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_first_write_seeds_then_appends_idempotently(store_kind: str, request: pytest.FixtureRequest) -> None:
    async def body(store: HistoryStore) -> None:
        assert await store.get("u1", "m1") is None
        first = await store.append("u1", ["x", "b", "x"], lambda: SEED, max_len=100)
        assert (first.version, first.added, first.length, first.created) == (1, 1, 4, True)
        stored = await store.get("u1", "m1")
        assert stored is not None and stored.item_ids == ("a", "b", "c", "x") and stored.version == 1
        again = await store.append("u1", ["x", "a"], lambda: pytest.fail("seeded twice"), max_len=100)
        assert (again.version, again.added, again.length, again.created) == (1, 0, 4, False)
        more = await store.append("u1", ["y"], None, max_len=100)
        assert (more.version, more.added, more.length) == (2, 1, 5)
        fresh = await store.append("new-user", ["z"], None, max_len=100)
        assert fresh.created and fresh.length == 1
        many = await store.get_many(["new-user", "nobody", "u1"], "m1")
        assert [h.item_ids if h else None for h in many] == [("z",), None, ("a", "b", "c", "x", "y")]

    run_with(store_kind, request, body)


def test_history_is_trimmed_to_its_newest_items(store_kind: str, request: pytest.FixtureRequest) -> None:
    async def body(store: HistoryStore) -> None:
        result = await store.append("u", ["d", "e"], lambda: SEED, max_len=3)
        assert result.length == 3
        stored = await store.get("u", "m")
        assert stored is not None and stored.item_ids == ("c", "d", "e")

    run_with(store_kind, request, body)


def test_foldin_cache_is_valid_for_one_model_and_history_version(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    async def body(store: HistoryStore) -> None:
        await store.append("u", ["x"], lambda: SEED, max_len=100)
        await store.put_foldin("u", 1, "m1", b"\x00\x01\x02\x03")
        hit = await store.get("u", "m1")
        assert hit is not None and hit.foldin == b"\x00\x01\x02\x03"
        other_model = await store.get("u", "m2")
        assert other_model is not None and other_model.foldin is None
        await store.append("u", ["y"], None, max_len=100)  # version 2: the cached fold-in is stale
        stale = await store.get("u", "m1")
        assert stale is not None and stale.version == 2 and stale.foldin is None
        await store.put_foldin("u", 1, "m1", b"late")  # a late write for an old version is ignored
        still = await store.get("u", "m1")
        assert still is not None and still.foldin is None

    run_with(store_kind, request, body)


def test_concurrent_writers_lose_nothing(store_kind: str, request: pytest.FixtureRequest) -> None:
    async def body(store: HistoryStore) -> None:
        results = await asyncio.gather(
            *(store.append("u", [f"i{n}"], lambda: SEED, max_len=1000) for n in range(30))
        )
        stored = await store.get("u", "m")
        assert stored is not None
        assert set(stored.item_ids) == set(SEED) | {f"i{n}" for n in range(30)}
        assert stored.version == 30 and sorted(r.version for r in results) == list(range(1, 31))
        assert sum(r.created for r in results) == 1

    run_with(store_kind, request, body)


def test_unreachable_redis_raises_counts_and_recovers(own_redis: RedisServer) -> None:
    async def main() -> dict[str, Any]:
        metrics = ServiceMetrics()
        store = RedisHistoryStore(own_redis.url, metrics, prefix="t:", backoff_s=30.0)
        await store.append("u", ["x"], None, max_len=10)
        own_redis.stop()
        out: dict[str, Any] = {}
        with pytest.raises(StoreUnavailableError) as read_error:
            await store.get("u", "m")
        out["operation"] = read_error.value.operation
        out["errors"] = metrics.registry.get_sample_value("ld4mrec_redis_errors_total", {"operation": "get"})
        with pytest.raises(StoreUnavailableError):  # within the backoff: no Redis call at all
            await store.append("u", ["y"], None, max_len=10)
        out["append_errors"] = metrics.registry.get_sample_value(
            "ld4mrec_redis_errors_total", {"operation": "append"}
        )
        out["ping_down"] = await store.ping()
        own_redis.start()
        out["ping_up"] = await store.ping()  # a probe always tries Redis, and a success ends the backoff
        out["written"] = await store.append("u", ["z"], None, max_len=10)
        await store.close()
        return out

    out = asyncio.run(main())
    assert out["operation"] == "get" and out["errors"] == 1
    assert out["append_errors"] is None  # the append never reached the (dead) server
    assert out["ping_down"] is False and out["ping_up"] is True
    assert out["written"].created  # the restarted server is empty (no persistence): a new history


def test_a_server_that_never_answers_times_out_instead_of_hanging() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never replies
        port = silent.getsockname()[1]

        async def main() -> StoreUnavailableError:
            metrics = ServiceMetrics()
            store = RedisHistoryStore(f"redis://127.0.0.1:{port}/0", metrics, timeout_s=0.2, retries=0)
            try:
                with pytest.raises(StoreUnavailableError) as error:
                    await asyncio.wait_for(store.get("u", "m"), timeout=20)  # a guard, not a speed check
                return error.value
            finally:
                await store.close()

        error = asyncio.run(main())
    assert "Timeout" in error.reason


def test_the_in_process_store_keeps_the_most_recently_used_users() -> None:
    async def main() -> tuple[list[bool], int]:
        store = InMemoryHistoryStore(max_users=2)
        await store.append("a", ["1"], None, 10)
        await store.append("b", ["1"], None, 10)
        await store.get("a", "v")  # a is now more recent than b
        await store.append("c", ["1"], None, 10)  # b is dropped
        present = [await store.get(u, "v") is not None for u in ("a", "b", "c")]
        return present, store.evicted

    present, evicted = asyncio.run(main())
    assert present == [True, False, True] and evicted == 1
