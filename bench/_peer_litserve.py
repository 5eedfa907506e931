"""LitServe peer of bench/serve_peers.py: the artifact's top-k (``_peer_model.TopK``) behind LitServe.

``python bench/_peer_litserve.py --artifact DIR --port PORT --workers N [--max-batch 64 --wait-ms 2]``
serves ``POST /recommend`` with the body ``{"user_id": ..., "k": ...}`` (LitServe's endpoints take a
JSON body; an unknown user is a 404), configured as LitServe's documentation recommends for throughput
(citations in BENCHMARKS.md, "Serving against peers"):

- batching on the LitAPI: ``max_batch_size`` and ``batch_timeout`` (``predict`` gets the batch's list);
- ``workers_per_device`` = the cores on a CPU (``accelerator="cpu"``, one device), torch 1 thread each;
- ``fast_queue=True`` (ZeroMQ between the API servers and the workers, "for > 100 RPS");
- ``num_api_servers`` left at its default (as many HTTP server processes as inference workers).

LitServe logs its own start; this script runs until SIGTERM or SIGINT (LitServe handles them).
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_model import TopK  # noqa: E402


class RecommendAPI(ls.LitAPI):
    """One request: ``{"user_id": str, "k": int}`` -> the top-k answer (``TopK.recommend``)."""

    def __init__(self, artifact: str, precision: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact
        self.precision = precision

    def setup(self, device: str) -> None:
        self.scorer = TopK(self.artifact, torch_threads=1, precision=self.precision)

    def decode_request(self, request):  # unannotated: LitServe then passes the parsed JSON body
        return str(request["user_id"]), int(request.get("k", 20))

    def batch(self, inputs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return inputs

    def predict(self, x: list[tuple[str, int]]) -> list[dict[str, Any] | None]:
        return self.scorer.recommend([u for u, _ in x], [k for _, k in x])

    def unbatch(self, output: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
        return output

    def encode_response(self, output: dict[str, Any] | None):  # no return annotation: a plain JSON answer
        if output is None:
            raise HTTPException(status_code=404, detail="unknown user")
        return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--artifact", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--wait-ms", type=float, default=2.0)
    p.add_argument("--no-fast-queue", action="store_true")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args(argv)
    api = RecommendAPI(
        args.artifact,
        args.precision,
        max_batch_size=args.max_batch,
        batch_timeout=args.wait_ms / 1e3,
        api_path="/recommend",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        fast_queue=not args.no_fast_queue,
        timeout=30,
    )
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
