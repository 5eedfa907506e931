"""Several worker processes behind one port (``LD4MREC_WORKERS=2``, the real CLI, one Redis): both workers
answer, ``/metrics`` sums over them, a reload on one reaches the other (a refused one changes nothing), a
crashed worker is replaced on the current model, SIGHUP reloads every worker, SIGTERM stops them all
gracefully; and the in-process history store allows one worker only."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from service.settings import Settings
from tests.service.helpers import RedisServer, ServiceProcess, copy_artifact, http_json, wait_http_ready

RECOMMEND = 'ld4mrec_http_requests_total{method="GET",route="/recommend/{user_id}",status_class="2xx"}'


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return str(response.read().decode())


def sample(text: str, series: str) -> float:
    """The value of one exact series line of a /metrics text (0 when absent)."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def recommend_count(db: Path) -> float:
    """Successful ``GET /recommend/{user_id}`` counted in one worker's counter file."""
    entries = MmapedDict.read_all_values_from_file(str(db))
    return sum(
        float(entry[1])
        for entry in entries
        if "ld4mrec_http_requests_total" in entry[0]
        and "/recommend/{user_id}" in entry[0]
        and '"2xx"' in entry[0]
    )


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (its children running a spawned ``multiprocessing`` main)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.add(int(child))
    return pids


def wait_until(
    condition: Callable[[], bool], what: str, log: Callable[[], str], timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()[-4000:]}"
        time.sleep(0.1)


