"""The micro-batcher: concurrent requests share a pass, bounded by MAX_BATCH and MAX_WAIT_MS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest

from service.batcher import BatcherClosedError, BatcherOverloadedError, MicroBatcher
from service.engine import Engine, ScoredItems, ScoringRequest
from service.metrics import ServiceMetrics

EMPTY = np.zeros(0, dtype=np.int64)


class RecordingEngine:
    """Stands in for Engine.score: records batch sizes and the worker thread; answers item = user_index."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.seen: list[int] = []
        self.threads: set[str] = set()
        self.fail = fail
        self.gate = gate

    def score(self, requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(requests))
        self.seen += [r.user_index for r in requests]
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("forward failed")
        return [
            ScoredItems(np.array([r.user_index]), np.array([1.0], dtype=np.float32), None) for r in requests
        ]


def request(user_index: int) -> ScoringRequest:
    return ScoringRequest(user_index, EMPTY, None, 1)


def submit_all(batcher: MicroBatcher, engine: RecordingEngine, n: int) -> list[Any]:
    async def main() -> list[Any]:
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(cast(Engine, engine), request(i)) for i in range(n)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_one_pass_in_a_worker_thread() -> None:
    metrics = ServiceMetrics()
    engine = RecordingEngine()
    results = submit_all(MicroBatcher(max_batch=64, max_wait_s=0.05, metrics=metrics), engine, 10)
    assert engine.batches == [10]
    assert [r.items.tolist() for r in results] == [[i] for i in range(10)]  # each gets its own row back
    assert engine.threads and all(name.startswith("ld4mrec-forward") for name in engine.threads)
    assert metrics.registry.get_sample_value("ld4mrec_batch_size_sum") == 10
    assert metrics.registry.get_sample_value("ld4mrec_batch_size_count") == 1
    assert metrics.registry.get_sample_value("ld4mrec_batch_queue_wait_seconds_count") == 10
    assert metrics.registry.get_sample_value("ld4mrec_model_forward_seconds_count") == 1


def test_max_batch_bounds_a_pass() -> None:
    engine = RecordingEngine()
    submit_all(MicroBatcher(max_batch=4, max_wait_s=0.05, metrics=ServiceMetrics()), engine, 10)
    assert engine.batches == [4, 4, 2]


def test_a_lone_request_is_flushed_after_max_wait() -> None:
    engine = RecordingEngine()

    async def main() -> float:
        batcher = MicroBatcher(max_batch=64, max_wait_s=0.02, metrics=ServiceMetrics())
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(batcher.submit(cast(Engine, engine), request(0)), timeout=5)
        elapsed = loop.time() - started
        await batcher.stop()
        return elapsed

    elapsed = asyncio.run(main())
    assert engine.batches == [1]
    assert elapsed >= 0.015  # it waited for company, then went alone


def test_a_failed_pass_fails_its_requests_and_the_loop_goes_on() -> None:
    async def main() -> tuple[list[Any], ScoredItems]:
        batcher = MicroBatcher(max_batch=64, max_wait_s=0.01, metrics=ServiceMetrics())
        batcher.start()
        failing, working = RecordingEngine(fail=True), RecordingEngine()
        failed = await asyncio.gather(
            *(batcher.submit(cast(Engine, failing), request(i)) for i in range(3)), return_exceptions=True
        )
        ok = await batcher.submit(cast(Engine, working), request(7))
        await batcher.stop()
        return failed, ok

    failed, ok = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "forward failed" in str(e) for e in failed)
    assert ok.items.tolist() == [7]


def test_requests_for_different_engines_never_share_a_pass() -> None:
    async def main() -> tuple[RecordingEngine, RecordingEngine]:
        batcher = MicroBatcher(max_batch=64, max_wait_s=0.05, metrics=ServiceMetrics())
        batcher.start()
        old, new = RecordingEngine(), RecordingEngine()
        await asyncio.gather(
            *(batcher.submit(cast(Engine, old if i % 2 else new), request(i)) for i in range(6))
        )
        await batcher.stop()
        return old, new

    old, new = asyncio.run(main())
    assert old.batches == [3] and new.batches == [3]


def test_a_cancelled_request_is_dropped_and_stop_fails_what_is_queued() -> None:
    gate = threading.Event()

    async def main() -> tuple[Any, RecordingEngine]:
        batcher = MicroBatcher(max_batch=1, max_wait_s=0.0, metrics=ServiceMetrics())
        batcher.start()
        engine = RecordingEngine(gate=gate)
        first = asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(0)))
        await asyncio.sleep(0.05)  # the first pass now blocks in the worker
        cancelled = asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(1)))
        queued = asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(2)))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        gate.set()
        await first
        await batcher.stop()
        return await asyncio.gather(queued, return_exceptions=True), engine

    (outcome,), engine = asyncio.run(main())
    assert 1 not in engine.seen  # the cancelled request never reached the model
    # the queued one was either scored before stop() or failed by it; it never hangs
    assert (isinstance(outcome, ScoredItems) and 2 in engine.seen) or isinstance(outcome, BatcherClosedError)


