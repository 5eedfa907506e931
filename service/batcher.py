"""Asyncio micro-batcher: requests arriving together share one forward pass.

The first queued request opens a batch; the batch is flushed when it holds ``max_batch`` requests or
``max_wait_s`` after that first request was queued, whichever comes first. The forward pass runs in ONE
worker thread (``run_in_executor``) so the event loop stays free, and while it runs the next batch
gathers. Each request carries the :class:`~service.engine.Engine` it was built for, so swapping the
engine (a model reload) never mixes models in one pass.

The queue is bounded (``max_queue`` requests): beyond it :meth:`MicroBatcher.submit_many` refuses at once
(:class:`BatcherOverloadedError`, answered 503 + Retry-After) instead of letting latency grow without
limit. :meth:`MicroBatcher.stop` drains: it refuses new requests, scores everything already queued, then
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.engine import Engine, ScoredItems, ScoringRequest
from service.metrics import ServiceMetrics

__all__ = ["BatcherClosedError", "BatcherOverloadedError", "MicroBatcher"]

log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher is not running (the service is starting or shutting down)."""


class BatcherOverloadedError(RuntimeError):
    """The queue holds ``max_queue`` requests already (load shedding; answered 503 + Retry-After)."""


@dataclass
class _Pending:
    engine: Engine
    request: ScoringRequest
    future: asyncio.Future[ScoredItems]
    enqueued_at: float  # time.perf_counter()


class MicroBatcher:
    """Collects :class:`ScoringRequest` s into batched :meth:`Engine.score` calls."""

    def __init__(
        self, max_batch: int, max_wait_s: float, metrics: ServiceMetrics, max_queue: int = 4096
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: "drained, stop" marker
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ld4mrec-forward")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queued(self) -> int:
        """Requests waiting for a pass."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ld4mrec-batcher")

    async def stop(self, timeout_s: float = 10.0) -> int:
        """Refuse new requests, score what is queued (for ``timeout_s`` at most), stop; returns how many
        queued requests were drained. Whatever is left after the timeout fails with BatcherClosedError."""
        self._closing = True
        drained = self._queue.qsize()  # before the stop marker: requests only
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                log.error("the scoring queue did not drain within %.1f s; failing what is left", timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        return drained

    async def submit(self, engine: Engine, request: ScoringRequest) -> ScoredItems:
        """Queue one request and wait for its share of a batched forward pass."""
        return (await self.submit_many(engine, [request]))[0]

    async def submit_many(self, engine: Engine, requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        """Queue several requests at once (all or none: BatcherOverloadedError when they do not fit)."""
        if not self.running:
            raise BatcherClosedError("the scoring loop is not running")
        if self._queue.qsize() + len(requests) > self.max_queue:
            raise BatcherOverloadedError(
                f"the service is overloaded: {self._queue.qsize()} scoring requests are queued (MAX_QUEUE "
                f"{self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ScoredItems]] = []
        now = time.perf_counter()
        for request in requests:
            future: asyncio.Future[ScoredItems] = loop.create_future()
            self._queue.put_nowait(_Pending(engine, request, future, now))
            futures.append(future)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a failed or cancelled caller drops its other rows too
                future.cancel()
            raise

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return  # stop() queued the marker after the last request: everything is scored
            batch = [first]
            deadline = first.enqueued_at + self.max_wait_s
            stop_after = False
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    nxt = self._queue.get_nowait()
                elif (remaining := deadline - time.perf_counter()) <= 0 or self._closing:
                    break
                else:
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if nxt is None:
                    stop_after = True
                    break
                batch.append(nxt)
            await self._flush(batch)
            if stop_after:
                return

    async def _flush(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a cancelled request (client gone) is dropped
        groups: dict[int, list[_Pending]] = {}
        for pending in live:
            groups.setdefault(id(pending.engine), []).append(pending)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            started = time.perf_counter()
            for pending in group:
                self._metrics.queue_wait.observe(started - pending.enqueued_at)
            self._metrics.batch_size.observe(len(group))
            engine = group[0].engine
            requests = [p.request for p in group]
            try:
                results = await loop.run_in_executor(self._executor, self._score, engine, requests)
            except asyncio.CancelledError:
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(BatcherClosedError("the service is shutting down"))
                raise
            except Exception as exc:  # answered per request; the loop keeps running
                log.exception("batched scoring of %d requests failed", len(group))
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    def _score(self, engine: Engine, requests: list[ScoringRequest]) -> list[ScoredItems]:
        started = time.perf_counter()
        results = engine.score(requests)
        self._metrics.forward.observe(time.perf_counter() - started)
        return results
