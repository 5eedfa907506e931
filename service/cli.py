"""``ld4mrec-serve``: serve an artifact over HTTP with uvicorn (flags override ``LD4MREC_*`` settings).

Exit codes: 0 after a graceful shutdown (SIGTERM / SIGINT), 1 when the artifact is refused at start-up
(the message on stderr names the file) or the address cannot be bound (e.g. the port is taken: that is
the first and only error, reported before anything starts), 2 for bad settings or no artifact at all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.http_server import listen_socket, protocol_name, uvicorn_config
from service.settings import Settings

__all__ = ["build_parser", "main"]

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
    return parser


def _ignore_after_shutdown(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM once its graceful shutdown is complete; by then there is nothing left to
    do, so the process exits 0 instead of dying of the signal."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"artifact": args.artifact} if args.artifact is not None else {}
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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    refused: list[str] = []

    def refuse(message: str) -> None:
        """The start-up artifact is refused: say why on stderr and stop the server (exit code 1)."""
        refused.append(message)
        print(f"ld4mrec-serve: error: {message}", file=sys.stderr, flush=True)
        server.should_exit = True

    config = uvicorn_config(
        create_app(settings, on_load_failure=refuse),
        settings,
        host=args.host,
        port=args.port,
        http=args.http,
        loop=args.loop,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    server = uvicorn.Server(config)
    config.load()  # what uvicorn.run() does first; resolves --http auto, so the log can say what it chose
    logger = logging.getLogger("ld4mrec.service")
    logger.info(
        "HTTP/1.1 protocol: %s (--http %s), event loop: --loop %s; headers <= %d bytes within %g s, "
        "body within %g s",
        protocol_name(config.http_protocol_class),
        args.http,
        args.loop,
        settings.max_header_bytes,
        settings.header_timeout_s,
        settings.body_timeout_s,
    )
    if settings.api_key is None and args.host not in LOOPBACK_HOSTS:
        logger.warning(
            "listening on %s without LD4MREC_API_KEY: anyone who reaches this port can write histories "
            "and reload the model",
            args.host,
        )
    signal.signal(signal.SIGTERM, _ignore_after_shutdown)
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.info("listening on http://%s:%d", host, args.port)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is re-raised after the graceful shutdown
        server.run(sockets=[sock])
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
