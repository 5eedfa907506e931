"""Concurrent requests are micro-batched: the batch-size histogram sees passes of more than one user."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.service.helpers import Offline, assert_same_ranking, running_client


def histogram(text: str, name: str) -> dict[str, float]:
    """``{"count": ..., "sum": ..., "le=1.0": ...}`` of an unlabelled histogram in /metrics text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out[f"le={sample.labels['le']}"] = sample.value
            elif sample.name.endswith(("_count", "_sum")):
                out[sample.name.rsplit("_", 1)[1]] = sample.value
    return out


def test_concurrent_requests_are_batched(make_settings: Callable[..., Settings], offline: Offline) -> None:
    users = list(offline.art.user_ids[40:72])
    expected = offline.for_users(users, 10)
    with running_client(make_settings(max_wait_ms=50.0, max_batch=64)) as client:
        before = histogram(client.get("/metrics").text, "ld4mrec_batch_size")
        get = client.get
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda u: get(f"/recommend/{u}?k=10").json(), users))
        for body, reference in zip(answers, expected, strict=True):
            assert_same_ranking(body["items"], reference)
        after = histogram(client.get("/metrics").text, "ld4mrec_batch_size")
        passes = after["count"] - before["count"]
        scored = after["sum"] - before["sum"]
        single = after["le=1.0"] - before["le=1.0"]
        assert scored == len(users)  # every request went through the batcher exactly once
        assert single < passes < len(users)  # some pass held more than one user
        wait = histogram(client.get("/metrics").text, "ld4mrec_batch_queue_wait_seconds")
        assert wait["count"] >= len(users)
