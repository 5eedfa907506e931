"""Loading the model at start-up and hot-reloading it: load beside the current one, verify, swap.

A (re)load reads and verifies the artifact (``read_artifact``: manifest, sha256 of every file, shapes),
builds the model and runs one warm-up pass, all in a worker thread so the event loop keeps serving.
Only then is the new :class:`~service.engine.Engine` swapped in, by one assignment on the event loop
(``recommender.engine = new``): requests that already took the old engine finish on it (the batcher
never puts two engines in one pass), later ones use the new one. A refused artifact leaves the old model
serving and the reason, naming the file, goes back to the caller. One (re)load runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artifact import ArtifactError
from service.batcher import MicroBatcher
from service.engine import Engine, ScoringRequest
from service.errors import ArtifactRefusedError, FieldError, ReloadInProgressError
from service.history_store import HistoryStore
from service.metrics import ServiceMetrics
from service.recommender import Recommender
from service.settings import Settings, resolve_device
from service.workers import ReloadAnnouncer

__all__ = ["ModelReloader", "ReloadOutcome", "load_engine"]

log = logging.getLogger("ld4mrec.service")

ARTIFACT_LOC = ("body", "artifact")


def load_engine(path: Path, settings: Settings) -> Engine:
    """Read and verify the artifact, build the model in ``settings.precision`` (start-up and every reload
    alike), run one warm-up pass (call in a worker thread).

    Raises ``ArtifactError`` naming the offending file.
    """
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = Engine.load(path, resolve_device(settings.device), settings.precision)
    warm_up = engine.score([ScoringRequest(-1, np.zeros(0, dtype=np.int64), None, 1)])[0]
    if engine.n_items and warm_up.items.size == 0:
        raise ArtifactError(Path(path) / "manifest.json", "the model's scores are not finite")
    return engine


@dataclass(frozen=True)
class ReloadOutcome:
    """A successful (re)load: the versions before and after, the directory read, the seconds it took."""

    previous_model_version: str | None
    model_version: str
    artifact: Path
    seconds: float


class ModelReloader:
    """Owns ``state.recommender`` / ``state.load_error`` (the app's state): the start-up load and reloads."""

    def __init__(
        self,
        state: object,
        settings: Settings,
        store: HistoryStore,
        batcher: MicroBatcher,
        metrics: ServiceMetrics,
        announcer: ReloadAnnouncer | None = None,
    ) -> None:
        self._announcer = announcer
        self._state = state  # the app's ``app.state``: ``recommender`` and ``load_error`` are set here
        self._settings = settings
        self._store = store
        self._batcher = batcher
        self._metrics = metrics
        self._busy = False  # a (re)load is running; set and read on the event loop only
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def recommender(self) -> Recommender | None:
        recommender: Recommender | None = getattr(self._state, "recommender", None)
        return recommender

    # -- start-up --------------------------------------------------------------------------------------------
    def start(self, on_failure: Callable[[str], None] | None = None, artifact: Path | None = None) -> None:
        """Load the configured artifact (or ``artifact``) in the background; on failure record
        ``load_error`` and call ``on_failure(message)`` (the CLI stops the server then)."""
        self._busy = True
        self._track(asyncio.ensure_future(self._load_initial(on_failure, artifact)))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_initial(self, on_failure: Callable[[str], None] | None, artifact: Path | None) -> None:
        path = artifact if artifact is not None else self._settings.artifact
        try:
            engine = await asyncio.to_thread(load_engine, path, self._settings)
        except ArtifactError as exc:
            message = f"artifact refused: {exc}"
            log.error("cannot serve: the artifact is refused: %s", exc)
        except Exception as exc:
            message = f"model could not be loaded from {path}: {type(exc).__name__}: {exc}"
            log.exception("cannot serve: loading %s failed", path)
        else:
            self._install(engine)
            if self._announcer is not None:
                self._announcer.mark_ready()
            log.info(
                "ready: model %s on %s, precision %s, history store %s",
                engine.model_version,
                engine.device,
                engine.precision,
                self._store.backend,
            )
            return
        finally:
            self._busy = False
        self._state.load_error = message  # type: ignore[attr-defined]
        if on_failure is not None:
            on_failure(message)

    # -- reload ----------------------------------------------------------------------------------------------
    def resolve(self, artifact: str | None) -> Path:
        """The directory to read: the configured one when ``artifact`` is None, else ``artifact`` (relative
        to the artifact root), which must lie under the root (422 naming ``body.artifact`` otherwise)."""
        if artifact is None:
            return self._settings.artifact
        root = self._settings.reload_root
        try:
            candidate = Path(artifact)
            resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (ValueError, OSError) as exc:
            raise FieldError(ARTIFACT_LOC, f"not a usable path: {exc}", "invalid_path") from None
        if resolved != self._settings.artifact.resolve() and not resolved.is_relative_to(root):
            raise FieldError(
                ARTIFACT_LOC,
                f"{artifact!r} is outside the artifact root {root} (ARTIFACT_ROOT); nothing was loaded",
                "outside_artifact_root",
            )
        return resolved

    async def reload(self, artifact: str | None = None, announce: bool = True) -> ReloadOutcome:
        """Load ``artifact`` (default: the configured directory) beside the current model and swap it in.

        Raises FieldError (bad path), ArtifactRefusedError (refused artifact; the old model keeps serving)
        or ReloadInProgressError. The work is shielded: a caller that goes away does not abort the swap.
        In a worker of several, a success is announced to the others (``announce``; not for SIGHUP, which
        every worker receives).
        """
        path = self.resolve(artifact)
        if self._busy:
            raise ReloadInProgressError("a model load is already in progress; retry when it has finished")
        self._busy = True
        task = asyncio.ensure_future(self._reload(path))
        self._track(task)
        outcome = await asyncio.shield(task)
        if self._announcer is not None and announce:
            self._announcer.announce(outcome.artifact)  # the other workers load it too
        return outcome

    def follow(self, announcer: ReloadAnnouncer) -> None:
        """Load the artifact another worker announced (the SIGUSR1 handler of a worker) and log the
        outcome; a refused artifact keeps this worker's model too."""
        announced = announcer.read()
        if announced is None or announced[1] == os.getpid():
            return
        path = announced[0]

        async def run() -> None:
            while self._busy:  # one load at a time: this one waits for the running one
                await asyncio.sleep(0.05)
            self._busy = True
            try:
                outcome = await self._reload(path)
            except ArtifactRefusedError as exc:
                log.error("announced reload of %s not done: %s", path, exc)
            else:
                log.info("announced reload: %s -> %s", outcome.previous_model_version, outcome.model_version)

        self._track(asyncio.ensure_future(run()))

    def reload_in_background(self) -> None:
        """Reload the configured directory and log the outcome (the SIGHUP handler)."""

        async def run() -> None:
            try:
                outcome = await self.reload(None, announce=False)
            except (FieldError, ReloadInProgressError, ArtifactRefusedError) as exc:
                log.error("SIGHUP reload not done: %s", exc)
            else:
                log.info("SIGHUP reload: %s -> %s", outcome.previous_model_version, outcome.model_version)

        self._track(asyncio.ensure_future(run()))

    async def close(self) -> None:
        """Cancel reloads still running (at shutdown: nothing is swapped in after this)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reload(self, path: Path) -> ReloadOutcome:
        try:
            current = self.recommender
            previous = current.engine.model_version if current is not None else None
            started = time.perf_counter()
            log.info("reloading the model from %s (serving %s meanwhile)", path, previous)
            try:
                engine = await asyncio.to_thread(load_engine, path, self._settings)
            except Exception as exc:
                self._metrics.model_reloads.labels(result="failure").inc()
                if isinstance(exc, ArtifactError):
                    reason = f"artifact refused: {exc}"
                    log.error("reload failed, still serving %s: %s", previous, reason)
                else:
                    reason = f"model could not be loaded from {path}: {type(exc).__name__}: {exc}"
                    log.exception("reload failed, still serving %s", previous)
                kept = f"still serving model {previous}" if previous else "no model is loaded"
                raise ArtifactRefusedError(ARTIFACT_LOC, f"{reason}; {kept}") from exc
            self._install(engine)
            self._metrics.model_reloads.labels(result="success").inc()
            seconds = time.perf_counter() - started
            log.info(
                "reloaded: model %s -> %s (precision %s) in %.2f s",
                previous,
                engine.model_version,
                engine.precision,
                seconds,
            )
            return ReloadOutcome(previous, engine.model_version, Path(path), seconds)
        finally:
            self._busy = False

    def _install(self, engine: Engine) -> None:
        """Swap ``engine`` in (one assignment on the event loop) and update ``ld4mrec_model_info``."""
        current = self.recommender
        if current is None:
            self._state.recommender = Recommender(  # type: ignore[attr-defined]
                engine, self._store, self._batcher, self._metrics, self._settings
            )
        else:
            current.engine = engine
        self._state.load_error = None  # type: ignore[attr-defined]
        self._metrics.set_model(engine.model_version, engine.dataset)