def versions(base: str, n: int = 24) -> set[str]:
    """model_version of ``n`` concurrent reads, each on its own connection (so both workers answer)."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: http_json(f"{base}/recommend/0?k=5"), range(n)))
    assert all(status == 200 for status, _ in answers), answers
    return {body["model_version"] for _, body in answers}


@pytest.fixture
def two_workers(tiny_artifact: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    root = tmp_path / "artifacts"
    copy_artifact(tiny_artifact, root / "v1")
    copy_artifact(tiny_artifact, root / "v2", model_version="tiny-v2")
    copy_artifact(tiny_artifact, root / "broken", flip_byte_of="user_states.npy")
    env = {
        "LD4MREC_WORKERS": "2",
        "LD4MREC_REDIS_URL": redis_server.url,
        "LD4MREC_REDIS_PREFIX": f"workers-{uuid.uuid4().hex[:12]}:",
        "LD4MREC_ARTIFACT_ROOT": str(root),
        "LD4MREC_MAX_WAIT_MS": "1",
    }
    service = ServiceProcess(root / "v1", tmp_path / "serve.log", env).start(wait=False)
    try:
        assert service.proc is not None
        wait_http_ready(service.base, lambda: service.proc is not None and service.proc.poll() is None, 120)
        yield service
    finally:
        service.stop()


def test_two_workers_share_port_metrics_reloads_and_shut_down_gracefully(two_workers: ServiceProcess) -> None:
    service, base = two_workers, two_workers.base
    assert service.proc is not None
    supervisor = service.proc.pid
    wait_until(lambda: len(worker_pids(supervisor)) == 2, "two workers", lambda: service.log)
    first_workers = worker_pids(supervisor)
    match = re.search(r"metrics in (\S+)", service.log)
    assert match, service.log[-3000:]
    metrics_dir = Path(match.group(1))
    wait_until(
        lambda: "ready: model" in service.log and service.log.count("ready: model") >= 2,
        "both ready",
        lambda: service.log,
    )

    # both workers answer; /metrics (whichever worker answers it) counts every request of both
    initial = http_json(f"{base}/model")[1]["model_version"]
    before = sample(metrics_text(base), RECOMMEND)
    assert versions(base, 64) == {initial}
    # (a request is counted just after its answer is sent: the last ones may land a moment later)
    wait_until(
        lambda: sample(metrics_text(base), RECOMMEND) >= before + 64, "64 counted", lambda: service.log
    )
    for _ in range(3):
        assert sample(metrics_text(base), RECOMMEND) == before + 64
    per_worker = {pid: recommend_count(metrics_dir / f"counter_{pid}.db") for pid in first_workers}
    assert sum(per_worker.values()) == before + 64 and all(v > 0 for v in per_worker.values()), per_worker
    wait_until(  # summed over the live workers: this scrape only, once the last reads are counted out
        lambda: sample(metrics_text(base), "ld4mrec_http_requests_in_flight") == 1.0,
        "no request in flight but the scrape",
        lambda: service.log,
    )
    assert sample(metrics_text(base), 'ld4mrec_model_reloads_total{result="success"}') == 0.0

    # a click through one worker is seen by both (Redis); one Redis round trip per read at most
    status, body = http_json(f"{base}/users/w-new/interactions", "POST", {"item_ids": ["0", "1"]})
    assert status == 200, body
    with ThreadPoolExecutor(8) as pool:
        reads = list(pool.map(lambda _: http_json(f"{base}/recommend/w-new?k=5"), range(16)))
    assert all(s == 200 and b["history_source"] == "redis" for s, b in reads), reads

    # POST /admin/reload on one worker: the other follows; both count a success
    status, body = http_json(f"{base}/admin/reload", "POST", {"artifact": "v2"})
    assert status == 200 and body["model_version"] == "tiny-v2", body
    wait_until(lambda: versions(base) == {"tiny-v2"}, "every worker on tiny-v2", lambda: service.log)
    wait_until(
        lambda: sample(metrics_text(base), 'ld4mrec_model_reloads_total{result="success"}') == 2.0,
        "two successful reloads",
        lambda: service.log,
    )
    text = metrics_text(base)
    assert re.search(r'^ld4mrec_model_info\{dataset="[^"]*",model_version="tiny-v2"\} 1\.0$', text, re.M), (
        text
    )

    # a refused artifact: 422 naming the file, every worker keeps tiny-v2, nothing announced
    status, body = http_json(f"{base}/admin/reload", "POST", {"artifact": "broken"})
    assert status == 422 and "user_states.npy" in str(body), body
    time.sleep(0.5)
    assert versions(base) == {"tiny-v2"}
    assert sample(metrics_text(base), 'ld4mrec_model_reloads_total{result="failure"}') == 1.0

    # a crashed worker is replaced, on the model the service serves now (tiny-v2, not the configured v1)
    victim = min(first_workers)
    subprocess.run(["kill", "-9", str(victim)], check=True)
    wait_until(
        lambda: len(worker_pids(supervisor)) == 2 and victim not in worker_pids(supervisor),
        "a replacement worker",
        lambda: service.log,
    )
    wait_until(
        lambda: service.log.count("ready: model tiny-v2") >= 1, "the replacement ready", lambda: service.log
    )
    assert versions(base, 48) == {"tiny-v2"}
    assert "exited unexpectedly" in service.log

    # SIGHUP to the supervisor: every worker reloads the configured artifact (v1)
    configured = http_json(f"{base}/model")[1]["model_version"]
    assert configured == "tiny-v2"
    service.signal(signal.SIGHUP)
    wait_until(lambda: "tiny-v2" not in versions(base), "every worker back on v1", lambda: service.log)

    # SIGTERM: every worker drains and stops, the supervisor exits 0 and removes the metrics directory
    workers = worker_pids(supervisor)
    service.signal(signal.SIGTERM)
    assert service.wait(60) == 0, service.log[-4000:]
    log = service.log
    assert log.count("shutdown complete: ") == 2, log[-4000:]
    assert not metrics_dir.exists()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_the_memory_store_serves_one_worker(tiny_artifact: Path, tmp_path: Path) -> None:
    """Without Redis an explicit worker count above 1 is refused (exit 2, saying why); auto means 1."""
    env_free = {"LD4MREC_WORKERS": "2"}
    service = ServiceProcess(tiny_artifact, tmp_path / "refused.log", env_free)
    done = subprocess.run(service.args, env=service.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "in-process store" in done.stderr and "LD4MREC_REDIS_URL" in done.stderr, done.stderr
    assert Settings(artifact=tiny_artifact, workers=0).worker_count == 1
    assert Settings(artifact=tiny_artifact, workers=0, redis_url="redis://x:1/0").worker_count >= 1
    with pytest.raises(ValueError, match="shared history store"):
        Settings(artifact=tiny_artifact, workers=3)


def test_the_cli_has_a_workers_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--workers" in done.stdout


def test_a_refused_artifact_stops_every_worker_with_exit_code_1(
    tiny_artifact: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    broken = copy_artifact(tiny_artifact, tmp_path / "broken", flip_byte_of="user_states.npy")
    env = {"LD4MREC_WORKERS": "2", "LD4MREC_REDIS_URL": redis_server.url}
    service = ServiceProcess(broken, tmp_path / "refused.log", env)
    done = subprocess.run(service.args, env=service.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "artifact refused" in done.stderr and "user_states.npy" in done.stderr
    assert "refused to start: stopping the service" in done.stderr
