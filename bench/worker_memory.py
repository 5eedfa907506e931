"""Memory of the service against its worker count: PSS and RSS of the supervisor and its workers.

For each ``--workers`` count: a fresh ``redis-server`` and ``python -m service`` (``LD4MREC_WORKERS``) on
the artifact, ready on every worker, ``--requests`` reads sent (so every worker has scored), then from
``/proc/<pid>/smaps_rollup`` of every process of the service: RSS (pages mapped, shared ones counted in
every process) and PSS (each shared page divided among the processes that map it: what the service
really costs the host; the OS file cache of the memory-mapped artifact arrays is shared by all workers).

    PYTHONPATH=. python bench/worker_memory.py --artifact DIR [--workers 1,2,4]

Writes bench/results/worker_memory.json; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from _machine import loadavg, write_json
from _serve_stack import ServiceConfig, process_tree, start_redis, start_service
from model.artifact import read_artifact

RESULTS = Path(__file__).resolve().parent / "results" / "worker_memory.json"


def rollup(pid: int) -> dict[str, int]:
    """``Rss`` and ``Pss`` (kB) of one process."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss", "Pss_File", "Pss_Anon"):
            out[name] = int(rest.split()[0])
    return out


def measure(artifact: Path, workers: int, requests: int, workdir: Path) -> dict[str, Any]:
    redis, url = start_redis(workdir)
    service = None
    try:
        api_key = secrets.token_hex(16)
        cfg = ServiceConfig(64, 2.0, 1, "fp32")
        service, base = start_service(artifact, url, cfg, api_key, workdir, workers=workers)
        art_users = read_artifact(artifact, mmap=True).user_ids[:requests]
        with httpx.Client(base_url=base, headers={"X-API-Key": api_key}, timeout=30) as client:

            def one(user: str) -> int:
                return client.get(f"/recommend/{user}").status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(one, art_users))
        pids = process_tree(service.pid)
        per = {pid: rollup(pid) for pid in pids}
        return {
            "workers": workers,
            "processes": len(pids),
            "ok_reads": sum(c == 200 for c in codes),
            "rss_mib_total": round(sum(p["Rss"] for p in per.values()) / 1024, 1),
            "pss_mib_total": round(sum(p["Pss"] for p in per.values()) / 1024, 1),
            "pss_file_mib_total": round(sum(p.get("Pss_File", 0) for p in per.values()) / 1024, 1),
            "pss_anon_mib_total": round(sum(p.get("Pss_Anon", 0) for p in per.values()) / 1024, 1),
            "rss_mib_per_process": [round(p["Rss"] / 1024, 1) for p in per.values()],
        }
    finally:
        if service is not None:
            service.stop(grace_s=30)
        redis.stop()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    art = read_artifact(args.artifact, mmap=True)
    array_mib = sum(f.stat().st_size for f in args.artifact.glob("*.npy")) / 2**20
    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="worker-memory-") as tmp:
            row = measure(args.artifact, n, args.requests, Path(tmp))
        print(
            f"{n} workers: PSS {row['pss_mib_total']} MiB (file {row['pss_file_mib_total']}, anon "
            f"{row['pss_anon_mib_total']}), RSS summed {row['rss_mib_total']} MiB over {row['processes']} "
            f"processes, {row['ok_reads']} reads ok",
            flush=True,
        )
        rows.append(row)
    result = {
        "artifact": f"{art.dataset}, {art.n_users} users, {art.n_items} items, model {art.model.name}",
        "artifact_arrays_mib": round(array_mib, 1),
        "rows": rows,
        "pss_mib_per_extra_worker": round(
            (rows[-1]["pss_mib_total"] - rows[0]["pss_mib_total"])
            / max(1, rows[-1]["workers"] - rows[0]["workers"]),
            1,
        ),
        "loadavg": loadavg(),
        "command": "PYTHONPATH=. python bench/worker_memory.py " + " ".join(argv or []),
    }
    write_json(result, args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
