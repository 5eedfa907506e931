"""Ray Serve peer of bench/serve_peers.py: the artifact's top-k (``_peer_model.TopK``) behind Ray Serve.

``python bench/_peer_ray.py --artifact DIR --port PORT --replicas N [--max-batch 64 --wait-ms 2]`` starts
a local Ray instance (``num_cpus`` = N, no dashboard) and one deployment answering
``GET /recommend/{user_id}?k=K`` (404 for an unknown user), with, as Ray's documentation recommends for
throughput (citations in BENCHMARKS.md, "Serving against peers"):

- ``@serve.batch(max_batch_size, batch_wait_timeout_s)`` on the scoring method (Dynamic Request Batching
  guide: a power of two; a wait well below the SLO minus the model's time);
- ``num_replicas`` = the cores, each reserving one (``ray_actor_options={"num_cpus": 1}``; Ray sets
  ``OMP_NUM_THREADS`` to it; torch gets 1 thread) (Performance Tuning guide);
- ``max_ongoing_requests`` well above ``max_batch_size`` (the default 5 would cap every batch at 5);
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` and ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy ingress straight to the
  replicas) unless ``--no-haproxy``: the environment is set by the caller before Ray starts.

It prints ``READY`` once the application runs and stays up until SIGTERM or SIGINT (then it shuts Serve
and Ray down). Runs with the project on ``PYTHONPATH`` (the bench does that).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_app(
    artifact: str, replicas: int, max_batch: int, wait_s: float, max_ongoing: int, precision: str
) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": 1},
    )
    class Recommend:
        def __init__(self, artifact: str, precision: str) -> None:
            from _peer_model import TopK

            self.scorer = TopK(artifact, torch_threads=1, precision=precision)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def top(self, user_ids: list[str], ks: list[int]) -> list[dict[str, Any] | None]:
            return self.scorer.recommend(user_ids, ks)

        async def __call__(self, request: Request) -> JSONResponse:
            user_id = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            try:
                k = int(request.query_params.get("k", "20"))
            except ValueError:
                return JSONResponse({"detail": "k must be an integer"}, status_code=422)
            answer = await self.top(user_id, k)
            if answer is None:
                return JSONResponse({"detail": f"unknown user {user_id[:64]!r}"}, status_code=404)
            return JSONResponse(answer)

    return Recommend.bind(artifact, precision)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--artifact", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--wait-ms", type=float, default=2.0)
    p.add_argument("--max-ongoing", type=int, default=256)
    p.add_argument("--object-store-mb", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    ray.init(
        address="local",  # a new local instance, never an existing cluster
        num_cpus=args.replicas,
        include_dashboard=False,
        object_store_memory=args.object_store_mb * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = build_app(
            args.artifact, args.replicas, args.max_batch, args.wait_ms / 1e3, args.max_ongoing, args.precision
        )
        serve.run(app, name="recommend", route_prefix="/recommend", blocking=False)
        print("READY", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
