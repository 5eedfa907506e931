"""The compose stack's monitoring, proven natively: redis-server + ld4mrec-serve + Debian's prometheus.

Prometheus runs the repo's docker/prometheus/prometheus.yml and alerts.yml, with only the scrape targets
rewritten to loopback and the intervals shortened to 1 s. After real traffic (reads, writes, cold start,
batch, 4xx, then Redis killed: fallback reads, Redis errors, 503s), every PromQL expression of the
provisioned Grafana dashboard must return data from the real service, and every recording and alerting
rule must parse and evaluate. Finally the API is stopped and the target-down expression must see it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .stack_files import (
    PROMETHEUS_CONFIG,
    dashboard_queries,
    metric_names,
    require_binary,
    rule_expressions,
)

WINDOW = "2m"  # replaces $__rate_interval: longer than the whole test, so every sample counts
STARTUP_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tail}")


@contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with output to ``log``; always terminated (then killed) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def rewritten_prometheus_config(api_port: int, prometheus_port: int, directory: Path) -> Path:
    """The repo's prometheus.yml with loopback targets and 1 s intervals; alerts.yml copied beside it."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    replacements = {"api:8000": f"127.0.0.1:{api_port}", "localhost:9090": f"127.0.0.1:{prometheus_port}"}
    rewritten = 0
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            assert all(t in replacements for t in static["targets"]), f"unexpected target in {static}"
            rewritten += len(static["targets"])
            static["targets"] = [replacements[t] for t in static["targets"]]
    assert rewritten == len(replacements)
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_CONFIG.parent / rule_file, directory / rule_file)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Stack:
    api: httpx.Client
    prometheus: httpx.Client
    api_process: subprocess.Popen[bytes]
    redis_process: subprocess.Popen[bytes]
    logs: Path
    user_ids: list[str]
    item_ids: list[str]

    def query(self, expr: str) -> dict[str, Any]:
        """Instant query; the whole JSON answer (status 'success' or 'error')."""
        answer: dict[str, Any] = self.prometheus.get("/api/v1/query", params={"query": expr}).json()
        return answer

    def samples(self, expr: str) -> list[float]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(series["value"][1]) for series in data["result"]]


