"""The provisioned Grafana dashboard: structure, the panels the issue asks for, and valid PromQL."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stack_files import (
    CONTRACT_METRICS,
    GRAFANA_DATASOURCE,
    GRAFANA_INTERVAL_VARIABLES,
    dashboard_panels,
    dashboard_queries,
    exported_metric_names,
    load_dashboard,
    load_yaml,
    metric_names,
    require_binary,
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "ld4mrec-latency"
    assert dashboard["title"]
    assert dashboard["refresh"]


def test_every_panel_has_queries_on_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    (datasource,) = load_yaml(GRAFANA_DATASOURCE)["datasources"]
    panels = dashboard_panels(dashboard)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"]), (
        "duplicate panel ids"
    )
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r}: empty query"
            assert target["datasource"]["uid"] == datasource["uid"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), f"panel {panel['title']!r}: duplicate refIds"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    exprs = [q.expr for q in dashboard_queries(dashboard)]

    def shown(*fragments: str) -> bool:
        return any(all(fragment in expr for fragment in fragments) for expr in exprs)

    assert shown("sum by (route, status_class)", "rate(ld4mrec_http_requests_total")
    for quantile in ("0.5", "0.95", "0.99"):
        assert shown(f"histogram_quantile({quantile},", "ld4mrec_http_request_duration_seconds_bucket")
    assert shown('status_class="5xx"', "/ sum(rate(ld4mrec_http_requests_total")
    assert shown("ld4mrec_http_requests_in_flight")
    assert shown("ld4mrec_batch_size_bucket")
    assert shown("ld4mrec_batch_queue_wait_seconds_bucket")
    assert shown("histogram_quantile(", "ld4mrec_model_forward_seconds_bucket")
    assert shown("ld4mrec_redis_errors_total")
    assert shown("ld4mrec_history_fallback_reads_total")
    assert shown("ld4mrec_foldin_cache_hits_total", "ld4mrec_foldin_cache_misses_total")
    assert shown("ld4mrec_model_info")
    heatmaps = [panel for panel in dashboard_panels(dashboard) if panel["type"] == "heatmap"]
    assert {t["format"] for panel in heatmaps for t in panel["targets"]} == {"heatmap"}
    assert len(heatmaps) == 2, "batch size and queue wait distributions"


def test_dashboard_uses_only_contract_metrics_the_service_exports(dashboard: dict[str, Any]) -> None:
    exported = exported_metric_names()
    assert exported >= CONTRACT_METRICS, f"service does not export {sorted(CONTRACT_METRICS - exported)}"
    for query in dashboard_queries(dashboard):
        for name in metric_names(query.expr):
            assert name in CONTRACT_METRICS, (
                f"panel {query.panel_title!r}: {name} is not in the metric contract"
            )


def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Every query, Grafana's interval variables made concrete, parses (as a recording rule, by promtool)."""
    queries = dashboard_queries(dashboard)
    for query in queries:
        concrete = query.concrete("1m")
        assert "$" not in concrete, f"panel {query.panel_title!r}: unsubstituted variable in {query.expr}"
    assert any(v in q.expr for q in queries for v in GRAFANA_INTERVAL_VARIABLES)
    rules = [
        {"record": f"dashboard:query_{n}", "expr": query.concrete("1m")} for n, query in enumerate(queries)
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
