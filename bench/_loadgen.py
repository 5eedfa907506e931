"""HTTP load for bench/serve_load.py: the request mix, one step run by a separate load-generator process,
and the step's summary.

A request is one of three kinds: ``get`` (``GET /recommend/{user}?k=20``), ``write`` (``POST
/users/{user}/interactions``) and ``cold`` (``POST /recommend`` with a history in the body). Any answer
other than 2xx, and any transport failure or timeout, is an error.

Each step runs in its own process (``_httpload.py``: pre-encoded requests, asyncio protocols, httptools'
response parser, uvloop when installed), so the client neither shares the benchmark's interpreter nor
costs the ~1 ms of CPU per request that httpx did; its CPU time is returned with the step.

Open loop: request i is *scheduled* at ``t0 + i / rate`` whatever happened to the earlier ones, and its
latency runs from that scheduled time to the end of the answer, so a slow server (or a late client) shows
up as latency instead of fewer requests (no coordinated omission). Closed loop: N clients each send their
next request when the previous one is answered; latency runs from the actual send.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _httpload import encode_request

__all__ = ["KINDS", "Mix", "Request", "RequestFactory", "Sample", "StepResult", "run_step", "summarise"]

HTTPLOAD = Path(__file__).resolve().with_name("_httpload.py")
KINDS = ("get", "write", "cold")


@dataclass(frozen=True)
class Mix:
    """Shares of the request kinds (they sum to 1)."""

    get: float = 0.9
    write: float = 0.05
    cold: float = 0.05

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``"get=0.9,write=0.05,cold=0.05"`` (missing kinds are 0; shares are normalised)."""
        shares = dict.fromkeys(KINDS, 0.0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, _, value = part.partition("=")
            if kind not in shares:
                raise ValueError(f"--mix: unknown request kind {kind!r} (known: {', '.join(KINDS)})")
            shares[kind] = float(value)
        total = sum(shares.values())
        if total <= 0 or min(shares.values()) < 0:
            raise ValueError(f"--mix: shares must be >= 0 and not all 0, got {text!r}")
        return cls(**{k: v / total for k, v in shares.items()})

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in KINDS}


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    url: str
    body: dict[str, Any] | None = None

    def raw(self, host: str, headers: dict[str, str]) -> bytes:
        """The complete HTTP/1.1 request (compact JSON body)."""
        body = None if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()
        return encode_request(self.method, self.url, host, headers, body)


class RequestFactory:
    """Random requests of the mix over known users and (popularity-weighted) items.

    Args:
        user_ids: external ids of users with a training history (the ``get`` and ``write`` pool).
        item_ids: external item ids, the catalogue.
        item_weights: (n_items,) sampling weights of items for writes and cold-start histories.
        k: items per answer; cold_history: items in a cold-start history.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        item_weights: np.ndarray,
        mix: Mix,
        seed: int,
        k: int = 20,
        cold_history: int = 5,
    ) -> None:
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.item_p = item_weights / item_weights.sum()
        self.mix = mix
        self.k = k
        self.cold_history = cold_history
        self.rng = np.random.default_rng(seed)

    def make(self, n: int) -> list[Request]:
        kinds = self.rng.choice(len(KINDS), size=n, p=[getattr(self.mix, k) for k in KINDS])
        users = self.rng.integers(len(self.user_ids), size=n)
        out = []
        for kind, user in zip(kinds.tolist(), users.tolist(), strict=True):
            uid = self.user_ids[user]
            if kind == 0:
                out.append(Request("get", "GET", f"/recommend/{uid}?k={self.k}"))
            elif kind == 1:
                item = self.item_ids[int(self.rng.choice(len(self.item_ids), p=self.item_p))]
                out.append(Request("write", "POST", f"/users/{uid}/interactions", {"item_ids": [item]}))
            else:
                picks = self.rng.choice(len(self.item_ids), size=self.cold_history, p=self.item_p)
                history = [self.item_ids[i] for i in picks.tolist()]
                out.append(Request("cold", "POST", "/recommend", {"history": history, "k": self.k}))
        return out


@dataclass
class Sample:
    """One request: kind, latency (s), HTTP status (0: no answer), error text if it failed."""

    kind: str
    latency_s: float
    status: int
    error: str | None
    done_at: float  # time.perf_counter() when the answer ended


@dataclass
class StepResult:
    """The samples of one step, its timing, and the client's own lateness (open loop)."""

    samples: list[Sample]
    started: float  # perf_counter of the first scheduled / sent request
    ended: float  # perf_counter when the step's last answer arrived (or the drain gave up)
    unfinished: int  # requests still in flight when the drain timed out (counted as errors)
    send_lag_s: list[float]  # open loop: actual send - scheduled send, per request


