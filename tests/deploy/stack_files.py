"""The deployment files under test and helpers to read them (paths, PromQL expressions, metric names)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU_FILE = REPO / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE_CPU = REPO / "docker" / "Dockerfile"
DOCKERFILE_GPU = REPO / "docker" / "Dockerfile.gpu"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "docker" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_RULES_TESTS = Path(__file__).resolve().parent / "alerts_test.yml"
GRAFANA_DIR = REPO / "docker" / "grafana"
GRAFANA_DATASOURCE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = GRAFANA_DIR / "provisioning" / "dashboards" / "ld4mrec.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "ld4mrec-latency.json"

# Grafana's built-in interval variables, replaced by a concrete window to run a query outside Grafana.
GRAFANA_INTERVAL_VARIABLES = ("$__rate_interval", "$__interval", "$__range")

# The metric-name contract shared by the service, the dashboard and the alerts (README, "Metrics"):
# series names as Prometheus stores them.
CONTRACT_METRICS = frozenset(
    {
        "ld4mrec_http_requests_total",
        *(f"ld4mrec_http_request_duration_seconds{s}" for s in ("_bucket", "_sum", "_count")),
        "ld4mrec_http_requests_in_flight",
        *(f"ld4mrec_batch_size{s}" for s in ("_bucket", "_sum", "_count")),
        *(f"ld4mrec_batch_queue_wait_seconds{s}" for s in ("_bucket", "_sum", "_count")),
        *(f"ld4mrec_model_forward_seconds{s}" for s in ("_bucket", "_sum", "_count")),
        "ld4mrec_redis_errors_total",
        "ld4mrec_history_fallback_reads_total",
        "ld4mrec_foldin_cache_hits_total",
        "ld4mrec_foldin_cache_misses_total",
        "ld4mrec_model_info",
        "ld4mrec_model_reloads_total",
    }
)

METRIC_NAME = re.compile(r"\bld4mrec[_:][a-zA-Z0-9_:]*")


def require_binary(name: str) -> str:
    """Path of a system tool the suite needs (scripts/ci-system-deps.sh installs it)."""
    path = shutil.which(name)
    assert path is not None, f"{name} not found on PATH: run scripts/ci-system-deps.sh (as root)"
    return path


@dataclass(frozen=True)
class DashboardQuery:
    """One target of one panel of the provisioned dashboard."""

    panel_title: str
    ref_id: str
    expr: str

    def concrete(self, window: str) -> str:
        """The expression with Grafana's interval variables replaced by ``window`` (e.g. ``"1m"``)."""
        expr = self.expr
        for variable in GRAFANA_INTERVAL_VARIABLES:
            expr = expr.replace(variable, window)
        return expr


@dataclass(frozen=True)
class RuleExpression:
    """One recording or alerting rule of alerts.yml."""

    name: str
    kind: str  # "record" or "alert"
    expr: str


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows excluded; panels nested in collapsed rows included)."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[DashboardQuery]:
    dashboard = dashboard if dashboard is not None else load_dashboard()
    return [
        DashboardQuery(panel["title"], target["refId"], target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def rule_expressions() -> list[RuleExpression]:
    rules: list[RuleExpression] = []
    for group in load_yaml(ALERT_RULES)["groups"]:
        for rule in group["rules"]:
            kind = "record" if "record" in rule else "alert"
            rules.append(RuleExpression(rule[kind], kind, rule["expr"]))
    return rules


def metric_names(expr: str) -> set[str]:
    """The project's metric names in an expression (``ld4mrec_*`` metrics, ``ld4mrec:*`` recordings)."""
    return set(METRIC_NAME.findall(expr))


def exported_metric_names() -> set[str]:
    """Every series name the service's metrics registry can export (``_total``, ``_bucket``, ... included)."""
    from service.metrics import ServiceMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in ServiceMetrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
