"""``ld4mrec-serve``: serve an artifact over HTTP with uvicorn (flags override ``LD4MREC_*`` settings).

One process, or with ``--workers`` / ``LD4MREC_WORKERS`` > 1 (0, the default, = one per usable CPU when
Redis holds the histories) a supervisor and that many worker processes on the one port
(:mod:`service.workers`).

Exit codes: 0 after a graceful shutdown (SIGTERM / SIGINT), 1 when the artifact is refused at start-up
(the message on stderr names the file) or the address cannot be bound (e.g. the port is taken: that is
the first and only error, reported before anything starts), 2 for bad settings or no artifact at all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.http_server import HTTPChoice, listen_socket, protocol_name, uvicorn_config
from service.settings import Settings, usable_cpus
from service.workers import ReloadAnnouncer, Supervisor, pending_reload, set_parent_death_signal

__all__ = ["ServeOptions", "build_parser", "main", "serve", "worker_main"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ld4mrec-serve",
        description="Serve LD4MRec recommendations over HTTP. Every other setting comes from LD4MREC_* "
        "environment variables (see the README, 'Service').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, default=None, help="artifact directory (default: $LD4MREC_ARTIFACT)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop; 'auto' = uvloop when installed (uvicorn[standard], a dependency), else asyncio",
    )
    parser.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="HTTP/1.1 parser; 'auto' = httptools when installed (uvicorn[standard]), else h11",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: $LD4MREC_WORKERS; 0 = one per usable CPU, 1 without Redis)",
    )
    return parser


def _ignore_after_shutdown(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM once its graceful shutdown is complete; by then there is nothing left to
    do, so the process exits 0 instead of dying of the signal."""


@dataclass(frozen=True)
class ServeOptions:
    """What a serving process needs besides the environment (picklable: sent to spawned workers)."""

    overrides: dict[str, Any]
    host: str
    port: int
    log_level: str
    access_log: bool
    http: HTTPChoice
    loop: str


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {"artifact": args.artifact} if args.artifact is not None else {}
    if args.workers is not None:
        overrides["workers"] = args.workers
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"ld4mrec-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    manifest = settings.artifact / "manifest.json"
    if not manifest.is_file():
        print(
            f"ld4mrec-serve: error: {manifest}: not found; train an artifact first, e.g. "
            f"ld4mrec-train --data demo --out {settings.artifact}",
            file=sys.stderr,
        )
        return 2
    try:  # before anything starts or logs, so that a taken port is the first and only error
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        print(f"ld4mrec-serve: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    _configure_logging(args.log_level)
    logger = logging.getLogger("ld4mrec.service")
    if settings.api_key is None and args.host not in LOOPBACK_HOSTS:
        logger.warning(
            "listening on %s without LD4MREC_API_KEY: anyone who reaches this port can write histories "
            "and reload the model",
            args.host,
        )
    workers = settings.worker_count
    if settings.workers == 0 and settings.redis_url is None and usable_cpus() > 1:
        logger.info(
            "1 worker process (LD4MREC_WORKERS=0 = one per CPU needs a shared history store: set "
            "LD4MREC_REDIS_URL for %d workers)",
            usable_cpus(),
        )
    options = ServeOptions(
        overrides | {"workers": workers},
        args.host,
        args.port,
        args.log_level,
        not args.no_access_log,
        args.http,
        args.loop,
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    if workers == 1:
        logger.info("listening on http://%s:%d (1 worker process)", host, args.port)
        return serve(options, sock)
    if settings.torch_threads == 0:  # the cores are shared out between the workers' forward passes
        options.overrides["torch_threads"] = max(1, usable_cpus() // workers)
    sock.listen(2048)  # before the workers start: connections queue while they load the model
    logger.info(
        "listening on http://%s:%d (%d worker processes, %d torch threads each)",
        host,
        args.port,
        workers,
        options.overrides.get("torch_threads", settings.torch_threads),
    )
    supervisor = Supervisor(worker_main, options, sock, workers, settings.shutdown_timeout_s)
    return supervisor.run()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )


def worker_main(options: ServeOptions, sock: socket.socket, run_dir: Path, index: int) -> None:
    """A worker process of :class:`~service.workers.Supervisor` (spawned): serve on the shared socket
    and exit with :func:`serve`'s code. It starts on the artifact of the last announced reload, if any."""
    set_parent_death_signal()
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
    _configure_logging(options.log_level)
    announced = pending_reload(run_dir)
    start_artifact = announced[0] if announced is not None else None
    sys.exit(serve(options, sock, ReloadAnnouncer(run_dir), index, start_artifact))


def serve(
    options: ServeOptions,
    sock: socket.socket,
    announcer: ReloadAnnouncer | None = None,
    worker: int | None = None,
    start_artifact: Path | None = None,
) -> int:
    """Run one serving process on ``sock`` until SIGTERM / SIGINT: 0 after a graceful shutdown, 1 when the
    start-up artifact is refused. ``start_artifact``: load this one first instead of the configured one
    (a replacement worker joins the others on the artifact they serve)."""
    settings = Settings(**options.overrides)
    refused: list[str] = []

    def refuse(message: str) -> None:
        """The start-up artifact is refused: say why on stderr and stop the server (exit code 1)."""
        refused.append(message)
        print(f"ld4mrec-serve: error: {message}", file=sys.stderr, flush=True)
        server.should_exit = True

    config = uvicorn_config(
        create_app(settings, on_load_failure=refuse, announcer=announcer, start_artifact=start_artifact),
        settings,
        host=options.host,
        port=options.port,
        http=options.http,
        loop=options.loop,
        log_level=options.log_level,
        access_log=options.access_log,
    )
    server = uvicorn.Server(config)
    config.load()  # what uvicorn.run() does first; resolves --http auto, so the log can say what it chose
    if worker in (None, 0):
        logging.getLogger("ld4mrec.service").info(
            "HTTP/1.1 protocol: %s (--http %s), event loop: --loop %s; headers <= %d bytes within %g s, "
            "body within %g s",
            protocol_name(config.http_protocol_class),
            options.http,
            options.loop,
            settings.max_header_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
        )
    signal.signal(signal.SIGTERM, _ignore_after_shutdown)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is re-raised after the graceful shutdown
        server.run(sockets=[sock])
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
