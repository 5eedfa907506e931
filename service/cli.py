"""``ld4mrec-serve``: serve an artifact over HTTP with uvicorn (flags override ``LD4MREC_*`` settings)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings

__all__ = ["build_parser", "main"]


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
    return parser


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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
