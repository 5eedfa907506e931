"""What the routes call: histories from the store (or the artifact), fold-in + cache, batched scoring.

A user's current history is the stored one when the store has an entry, else the artifact's training
history. Unchanged users (no store entry) use the artifact's stored user states; stored histories use
fold-in, cached in the store under ``(model_version, history version)`` (models whose state is empty,
e.g. EASE, need no fold-in and cache nothing). When the store is
unreachable, reads fall back to the artifact's histories (``history_source: "artifact"``, counted in
``ld4mrec_history_fallback_reads_total``) and writes raise :class:`StoreUnavailableError` (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.batcher import MicroBatcher
from service.engine import Engine, ScoredItems, ScoringRequest
from service.errors import FieldError, UnknownItemsError, UnknownUserError
from service.history_store import AppendResult, HistoryStore, StoredHistory, StoreUnavailableError
from service.metrics import ServiceMetrics
from service.settings import Settings

__all__ = ["Answer", "RankOptions", "Recommender"]

log = logging.getLogger(__name__)

DEFAULT_K = 20
Loc = tuple[str, ...]
Answer = dict[str, Any]  # one answer, shaped as schemas.RecommendResponse (serialised as it is, orjson)


@dataclass(frozen=True)
class RankOptions:
    """Per-request ranking options; ``where`` is "query" or "body" (for error locations)."""

    k: int | None = None
    exclude_seen: bool = True
    exclude: Sequence[str] = ()
    candidates: Sequence[str] | None = None
    where: str = "query"


@dataclass(frozen=True)
class _Ranking:
    """Options resolved against one engine: k and internal-id arrays."""

    k: int
    exclude_seen: bool
    exclude: np.ndarray
    candidates: np.ndarray | None


class Recommender:
    """The service state and use cases; ``engine`` may be swapped (reload), the rest lives with the app."""

    def __init__(
        self,
        engine: Engine,
        store: HistoryStore,
        batcher: MicroBatcher,
        metrics: ServiceMetrics,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.store = store
        self.batcher = batcher
        self.metrics = metrics
        self.settings = settings
        self._background: set[asyncio.Task[None]] = set()  # fold-in cache writes under way

    # -- validation ------------------------------------------------------------------------------------------
    def check_ids(self, loc: Loc, ids: Sequence[str]) -> None:
        """Refuse lists longer than MAX_IDS."""
        if len(ids) > self.settings.max_ids:
            raise FieldError(loc, f"at most {self.settings.max_ids} ids per list (MAX_IDS), got {len(ids)}")

    def check_users(self, user_ids: Sequence[str]) -> None:
        """Refuse batches larger than MAX_BATCH_USERS."""
        limit = self.settings.max_batch_users
        if len(user_ids) > limit:
            raise FieldError(
                ("body", "user_ids"), f"at most {limit} users per call (MAX_BATCH_USERS), got {len(user_ids)}"
            )

    def _ranking(self, engine: Engine, options: RankOptions) -> _Ranking:
        max_k = self.settings.max_k
        k = options.k if options.k is not None else min(DEFAULT_K, max_k)
        if not 1 <= k <= max_k:
            raise FieldError((options.where, "k"), f"k must be between 1 and {max_k} (MAX_K), got {k}")
        self.check_ids((options.where, "exclude"), options.exclude)
        exclude, _ = engine.item_indices(options.exclude)  # unknown ids can never be returned anyway
        candidates = None
        if options.candidates is not None:
            self.check_ids((options.where, "candidates"), options.candidates)
            candidates, unknown = engine.item_indices(options.candidates)
            if unknown:
                raise UnknownItemsError((options.where, "candidates"), unknown)
        return _Ranking(k, options.exclude_seen, exclude, candidates)

    # -- reads -----------------------------------------------------------------------------------------------
    async def for_user(self, user_id: str, options: RankOptions) -> Answer:
        """Top-k for one user (404 when neither the model nor the store knows the user)."""
        return (await self.for_users([user_id], options))[0]

    async def for_users(self, user_ids: Sequence[str], options: RankOptions) -> list[Answer]:
        """Top-k for several users; their rows join the same micro-batches."""
        engine = self.engine
        ranking = self._ranking(engine, options)
        indices = [engine.user_index(u) for u in user_ids]
        try:
            if len(user_ids) == 1:
                stored: list[StoredHistory | None] = [await self.store.get(user_ids[0], engine.model_version)]
            else:
                stored = await self.store.get_many(user_ids, engine.model_version)
        except StoreUnavailableError:
            if any(i < 0 for i in indices):
                raise  # only the store knows these users: 503, not a wrong 404
            self.metrics.fallback_reads.inc(len(user_ids))
            stored = [None] * len(user_ids)
        unknown = [u for u, i, s in zip(user_ids, indices, stored, strict=True) if i < 0 and s is None]
        if unknown:
            raise UnknownUserError(list(dict.fromkeys(unknown)))

        requests, sources = [], []
        state: np.ndarray | None
        for user_index, entry in zip(indices, stored, strict=True):
            if entry is None:
                history, state, source = (
                    engine.artifact_history(user_index),
                    engine.stored_state(user_index),
                    "artifact",
                )
            else:
                history, _ = engine.item_indices(entry.item_ids)  # ids a reloaded catalogue lacks drop out
                state = engine.decode_state(entry.foldin)
                if engine.caches_state:
                    (self.metrics.foldin_hits if state is not None else self.metrics.foldin_misses).inc()
                source = self.store.backend
            requests.append(self._request(user_index, history, state, ranking))
            sources.append(source)

        results = await self.batcher.submit_many(engine, requests)
        self._cache_foldins(engine, user_ids, stored, results)
        return [
            self._response(engine, user_id, result, source, cold_start=user_index < 0)
            for user_id, user_index, result, source in zip(user_ids, indices, results, sources, strict=True)
        ]

    async def for_history(self, history_ids: Sequence[str], options: RankOptions) -> Answer:
        """Top-k for a history given in the request (cold start; always fold-in, never cached)."""
        engine = self.engine
        limit = self.settings.max_history
        if len(history_ids) > limit:
            got = len(history_ids)
            raise FieldError(
                ("body", "history"), f"at most {limit} items per history (MAX_HISTORY), got {got}"
            )
        ranking = self._ranking(engine, options)
        history, unknown = engine.item_indices(history_ids)
        if unknown:
            raise UnknownItemsError(("body", "history"), unknown)
        result = await self.batcher.submit(engine, self._request(-1, history, None, ranking))
        return self._response(engine, None, result, "request", cold_start=True)

    # -- writes ----------------------------------------------------------------------------------------------
    async def add_interactions(self, user_id: str, item_ids: Sequence[str]) -> AppendResult:
        """Append clicks to the stored history (the first write seeds it with the artifact history)."""
        engine = self.engine
        self.check_ids(("body", "item_ids"), item_ids)
        _, unknown = engine.item_indices(item_ids)
        if unknown:
            raise UnknownItemsError(("body", "item_ids"), unknown)
        user_index = engine.user_index(user_id)
        seed = (lambda: engine.artifact_history_ids(user_index)) if user_index >= 0 else None
        result = await self.store.append(user_id, item_ids, seed, self.settings.max_history)
        # `created`: the user is new to the service; a training user's first write only seeds the store
        return replace(result, created=result.created and user_index < 0)

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _request(
        user_index: int, history: np.ndarray, state: np.ndarray | None, ranking: _Ranking
    ) -> ScoringRequest:
        if ranking.exclude_seen and history.size:
            exclude = np.concatenate([history, ranking.exclude]) if ranking.exclude.size else history
        else:
            exclude = ranking.exclude
        return ScoringRequest(user_index, history, state, ranking.k, exclude, ranking.candidates)

    def _cache_foldins(
        self,
        engine: Engine,
        user_ids: Sequence[str],
        stored: Sequence[StoredHistory | None],
        results: Sequence[ScoredItems],
    ) -> None:
        """Store the fold-ins this call computed, in the background: the answer does not wait for that
        second Redis round trip (a read makes one round trip at most); a store failure only costs a later
        recomputation."""
        entries = [
            (user_id, entry.version, result.folded_state.tobytes())
            for user_id, entry, result in zip(user_ids, stored, results, strict=True)
            if entry is not None and result.folded_state is not None
        ]
        if not entries:
            return
        task = asyncio.get_running_loop().create_task(self._put_foldins(engine.model_version, entries))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _put_foldins(self, model_version: str, entries: list[tuple[str, int, bytes]]) -> None:
        for user_id, version, state in entries:
            try:
                await self.store.put_foldin(user_id, version, model_version, state)
            except StoreUnavailableError as exc:
                log.warning("fold-in not cached: %s", exc)
                return
            except Exception:  # never an unobserved task error; the cache entry is only an optimisation
                log.exception("fold-in not cached")
                return

    @property
    def pending_writes(self) -> int:
        """Fold-in cache writes under way in the background."""
        return len(self._background)

    async def drain(self) -> None:
        """Wait for the fold-in cache writes under way (at shutdown, before the store closes)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @staticmethod
    def _response(
        engine: Engine, user_id: str | None, result: ScoredItems, source: str, *, cold_start: bool
    ) -> Answer:
        """The answer as plain data (schemas.RecommendResponse's shape), rank 1 first."""
        item_ids = engine.item_ids_of(result.items)
        scores = result.scores.tolist()
        return {
            "user_id": user_id,
            "items": [
                {"item_id": item_id, "score": score, "rank": rank}
                for rank, (item_id, score) in enumerate(zip(item_ids, scores, strict=True), start=1)
            ],
            "model_version": engine.model_version,
            "history_source": source,
            "cold_start": cold_start,
        }
