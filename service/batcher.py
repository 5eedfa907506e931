"""Micro-batcher: requests arriving together share one forward pass (continuous batching).

Requests are queued by the event loop; ONE dedicated forward thread takes them out and scores them. When a
pass ends, the thread takes everything queued meanwhile (up to ``max_batch``) and starts the next pass at
once, without waiting, while the results of the previous one are handed to the event loop (one
``call_soon_threadsafe`` per pass): under load the model is never idle waiting for the event loop, and
batches grow with the load. ``max_wait_s`` only matters at low load, when a request finds the thread
idle: it then waits up to that long (from when it was queued) for company, unless ``max_batch`` requests
arrive first. Each request carries the :class:`~service.engine.Engine` it was built for, so swapping the
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
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from service.engine import Engine, ScoredItems, ScoringRequest
from service.metrics import ServiceMetrics

__all__ = ["BatcherClosedError", "BatcherOverloadedError", "MicroBatcher"]

log = logging.getLogger(__name__)

THREAD_NAME = "ld4mrec-forward"


class BatcherClosedError(RuntimeError):
    """The batcher is not running (the service is starting or shutting down)."""


class BatcherOverloadedError(RuntimeError):
    """The queue holds ``max_queue`` requests already (load shedding; answered 503 + Retry-After)."""


@dataclass
class _Pending:
    engine: Engine
    request: ScoringRequest
    future: asyncio.Future[ScoredItems]  # resolved on the event loop only
    enqueued_at: float  # time.perf_counter()


class MicroBatcher:
    """Collects :class:`ScoringRequest` s into batched :meth:`Engine.score` calls on a forward thread."""

    def __init__(
        self, max_batch: int, max_wait_s: float, metrics: ServiceMetrics, max_queue: int = 4096
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max_queue
        self._metrics = metrics
        self._cond = threading.Condition()  # guards _queue and _stopping
        self._queue: deque[_Pending] = deque()
        self._stopping = False  # the thread drains the queue, then exits
        self._closing = False  # submits are refused
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def queued(self) -> int:
        """Requests waiting for a pass."""
        return len(self._queue)

    def start(self) -> None:
        """Start the forward thread; results are delivered on the running event loop."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._loop = asyncio.get_running_loop()
        self._closing = self._stopping = False
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()

    async def stop(self, timeout_s: float = 10.0) -> int:
        """Refuse new requests, score what is queued (for ``timeout_s`` at most), stop; returns how many
        queued requests were drained. Whatever is left after the timeout fails with BatcherClosedError."""
        self._closing = True
        with self._cond:
            drained = len(self._queue)
            self._stopping = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        deadline = time.monotonic() + timeout_s
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the thread delivers its last results through this loop
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        if thread is not None and thread.is_alive():
            log.error("the scoring queue did not drain within %.1f s; failing what is left", timeout_s)
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the service is shutting down"))
        await asyncio.sleep(0)  # results posted by the thread's last pass are delivered now
        return drained

    async def submit(self, engine: Engine, request: ScoringRequest) -> ScoredItems:
        """Queue one request and wait for its share of a batched forward pass."""
        return (await self.submit_many(engine, [request]))[0]

    async def submit_many(self, engine: Engine, requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        """Queue several requests at once (all or none: BatcherOverloadedError when they do not fit)."""
        if not self.running:
            raise BatcherClosedError("the scoring loop is not running")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures: list[asyncio.Future[ScoredItems]] = [loop.create_future() for _ in requests]
        with self._cond:
            queued = len(self._queue)
            if queued + len(requests) > self.max_queue:
                raise BatcherOverloadedError(
                    f"the service is overloaded: {queued} scoring requests are queued (MAX_QUEUE "
                    f"{self.max_queue})"
                )
            self._queue.extend(_Pending(engine, r, f, now) for r, f in zip(requests, futures, strict=True))
            self._cond.notify()
        try:
            if len(futures) == 1:
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a failed or cancelled caller drops its other rows too
                future.cancel()
            raise

    # -- the forward thread ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # never let the thread die with requests waiting on it
                log.exception("batched scoring of %d requests failed", len(batch))
                self._post(batch, None, exc)

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for work; the next batch (``None``: stopped and drained).

        Continuous batching: requests queued while the previous pass ran are taken at once. Only when the
        thread found the queue empty does the first request wait (``max_wait_s`` from when it was queued,
        at most) for company."""
        with self._cond:
            was_idle = not self._queue
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            if was_idle and self.max_wait_s > 0:
                deadline = self._queue[0].enqueued_at + self.max_wait_s
                while len(self._queue) < self.max_batch and not self._stopping:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            take = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(take)]

    def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a cancelled request (client gone) is dropped
        groups: dict[int, list[_Pending]] = {}
        for pending in live:
            groups.setdefault(id(pending.engine), []).append(pending)
        for group in groups.values():
            started = time.perf_counter()
            for pending in group:
                self._metrics.queue_wait.observe(started - pending.enqueued_at)
            self._metrics.batch_size.observe(len(group))
            try:
                results = group[0].engine.score([p.request for p in group])
                if len(results) != len(group):
                    raise RuntimeError(f"{len(results)} results for a pass of {len(group)} requests")
            except Exception as exc:  # answered per request; the thread keeps running
                log.exception("batched scoring of %d requests failed", len(group))
                self._post(group, None, exc)
                continue
            self._metrics.forward.observe(time.perf_counter() - started)
            self._post(group, results, None)

    def _post(
        self, group: list[_Pending], results: list[ScoredItems] | None, error: BaseException | None
    ) -> None:
        """Hand a pass's outcome to the event loop (ignored once the loop is closed)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._deliver, group, results, error)

    @staticmethod
    def _deliver(
        group: list[_Pending], results: list[ScoredItems] | None, error: BaseException | None
    ) -> None:
        """On the event loop: resolve the futures of one pass (those still waiting)."""
        for i, pending in enumerate(group):
            if pending.future.done():
                continue
            if error is not None or results is None:
                pending.future.set_exception(error or RuntimeError("no result"))
            else:
                pending.future.set_result(results[i])
