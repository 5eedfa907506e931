"""Prometheus metrics of the service, in a dedicated registry per app (names are a shared contract).

All durations are in seconds; no label ever carries a user or item id. The names and labels are the
contract shared with the dashboards and alerts (see README, "Metrics").

With several worker processes (:mod:`service.workers`) ``PROMETHEUS_MULTIPROC_DIR`` is set before a worker
starts, and prometheus_client keeps every value in a file there; :meth:`ServiceMetrics.exposition` then
collects all workers' files: counters and histograms are summed over every worker that ever ran in this
service's lifetime, ``ld4mrec_http_requests_in_flight`` over the live workers, ``ld4mrec_model_info`` is
the max over the live workers (a model some live worker serves is 1; mid-reload both versions are).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

__all__ = ["HTTP_BUCKETS", "BATCH_BUCKETS", "ServiceMetrics"]

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServiceMetrics:
    """Every metric the service exports, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        r = self.registry
        http_labels = ("route", "method", "status_class")
        self.http_requests = Counter(
            "ld4mrec_http_requests_total", "HTTP requests answered", http_labels, registry=r
        )
        self.http_duration = Histogram(
            "ld4mrec_http_request_duration_seconds",
            "HTTP request duration in seconds",
            http_labels,
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "ld4mrec_http_requests_in_flight",
            "HTTP requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "ld4mrec_batch_size", "users per batched forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "ld4mrec_batch_queue_wait_seconds",
            "seconds a scoring request waited in the micro-batch queue",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.forward = Histogram(
            "ld4mrec_model_forward_seconds",
            "seconds of one batched scoring pass (fold-in, forward, masking, top-k)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "ld4mrec_redis_errors_total", "failed Redis calls by operation", ("operation",), registry=r
        )
        self.history_corrupt = Counter(
            "ld4mrec_history_corrupt_total",
            "users whose stored history is not valid data (a key of another type, undecodable fields), "
            "answered 409, by operation",
            ("operation",),
            registry=r,
        )
        self.client_disconnects = Counter(
            "ld4mrec_client_disconnects_total",
            "reads cancelled because their client disconnected before the answer (rows not yet in a pass "
            "are never scored)",
            registry=r,
        )
        self.connections_refused = Counter(
            "ld4mrec_connections_refused_total",
            "connections the server closed for a limit: header_size (431), header_timeout and "
            "body_timeout (408), send_timeout (a client that does not read)",
            ("reason",),
            registry=r,
        )
        for reason in ("header_size", "header_timeout", "body_timeout", "send_timeout"):
            self.connections_refused.labels(reason=reason)
        self.fallback_reads = Counter(
            "ld4mrec_history_fallback_reads_total",
            "history reads served from the artifact because the history store failed",
            registry=r,
        )
        self.foldin_hits = Counter("ld4mrec_foldin_cache_hits_total", "fold-in cache hits", registry=r)
        self.foldin_misses = Counter("ld4mrec_foldin_cache_misses_total", "fold-in cache misses", registry=r)
        self.model_info = Gauge(
            "ld4mrec_model_info",
            "the loaded model (value 1)",
            ("model_version", "dataset"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self._model_labels: tuple[str, str] | None = None
        self.model_reloads = Counter(
            "ld4mrec_model_reloads_total", "model reloads by result", ("result",), registry=r
        )
        for result in ("success", "failure"):  # both series exist (at 0) before the first reload
            self.model_reloads.labels(result=result)

    def set_model(self, model_version: str, dataset: str) -> None:
        """Make ``(model_version, dataset)`` the only series of ``ld4mrec_model_info`` (set to 1; in
        multi-process mode the replaced series stays in this worker's file, at 0)."""
        if self._model_labels is not None and self._model_labels != (model_version, dataset):
            self.model_info.labels(*self._model_labels).set(0)
        if self.multiprocess_dir is None:  # (prometheus_client cannot clear in multi-process mode)
            self.model_info.clear()
        self.model_info.labels(model_version=model_version, dataset=dataset).set(1)
        self._model_labels = (model_version, dataset)

    def exposition(self) -> CollectorRegistry:
        """The registry ``GET /metrics`` writes out: this one, or with several workers one that collects
        every worker's values from ``PROMETHEUS_MULTIPROC_DIR``."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return registry