def run_step(
    base_url: str,
    headers: dict[str, str],
    requests: Sequence[Request],
    mode: str,
    level: float,
    *,
    duration_s: float = 0.0,
    drain_s: float = 6.0,
    timeout_s: float = 5.0,
    connections: int | None = None,
    cpus: Sequence[int] | None = None,
    workdir: Path | None = None,
) -> tuple[StepResult, float]:
    """Run one step in a separate load-generator process (``_httpload.py``); returns the step and the
    CPU seconds that process used during it.

    ``mode`` "open": ``requests`` sent at ``level`` per second (request i at t0 + i / level), then
    ``drain_s`` at most for the answers still in flight; "closed": ``level`` clients back to back for
    ``duration_s`` (requests taken in turn, cycling). ``connections``: the open loop's pool size
    (default max(16, min(256, rate / 10))). ``cpus``: pin the load generator to these cores."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    pool = (connections or max(16, min(256, int(level * 0.1)))) if mode == "open" else int(level)
    spec = {
        "host": host,
        "port": port,
        "mode": mode,
        "rate": level if mode == "open" else None,
        "clients": int(level) if mode == "closed" else None,
        "duration_s": duration_s,
        "drain_s": drain_s,
        "timeout_s": timeout_s,
        "connections": pool,
        "prefill": min(pool, 32),
        "cpus": list(cpus) if cpus else None,
        "raw": [r.raw(f"{host}:{port}", headers).decode("latin-1") for r in requests],
        "kind": [KINDS.index(r.kind) for r in requests],
    }
    with tempfile.TemporaryDirectory(prefix="loadgen-", dir=workdir) as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        limit = (duration_s if mode == "closed" else len(requests) / level) + drain_s + 60
        subprocess.run(
            [sys.executable, str(HTTPLOAD), str(spec_path), str(out_path)], check=True, timeout=limit
        )
        out = json.loads(out_path.read_text(encoding="utf-8"))
    samples = [
        Sample(KINDS[k], lat, status, err, done)
        for k, lat, status, err, done in zip(
            out["kind"], out["latency_s"], out["status"], out["error"], out["done_at"], strict=True
        )
    ]
    step = StepResult(samples, out["started"], out["ended"], out["unfinished"], out["send_lag_s"])
    return step, float(out["cpu_s"])


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / max / mean in ms (None when empty)."""
    if not latencies_s:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"))
    lat = np.asarray(latencies_s) * 1e3
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(lat.max()), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def summarise(step: StepResult) -> dict[str, Any]:
    """Counts, achieved throughput (2xx answers / (last answer - first send)), latency of all answered
    requests (errors included: a timeout is a long latency), per-kind figures and the error kinds."""
    samples = step.samples
    ok = [s for s in samples if s.error is None]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    if step.unfinished:
        errors["unfinished"] = step.unfinished
    elapsed = max(step.ended - step.started, 1e-9)
    per_kind = {}
    for kind in KINDS:
        mine = [s for s in samples if s.kind == kind]
        if mine:
            per_kind[kind] = {
                "n": len(mine),
                "errors": sum(s.error is not None for s in mine),
                "achieved_rps": round(sum(s.error is None for s in mine) / elapsed, 1),
                **latency_summary([s.latency_s for s in mine]),
            }
    out: dict[str, Any] = {
        "sent": len(samples) + step.unfinished,
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(len(ok) / elapsed, 1),
        **latency_summary([s.latency_s for s in samples]),
        "per_kind": per_kind,
    }
    if step.send_lag_s:
        lag = np.asarray(step.send_lag_s) * 1e3
        out["client_send_lag_ms_p50"] = round(float(np.percentile(lag, 50)), 2)
        out["client_send_lag_ms_p99"] = round(float(np.percentile(lag, 99)), 2)
    return out
