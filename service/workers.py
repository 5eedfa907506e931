"""Several worker processes on one listening socket: the supervisor and what the workers share.

``ld4mrec-serve`` with ``LD4MREC_WORKERS`` > 1 (0 = one per usable CPU, the default with Redis) binds the
port once and starts that many workers (``multiprocessing`` *spawn*: fresh interpreters, nothing forked
from a process that runs torch threads). Each worker is a complete service: its own event loop,
micro-batcher and forward thread, accepting on the shared socket. They share:

* the model's weights: every worker maps the artifact's arrays read-only (``read_artifact(mmap=True)``),
  so the pages are the OS's file cache, held once however many workers map them;
* the history store (Redis; the in-process store cannot be shared and allows one worker only);
* the metrics: ``PROMETHEUS_MULTIPROC_DIR`` is a fresh directory per start (removed at exit); every
  worker writes its counters there and any worker's ``GET /metrics`` sums them over all workers (gauges:
  live workers only, see :mod:`service.metrics`); an exited worker is marked dead
  (``mark_process_dead``);
* reloads: SIGHUP to the supervisor is forwarded to every worker (each reloads the configured artifact);
  a successful ``POST /admin/reload`` on one worker is announced (:class:`ReloadAnnouncer`: the path in
  ``reload.json``, then SIGUSR1 to the supervisor, which forwards it) and every other worker loads the
  same path. Each worker verifies what it loads; a failed reload keeps that worker's old model.

Shutdown: SIGTERM or SIGINT to the supervisor is forwarded (once) to every worker, which stops
accepting, finishes its requests in flight, drains its batcher and closes its Redis pool; the supervisor
waits for them (SIGKILL after ``SHUTDOWN_TIMEOUT_S`` + 10 s), then exits 0. Workers run in their own
process group (a Ctrl-C in the terminal reaches the supervisor only, which forwards it once) and get
SIGTERM if the supervisor dies. A worker whose artifact is refused at start-up (exit code 1) stops the
whole service with exit code 1; any other unexpected exit is logged and the worker replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["ReloadAnnouncer", "Supervisor", "pending_reload", "set_parent_death_signal"]

log = logging.getLogger("ld4mrec.service")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RELOAD_FILE = "reload.json"
READY_DIR = "ready"
ANNOUNCE_SIGNAL = signal.SIGUSR1
RESTART_PAUSE_S = 1.0  # at least this long between two replacements of crashed workers
KILL_MARGIN_S = 10.0


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Linux: deliver ``sig`` to this process when its parent exits (``prctl(PR_SET_PDEATHSIG)``), so that
    workers never outlive a killed supervisor. A no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ReloadAnnouncer:
    """A worker's link to the others, through the supervisor's ``run_dir``: ``reload.json`` names the
    artifact every worker should serve (absent: the configured one); ``ready/<pid>`` marks a worker that
    has loaded its model (``/readyz`` says ready only when every worker has)."""

    run_dir: Path

    def mark_ready(self) -> None:
        """This worker has loaded its model."""
        ready = self.run_dir / READY_DIR
        ready.mkdir(exist_ok=True)
        (ready / str(os.getpid())).touch()

    def ready_workers(self) -> int:
        """Live workers that have loaded their model."""
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in (self.run_dir / READY_DIR).iterdir():
                try:
                    os.kill(int(entry.name), 0)
                except (ValueError, ProcessLookupError):
                    continue
                except PermissionError:
                    pass
                count += 1
        return count

    @property
    def path(self) -> Path:
        return self.run_dir / RELOAD_FILE

    def announce(self, artifact: Path) -> None:
        """After this worker reloaded ``artifact``: record it and ask the supervisor to tell the others."""
        record = {"artifact": str(artifact), "origin_pid": os.getpid(), "at": time.time()}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(self.path)  # atomic: a reader sees the old record or the new one
        os.kill(os.getppid(), ANNOUNCE_SIGNAL)

    def read(self) -> tuple[Path, int] | None:
        """The announced ``(artifact, origin_pid)``, or ``None`` when the configured artifact is current."""
        return pending_reload(self.run_dir)


def pending_reload(run_dir: Path) -> tuple[Path, int] | None:
    """``(artifact, origin_pid)`` of ``run_dir/reload.json``; ``None`` when absent or unreadable."""
    try:
        record = json.loads((run_dir / RELOAD_FILE).read_text(encoding="utf-8"))
        return Path(record["artifact"]), int(record["origin_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


WorkerTarget = Callable[[Any, socket.socket, Path, int], None]  # exits with the worker's code


class Supervisor:
    """Starts ``count`` workers (``target(options, sock, run_dir, index)`` in spawned processes), forwards
    signals to them, replaces crashed ones and waits for them at shutdown; :meth:`run` returns the exit
    code."""

    def __init__(
        self,
        target: WorkerTarget,
        options: Any,
        sock: socket.socket,
        count: int,
        shutdown_timeout_s: float,
    ) -> None:
        self._target = target
        self._options = options
        self._sock = sock
        self.count = count
        self._shutdown_timeout_s = shutdown_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}  # index -> process
        self._signals: list[int] = []
        self._stopping = False
        self.run_dir = Path(tempfile.mkdtemp(prefix="ld4mrec-serve-"))
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()

    def run(self) -> int:
        """Start the workers and supervise them until shutdown; 0 after a graceful one, 1 when a worker
        refused the artifact at start-up."""
        os.environ[METRICS_DIR_ENV] = str(self.metrics_dir)  # inherited by the spawned workers
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, ANNOUNCE_SIGNAL)
        }
        code = 0
        try:
            for index in range(self.count):
                self._start(index)
            log.info(
                "supervisor %d: %d workers started, metrics in %s", os.getpid(), self.count, self.metrics_dir
            )
            last_restart = 0.0
            while True:
                self._handle_signals()
                if self._stopping:
                    break
                sentinels = [p.sentinel for p in self._workers.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.2)
                for index, proc in list(self._workers.items()):
                    if proc.is_alive():
                        continue
                    proc.join()
                    self._mark_dead(proc)
                    del self._workers[index]
                    if proc.exitcode == 1:  # the worker refused the artifact at start-up (message on stderr)
                        log.error(
                            "worker %d (pid %s) refused to start: stopping the service", index, proc.pid
                        )
                        code = 1
                        self._stopping = True
                    elif not self._stopping:
                        log.error(
                            "worker %d (pid %s) exited unexpectedly (exit code %s): starting a new one",
                            index,
                            proc.pid,
                            proc.exitcode,
                        )
                        time.sleep(max(0.0, last_restart + RESTART_PAUSE_S - time.monotonic()))
                        last_restart = time.monotonic()
                        self._start(index)
                if self._stopping:
                    break
            self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with contextlib.suppress(OSError):
                self._sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            os.environ.pop(METRICS_DIR_ENV, None)
        return code

    # -- internals -------------------------------------------------------------------------------------------
    def _start(self, index: int) -> None:
        proc = self._ctx.Process(
            target=self._target,
            args=(self._options, self._sock, self.run_dir, index),
            name=f"ld4mrec-worker-{index}",
        )
        proc.start()
        self._workers[index] = proc

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    log.info(
                        "supervisor: %s, stopping %d workers gracefully",
                        signal.Signals(signum).name,
                        len(self._workers),
                    )
                self._stopping = True
            elif signum == signal.SIGHUP:
                # the configured artifact again: a previous POST /admin/reload's path no longer applies
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / RELOAD_FILE).unlink()
                log.info("supervisor: SIGHUP, every worker reloads the configured artifact")
                self._send_all(signal.SIGHUP)
            elif signum == ANNOUNCE_SIGNAL:
                self._send_all(ANNOUNCE_SIGNAL)

    def _send_all(self, signum: int) -> None:
        for proc in self._workers.values():
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def _shutdown(self) -> None:
        """SIGTERM to every worker (once), wait for them, SIGKILL what is left after the grace period."""
        self._send_all(signal.SIGTERM)
        with contextlib.suppress(OSError):
            self._sock.close()  # no worker accepts any more; new connections are refused
        deadline = time.monotonic() + self._shutdown_timeout_s + KILL_MARGIN_S
        for proc in self._workers.values():
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %s did not stop within the grace period: killing it", proc.pid)
                proc.kill()
                proc.join(timeout=5.0)
            self._mark_dead(proc)
        self._workers.clear()

    def _mark_dead(self, proc: BaseProcess) -> None:
        """Drop the exited worker's live-gauge files (its counters stay: they are cumulative)."""
        if proc.pid is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / READY_DIR / str(proc.pid)).unlink()
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