@pytest.fixture(scope="module")
def stack(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_server, prometheus = require_binary("redis-server"), require_binary("prometheus")
    serve = Path(sys.executable).with_name("ld4mrec-serve")
    logs = tmp_path_factory.mktemp("native_stack")
    redis_port, api_port, prometheus_port = free_port(), free_port(), free_port()
    config = rewritten_prometheus_config(api_port, prometheus_port, logs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")}
    env.update(
        LD4MREC_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", LD4MREC_DEVICE="cpu", LD4MREC_TORCH_THREADS="1"
    )

    with (
        process(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(logs),
            ],
            logs / "redis.log",
        ) as redis_process,
        process(
            [
                str(serve),
                "--artifact",
                str(tiny_artifact),
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            logs / "api.log",
            env=env,
        ) as api_process,
        process(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={logs / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            logs / "prometheus.log",
        ),
        httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as api,
        httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=10) as prom,
    ):
        wait_until(
            "ld4mrec-serve /readyz",
            lambda: api.get("/readyz").status_code == 200,
            STARTUP_TIMEOUT_S,
            logs / "api.log",
        )
        wait_until(
            "prometheus /-/ready",
            lambda: prom.get("/-/ready").status_code == 200,
            STARTUP_TIMEOUT_S,
            logs / "prometheus.log",
        )
        assert api.get("/readyz").json()["history_store"] == "redis"
        user_ids = json.loads((tiny_artifact / "user_ids.json").read_text())
        item_ids = json.loads((tiny_artifact / "item_ids.json").read_text())
        stack = Stack(api, prom, api_process, redis_process, logs, list(user_ids), list(item_ids))
        # Prometheus applies new targets seconds after it is ready: traffic starts after the first scrape.
        wait_until(
            "the first scrape of the API",
            lambda: stack.samples('up{job="ld4mrec-api"}') == [1.0],
            SCRAPE_TIMEOUT_S,
            logs / "prometheus.log",
        )
        yield stack


def send_traffic(stack: Stack) -> None:
    """Reads (concurrent, so batches form), writes, fold-in misses and hits, cold start, batch, 4xx; then
    Redis is killed: reads fall back to the artifact and writes get 503. Spread over several scrapes."""
    api, users, items = stack.api, stack.user_ids, stack.item_ids

    def call(method: str, url: str, body: Any = None) -> int:
        return api.request(method, url, json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        for round_ in range(3):
            statuses = list(pool.map(lambda u: call("GET", f"/recommend/{u}?k=10"), users[:24]))
            assert set(statuses) == {200}, statuses
            writer = users[round_]
            assert (
                call(
                    "POST", f"/users/{writer}/interactions", {"item_ids": items[round_ * 3 : round_ * 3 + 3]}
                )
                == 200
            )
            assert call("GET", f"/recommend/{writer}?k=5") == 200  # fold-in: miss
            assert call("GET", f"/recommend/{writer}?k=5") == 200  # fold-in: hit
            assert call("POST", "/users/native-new-user/interactions", {"item_ids": [items[round_]]}) == 200
            assert call("GET", "/recommend/native-new-user?k=5") == 200
            assert call("POST", "/recommend", {"history": items[:4], "k": 5}) == 200
            assert call("POST", "/recommend/batch", {"user_ids": users[:8], "k": 5}) == 200
            assert call("GET", f"/recommend/{users[0]}?k=0") == 422
            assert call("GET", "/recommend/no-such-user-anywhere") == 404
            assert call("POST", f"/users/{writer}/interactions", {"item_ids": []}) == 422
            assert call("GET", "/model") == 200
            time.sleep(1.1)

    stop(stack.redis_process)
    for _ in range(3):
        for u in users[:3]:
            assert call("GET", f"/recommend/{u}?k=5") == 200  # served from the artifact's history
        status = call("POST", f"/users/{users[0]}/interactions", {"item_ids": [items[-1]]})
        assert status == 503, status
        time.sleep(1.1)


@pytest.fixture(scope="module")
def scraped(stack: Stack) -> Stack:
    """The stack after the traffic, once Prometheus has scraped and evaluated the rules on all of it."""
    send_traffic(stack)
    final = stack.api.get("/metrics").text
    fallback_now = next(
        float(line.split()[-1])
        for line in final.splitlines()
        if line.startswith("ld4mrec_history_fallback_reads_total ")
    )
    assert fallback_now > 0
    wait_until(
        "Prometheus to scrape the final counters",
        lambda: stack.samples("ld4mrec_history_fallback_reads_total") == [fallback_now],
        SCRAPE_TIMEOUT_S,
    )
    time.sleep(2.5)  # two more scrapes and rule evaluations
    return stack


def test_every_dashboard_query_returns_data_from_the_service(scraped: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty: list[str] = []
    for query in queries:
        expr = query.concrete(WINDOW)
        values = scraped.samples(expr)
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{query.panel_title} [{query.ref_id}]: {expr} -> {values}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_every_dashboard_metric_is_exported_by_the_service(scraped: Stack) -> None:
    """No query returns data only thanks to `or vector(0)`: each metric it names has real series."""
    names = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    missing = [name for name in sorted(names) if not scraped.samples(f"count({name})")]
    assert not missing, f"no series in Prometheus for {missing}"
    assert scraped.samples('sum(ld4mrec_http_requests_total{status_class="5xx"})')[0] >= 3
    assert scraped.samples('sum(ld4mrec_http_requests_total{status_class="4xx"})')[0] >= 9


def test_every_rule_parses_and_evaluates(scraped: Stack) -> None:
    rules = rule_expressions()
    for rule in rules:
        answer = scraped.query(rule.expr)
        assert answer["status"] == "success", f"{rule.name}: {answer.get('error')}"
        if rule.kind == "record":
            assert scraped.samples(rule.name), f"recording rule {rule.name} has no data"
    loaded = scraped.prometheus.get("/api/v1/rules").json()["data"]["groups"]
    health = {
        rule["name"]: (rule["health"], rule.get("lastError", "")) for g in loaded for rule in g["rules"]
    }
    assert set(health) == {rule.name for rule in rules}, "Prometheus did not load all of alerts.yml"
    assert all(h == ("ok", "") for h in health.values()), health


def test_redis_alerts_trigger_on_the_real_outage(scraped: Stack) -> None:
    active = {
        a["labels"]["alertname"] for a in scraped.prometheus.get("/api/v1/alerts").json()["data"]["alerts"]
    }
    assert {"LD4MRecRedisErrors", "LD4MRecHistoryFallbackReads"} <= active, active
    assert "LD4MRecTargetDown" not in active


def test_target_down_is_seen_when_the_api_stops(scraped: Stack) -> None:
    target_down = next(r.expr for r in rule_expressions() if r.name == "LD4MRecTargetDown")
    assert scraped.samples(target_down) == []
    stop(scraped.api_process)
    wait_until(
        "the target-down expression to match", lambda: scraped.samples(target_down) == [0.0], SCRAPE_TIMEOUT_S
    )
