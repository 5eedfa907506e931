"""Does a flood of invalid requests slow the valid ones? Valid-request latency with and without a flood.

Starts redis-server and the service (API key set) like ``bench/soak.py``, then alternates phases of
``--phase-s`` seconds, side by side in one run: *quiet* (valid ``GET /recommend/{user_id}`` at a fixed
``--rate``) and *flood* (the same valid requests while ``--workers`` clients send invalid requests as fast
as they can: bad ``k``, unknown items or users, oversized bodies, malformed JSON, missing or wrong API
keys). Reported: p50/p95/p99 of the valid requests per phase kind and their ratio, the invalid requests
per second, their status codes (all must be 4xx), and the scoring rows counted by the service
(``ld4mrec_batch_queue_wait_seconds_count``), which must equal the valid requests: no invalid request
reached the batcher or the model.

    python bench/invalid_flood.py            # 4 x 15 s phases -> bench/results/invalid_flood.json
    python bench/invalid_flood.py --quick    # 4 x 4 s phases

The client and the service share the machine: the flood's own CPU cost (HTTP parsing, validation, the
load generator) is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from _machine import display_path, loadavg, machine_info, write_json
from soak import REPO, ServiceStack, demo_artifact, percentiles

KEY = "bench-key"
INVALID: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/recommend/0?k=0", None, {}),
    ("GET", "/recommend/0?k=100000", None, {}),
    ("GET", "/recommend/0?candidates=no-such-item", None, {}),
    ("GET", "/recommend/no-such-user", None, {}),
    ("POST", "/recommend", {"history": ["no-such-item"]}, {}),
    ("POST", "/recommend", b"{not json", {"content-type": "application/json"}),
    ("POST", "/recommend/batch", {"user_ids": []}, {}),
    ("POST", "/users/0/interactions", {"item_ids": ["1"]}, {}),  # no key: 401
    ("POST", "/users/0/interactions", {"item_ids": ["1"]}, {"X-API-Key": "wrong"}),  # 403
    ("POST", "/users/0/interactions", {"item_ids": ["no-such-item"]}, {"X-API-Key": KEY}),  # 422
    ("POST", "/users/0/interactions", b"x" * 2_000_000, {"X-API-Key": KEY}),  # 413
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rows_scored(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("ld4mrec_batch_queue_wait_seconds_count "):
            return float(line.split()[1])
    return 0.0


async def run_phases(
    base: str, pid: int, users: list[str], rate: float, phase_s: float, workers: int, phases: int
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"quiet": [], "flood": []}
    cpu: dict[str, float] = {"quiet": 0.0, "flood": 0.0}  # service CPU seconds per phase kind
    valid_errors: list[str] = []
    invalid_status: dict[int | str, int] = {}
    invalid_seconds = 0.0
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def valid(kind: str) -> None:
            started = time.perf_counter()
            response = await client.get(f"/recommend/{rng.choice(users)}", params={"k": 20})
            latencies[kind].append(time.perf_counter() - started)
            if response.status_code != 200:
                valid_errors.append(f"{response.status_code} {response.text[:200]}")

        async def flood(stop: asyncio.Event, seed: int) -> None:
            local = random.Random(seed)
            while not stop.is_set():
                method, path, body, headers = local.choice(INVALID)
                content = body if isinstance(body, bytes) else None
                payload = None if isinstance(body, bytes) else body
                try:
                    response = await client.request(
                        method, path, json=payload, content=content, headers=headers
                    )
                    status: int | str = response.status_code
                except httpx.TransportError:
                    if content is None or len(content) < 1_000_000:
                        raise
                    # the server answered 413 from Content-Length and closed the connection while the
                    # client was still uploading: the client sees the connection drop
                    status = "413 (closed during upload)"
                invalid_status[status] = invalid_status.get(status, 0) + 1

        loop = asyncio.get_running_loop()
        for phase in range(phases):
            kind = "flood" if phase % 2 else "quiet"
            stop = asyncio.Event()
            flooders = [asyncio.create_task(flood(stop, w)) for w in range(workers if kind == "flood" else 0)]
            start, cpu_start = loop.time(), cpu_seconds(pid)
            tasks, n = [], 0
            while loop.time() < start + phase_s:
                tasks.append(asyncio.create_task(valid(kind)))
                n += 1
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            await asyncio.gather(*tasks)
            stop.set()
            await asyncio.gather(*flooders)
            cpu[kind] += cpu_seconds(pid) - cpu_start
            if kind == "flood":
                invalid_seconds += loop.time() - start
    n_invalid = sum(invalid_status.values())
    return {
        "latencies": latencies,
        "service_cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "service_cpu_ms_per_invalid": round(1000 * (cpu["flood"] - cpu["quiet"]) / n_invalid, 3)
        if n_invalid
        else None,
        "valid_errors": valid_errors,
        "invalid_status": invalid_status,
        "invalid_per_s": round(sum(invalid_status.values()) / invalid_seconds, 1) if invalid_seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="artifact directory (default: demo)")
    parser.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--phases", type=int, default=4, help="phases, alternating quiet / flood")
    parser.add_argument("--rate", type=float, default=20.0, help="valid requests per second")
    parser.add_argument("--workers", type=int, default=8, help="concurrent invalid-request senders")
    parser.add_argument("--quick", action="store_true", help="4 phases of 4 s")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.phase_s = 4.0
    out = args.out or REPO / "bench" / "results" / (
        "invalid_flood_quick.json" if args.quick else "invalid_flood.json"
    )
    command = "python bench/invalid_flood.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info(torch.device("cpu"))

    with tempfile.TemporaryDirectory(prefix="ld4mrec-flood-") as tmp:
        artifact = args.artifact or demo_artifact(Path(tmp))
        users = json.loads((artifact / "user_ids.json").read_text())
        with ServiceStack(artifact, Path(tmp), {"LD4MREC_API_KEY": KEY}) as stack:
            rows_before = rows_scored(stack.base)
            result = asyncio.run(
                run_phases(stack.base, stack.pid, users, args.rate, args.phase_s, args.workers, args.phases)
            )
            rows = rows_scored(stack.base) - rows_before
            exit_code = stack.stop_service()

    quiet, flood = (percentiles(result["latencies"][k]) for k in ("quiet", "flood"))
    n_valid = sum(len(v) for v in result["latencies"].values())
    headline = {
        "valid_quiet_p50_ms": quiet["p50_ms"],
        "valid_flood_p50_ms": flood["p50_ms"],
        "valid_quiet_p99_ms": quiet["p99_ms"],
        "valid_flood_p99_ms": flood["p99_ms"],
        "p50_ratio_flood_vs_quiet": round(flood["p50_ms"] / quiet["p50_ms"], 2) if quiet["p50_ms"] else None,
        "invalid_per_s": result["invalid_per_s"],
        "service_cpu_ms_per_invalid": result["service_cpu_ms_per_invalid"],
        "invalid_non_4xx": sum(
            n for s, n in result["invalid_status"].items() if isinstance(s, int) and not 400 <= s < 500
        ),
        "valid_errors": len(result["valid_errors"]),
        "valid_requests": n_valid,
        "rows_scored": rows,
    }
    payload = {
        "headline": headline,
        "valid_latency": {"quiet": quiet, "flood": flood},
        "service_cpu_s_by_phase_kind": result["service_cpu_s"],
        "invalid_status": {str(k): v for k, v in sorted(result["invalid_status"].items(), key=str)},
        "first_valid_errors": result["valid_errors"][:20],
        "settings": {
            "rate": args.rate,
            "phase_s": args.phase_s,
            "phases": args.phases,
            "workers": args.workers,
        },
        "artifact": display_path(artifact) if args.artifact else "demo",
        "loadavg_1_5_15_at_end": loadavg(),
        "machine": machine,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_json(payload, out)
    print(
        f"valid GET /recommend at {args.rate:g}/s: quiet p50 {quiet['p50_ms']} ms, p99 {quiet['p99_ms']} ms; "
        f"during a flood of {result['invalid_per_s']} invalid requests/s: p50 {flood['p50_ms']} ms / "
        f"p99 {flood['p99_ms']} ms"
    )
    print(
        f"invalid answers: {payload['invalid_status']}; rows scored {rows:.0f} for {n_valid} valid requests"
    )
    print(f"results: {display_path(out)}")
    print(json.dumps(headline))
    ok = not result["valid_errors"] and headline["invalid_non_4xx"] == 0 and rows == n_valid
    return 0 if ok and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
