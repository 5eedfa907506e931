"""Asyncio micro-batcher: requests arriving together share one forward pass.

The first queued request opens a batch; the batch is flushed when it holds ``max_batch`` requests or
``max_wait_s`` after that first request was queued, whichever comes first. The forward pass runs in ONE
worker thread (``run_in_executor``) so the event loop stays free, and while it runs the next batch
gathers. Each request carries the :class:`~service.engine.Engine` it was built for, so swapping the
engine (a model reload) never mixes models in one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.engine import Engine, ScoredItems, ScoringRequest
from service.metrics import ServiceMetrics

__all__ = ["BatcherClosedError", "MicroBatcher"]

log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher is not running (the service is starting or shutting down)."""


@dataclass
class _Pending:
    engine: Engine
    request: ScoringRequest
    future: asyncio.Future[ScoredItems]
    enqueued_at: float  # time.perf_counter()


class MicroBatcher:
    """Collects :class:`ScoringRequest` s into batched :meth:`Engine.score` calls."""

    def __init__(self, max_batch: int, max_wait_s: float, metrics: ServiceMetrics) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ld4mrec-forward")
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ld4mrec-batcher")

    async def stop(self) -> None:
        """Stop the loop, fail what is still queued, release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, engine: Engine, request: ScoringRequest) -> ScoredItems:
        """Queue one request and wait for its share of a batched forward pass."""
        if not self.running:
            raise BatcherClosedError("the scoring loop is not running")
        future: asyncio.Future[ScoredItems] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(engine, request, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.enqueued_at + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._flush(batch)

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
