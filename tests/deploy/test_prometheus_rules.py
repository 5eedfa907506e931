"""docker/prometheus: promtool checks of the config and rules, and promtool unit tests of every alert."""

from __future__ import annotations

import subprocess

from .stack_files import (
    ALERT_RULES,
    ALERT_RULES_TESTS,
    CONTRACT_METRICS,
    PROMETHEUS_CONFIG,
    load_yaml,
    metric_names,
    require_binary,
    rule_expressions,
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_should_and_only_then() -> None:
    """alerts_test.yml: synthetic series for slow requests, 5xx, Redis down, reload failure, target down."""
    result = promtool("test", "rules", str(ALERT_RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_loads_the_rules_file() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert [PROMETHEUS_CONFIG.parent / f for f in config["rule_files"]] == [ALERT_RULES]


def test_every_required_alert_exists_and_is_labelled() -> None:
    alerts = {
        rule["alert"]: rule
        for group in load_yaml(ALERT_RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    required = {
        "LD4MRecLatencyP99AboveSLO",
        "LD4MRecHigh5xxRatio",
        "LD4MRecRedisErrors",
        "LD4MRecHistoryFallbackReads",
        "LD4MRecTargetDown",
    }
    assert required <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_rules_use_only_contract_metrics_and_defined_recordings() -> None:
    recorded = {rule.name for rule in rule_expressions() if rule.kind == "record"}
    for rule in rule_expressions():
        for name in metric_names(rule.expr):
            assert name in CONTRACT_METRICS or name in recorded, f"{rule.name}: unknown metric {name}"
