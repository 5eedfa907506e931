"""docker-compose.replicas.yml (N API replicas behind nginx, one Redis) validated by Debian's docker-compose
without a Docker engine; the replica service stays the single `api` of docker-compose.yml without its port,
and Prometheus scrapes every replica (promtool checks the config)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .stack_files import COMPOSE_FILE, PROMETHEUS_DIR, REPO, load_yaml, require_binary
from .test_compose import compose, mounts, published_ports, resolved

REPLICAS_FILE = REPO / "docker-compose.replicas.yml"
NGINX_CONF = REPO / "docker" / "nginx" / "replicas.conf"
FILES = (COMPOSE_FILE, REPLICAS_FILE)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return resolved(FILES)["services"]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return resolved()["services"]


def test_replicas_override_is_valid() -> None:
    result = compose("config", "-q", files=FILES)
    assert result.returncode == 0, result.stderr


def test_the_single_api_is_replaced_by_replicas(services: dict[str, Any]) -> None:
    assert services["api"]["profiles"] == ["single-api"], "the published single api is off by default"
    replica = services["api-replica"]
    assert replica["deploy"]["replicas"] == 2
    assert published_ports(replica) == [], "replicas publish nothing: the balancer does"
    assert replica["expose"] == ["8000"]


def test_replica_count_comes_from_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "replicas.env"
    env_file.write_text((REPO / ".env.example").read_text() + "\nAPI_REPLICAS=5\n")
    result = compose("config", env_file=env_file, files=FILES)
    assert result.returncode == 0, result.stderr
    assert re.search(r"deploy:\s+replicas: 5\b", result.stdout)


@pytest.mark.parametrize(
    "key", ["build", "image", "command", "environment", "volumes", "depends_on", "healthcheck", "restart"]
)
def test_a_replica_is_the_single_api(services: dict[str, Any], single: dict[str, Any], key: str) -> None:
    assert services["api-replica"][key] == single["api"][key]
    assert services["api-replica"]["stop_grace_period"] == single["api"]["stop_grace_period"]


def test_the_balancer_publishes_the_api_port_and_proxies_to_every_replica(services: dict[str, Any]) -> None:
    lb = services["lb"]
    assert published_ports(lb) == [("", 8000, 8000)]
    conf = mounts(lb)["/etc/nginx/conf.d/default.conf"]
    assert Path(conf["source"]) == NGINX_CONF and conf["read_only"]
    assert lb["depends_on"] == {"api-replica": {"condition": "service_healthy"}}
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*listen 8000;", text, re.MULTILINE)
    # the upstream is the replica service by name, re-resolved through Docker's DNS (all replicas)
    upstream = re.search(r"set \$api_replicas http://([\w-]+):(\d+);", text)
    assert upstream is not None and upstream.groups() == ("api-replica", services["api-replica"]["expose"][0])
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", text, re.MULTILINE)
    assert "proxy_pass $api_replicas;" in text
    # a reload through the balancer would reach one replica: refused, with the way to reload them all
    admin = re.search(r"location /admin/ \{(.*?)\}", text, re.DOTALL)
    assert admin is not None and "return 409" in admin.group(1) and "SIGHUP api-replica" in admin.group(1)


def test_prometheus_scrapes_every_replica(services: dict[str, Any], single: dict[str, Any]) -> None:
    command = services["prometheus"]["command"]
    (config_flag,) = [arg for arg in command if arg.startswith("--config.file=")]
    config_path = Path(config_flag.split("=", 1)[1])
    assert [a for a in command if a != config_flag] == [
        a for a in single["prometheus"]["command"] if not a.startswith("--config.file=")
    ]
    source = Path(mounts(services["prometheus"])[str(config_path.parent)]["source"])
    assert source == PROMETHEUS_DIR
    config = load_yaml(source / config_path.name)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ld4mrec-api"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["api-replica"] and discovery["type"] == "A"
    assert str(discovery["port"]) == services["api-replica"]["expose"][0]
    assert config["rule_files"] == load_yaml(PROMETHEUS_DIR / "prometheus.yml")["rule_files"]
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(source / config_path.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