def test_submit_before_start_is_refused() -> None:
    async def main() -> None:
        await MicroBatcher(4, 0.0, ServiceMetrics()).submit(cast(Engine, RecordingEngine()), request(0))

    with pytest.raises(BatcherClosedError):
        asyncio.run(main())


def test_stop_drains_what_is_queued_and_refuses_new_requests() -> None:
    async def main() -> tuple[list[Any], int, Any]:
        batcher = MicroBatcher(max_batch=4, max_wait_s=0.5, metrics=ServiceMetrics())
        batcher.start()
        engine = RecordingEngine()
        queued = [asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(i))) for i in range(10)]
        await asyncio.sleep(0)  # all ten are queued; the first batch waits up to 0.5 s for company
        drained = await batcher.stop()
        late = await asyncio.gather(batcher.submit(cast(Engine, engine), request(99)), return_exceptions=True)
        return await asyncio.gather(*queued), drained, late[0]

    results, drained, late = asyncio.run(main())
    assert [r.items.tolist() for r in results] == [[i] for i in range(10)]  # every queued one was scored
    assert 1 <= drained <= 10  # those still in the queue (the loop may hold the first batch already)
    assert isinstance(late, BatcherClosedError)


def test_a_full_queue_refuses_all_or_nothing() -> None:
    gate = threading.Event()

    async def main() -> tuple[Any, Any, RecordingEngine]:
        batcher = MicroBatcher(max_batch=1, max_wait_s=0.0, metrics=ServiceMetrics(), max_queue=3)
        batcher.start()
        engine = RecordingEngine(gate=gate)
        busy = asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(0)))
        await asyncio.sleep(0.05)  # the first pass blocks in the worker; the queue is empty again
        waiting = asyncio.ensure_future(batcher.submit_many(cast(Engine, engine), [request(1), request(2)]))
        await asyncio.sleep(0)
        refused = await asyncio.gather(
            batcher.submit_many(cast(Engine, engine), [request(3), request(4)]), return_exceptions=True
        )
        gate.set()
        done = await asyncio.gather(busy, waiting)
        await batcher.stop()
        return refused[0], done, engine

    refused, done, engine = asyncio.run(main())
    assert isinstance(refused, BatcherOverloadedError) and "MAX_QUEUE 3" in str(refused)
    assert 3 not in engine.seen and 4 not in engine.seen  # none of the refused rows was queued
    assert done[0].items.tolist() == [0] and [r.items.tolist() for r in done[1]] == [[1], [2]]


def test_requests_queued_during_a_pass_form_the_next_pass_at_once() -> None:
    """Continuous batching: what arrives while a pass runs is taken as soon as it ends, without waiting
    MAX_WAIT (which only applies to a request that finds the forward thread idle)."""
    gate = threading.Event()

    async def main() -> tuple[RecordingEngine, float]:
        batcher = MicroBatcher(max_batch=3, max_wait_s=5.0, metrics=ServiceMetrics())
        batcher.start()
        engine = RecordingEngine(gate=gate)
        # a full batch starts at once, then blocks in the worker
        first = [asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        during = [
            asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(i))) for i in range(3, 8)
        ]
        await asyncio.sleep(0.01)
        released = time.perf_counter()
        gate.set()
        await asyncio.wait_for(asyncio.gather(*first, *during), timeout=4.0)
        elapsed = time.perf_counter() - released
        await batcher.stop()
        return engine, elapsed

    engine, elapsed = asyncio.run(main())
    assert engine.batches == [3, 3, 2]  # the five queued during the first pass: the next two passes
    assert elapsed < 1.0  # the last, short batch did not wait MAX_WAIT (5 s) for company


def test_the_next_pass_does_not_wait_for_a_busy_event_loop() -> None:
    """The forward thread starts the next pass by itself: while the event loop is blocked, the requests
    queued before are still scored (the results are delivered once the loop runs again)."""
    gate = threading.Event()

    async def main() -> tuple[RecordingEngine, list[int]]:
        batcher = MicroBatcher(max_batch=2, max_wait_s=0.0, metrics=ServiceMetrics())
        batcher.start()
        engine = RecordingEngine(gate=gate)
        futures = [asyncio.ensure_future(batcher.submit(cast(Engine, engine), request(i))) for i in range(6)]
        await asyncio.sleep(0.05)  # the first pass (2 requests) blocks in the worker
        gate.set()
        deadline = time.monotonic() + 5
        while len(engine.batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the event loop: no result can be delivered meanwhile
        passes_while_blocked = list(engine.batches)
        await asyncio.gather(*futures)
        await batcher.stop()
        return engine, passes_while_blocked

    engine, passes_while_blocked = asyncio.run(main())
    assert passes_while_blocked == [2, 2, 2]
    assert sorted(engine.seen) == list(range(6))
