"""docker-compose.yml (and the GPU override) validated by Debian's docker-compose, without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stack_files import (
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    DOCKERFILE_CPU,
    DOCKERFILE_GPU,
    ENV_EXAMPLE,
    GRAFANA_DASHBOARD_PROVIDER,
    GRAFANA_DATASOURCE,
    PROMETHEUS_CONFIG,
    REPO,
    load_yaml,
    require_binary,
)

# Variables a developer's shell may set; removed so the tests see only the env file they pass.
STACK_VARIABLES = (
    "GRAFANA_ADMIN_PASSWORD",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_BIND",
    "DATASET",
    "DATASET_DIR",
    "RETRAIN",
    "TRAIN_ARGS",
    "API_PORT",
    "GRAFANA_PORT",
    "PROMETHEUS_PORT",
    "LD4MREC_API_KEY",
    "LD4MREC_PROTECT_READS",
    "LD4MREC_IMAGE_TAG",
    "COMPOSE_FILE",
    "COMPOSE_PROFILES",
)


def compose(
    *args: str, env_file: Path = ENV_EXAMPLE, files: tuple[Path, ...] = (COMPOSE_FILE,)
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
    command = [
        require_binary("docker-compose"),
        "--project-directory",
        str(REPO),
        "--env-file",
        str(env_file),
    ]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def resolved(files: tuple[Path, ...] = (COMPOSE_FILE,)) -> dict[str, Any]:
    result = compose("config", files=files)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return resolved()["services"]


@pytest.fixture(scope="module")
def gpu_services() -> dict[str, Any]:
    return resolved((COMPOSE_FILE, COMPOSE_GPU_FILE))["services"]


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Volume mounts by target path (docker-compose config writes them as 'source:target[:mode]')."""
    result: dict[str, dict[str, Any]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            result[target] = {"source": source, "read_only": mode == ["ro"]}
        else:
            result[volume["target"]] = {
                "source": volume["source"],
                "read_only": volume.get("read_only", False),
            }
    return result


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip or '', published port, container port) per published port, in either syntax."""
    result: list[tuple[str, int, int]] = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            *host_ip, published, target = port.split("/")[0].split(":")
            result.append((host_ip[0] if host_ip else "", int(published), int(target)))
        else:
            result.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
    return result


def test_compose_config_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_config_with_gpu_override_is_valid() -> None:
    result = compose("config", "-q", files=(COMPOSE_FILE, COMPOSE_GPU_FILE))
    assert result.returncode == 0, result.stderr


def fresh_clone(tmp_path: Path) -> Path:
    """The deployment files as a fresh clone has them: compose files, docker/, .env.example, no .env."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for file in (COMPOSE_FILE, COMPOSE_GPU_FILE, ENV_EXAMPLE):
        shutil.copy(file, clone / file.name)
    shutil.copytree(REPO / "docker", clone / "docker")
    return clone


def compose_without_env(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose ARGS`` run in ``clone`` as a user would: no --env-file, no stack variables set."""
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
    return subprocess.run(
        [require_binary("docker-compose"), *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_fresh_clone_needs_no_env_file(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    assert not (clone / ".env").exists()
    for files in ((), ("-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml")):
        result = compose_without_env(clone, *files, "config", "-q")
        assert result.returncode == 0, result.stderr
    result = compose_without_env(clone, "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    # safe defaults: Grafana's default password only on loopback, like Prometheus
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    assert published_ports(grafana) == [("127.0.0.1", 3000, 3000)]
    assert published_ports(services["prometheus"]) == [("127.0.0.1", 9090, 9090)]
    assert services["trainer"]["environment"]["DATASET"] == "demo"


def run_grafana_entrypoint(services: dict[str, Any], tmp_path: Path, password: str) -> str:
    """Grafana's resolved entrypoint run by /bin/sh with ``/run.sh`` replaced by a no-op; returns stderr."""
    entrypoint = services["grafana"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"] and "exec /run.sh" in entrypoint[2]
    script = entrypoint[2].replace("$$", "$").replace("exec /run.sh", "exec true")
    env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
    env |= {"GRAFANA_BIND": services["grafana"]["environment"]["GRAFANA_BIND"]}
    result = subprocess.run(
        ["/bin/sh", "-c", script, *entrypoint[3:]], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_grafana_warns_while_its_password_is_the_default(tmp_path: Path) -> None:
    result = compose_without_env(fresh_clone(tmp_path), "config")
    services = yaml.safe_load(result.stdout)["services"]
    warning = run_grafana_entrypoint(services, tmp_path, "admin")
    assert "WARNING: Grafana's admin password is the default 'admin'" in warning
    assert "published on 127.0.0.1" in warning and "GRAFANA_ADMIN_PASSWORD" in warning
    assert run_grafana_entrypoint(services, tmp_path, "s3cret-Passw0rd") == ""


def test_stack_has_the_five_services(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "trainer", "api", "prometheus", "grafana"}


def test_redis_is_internal_persistent_and_healthchecked(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert published_ports(redis) == [], "redis must stay on the compose network"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    assert mounts(redis)[data_dir]["source"] == "redis-data"


def test_trainer_is_one_shot_and_writes_the_shared_artifact(services: dict[str, Any]) -> None:
    trainer = services["trainer"]
    script = " ".join(trainer["command"])
    assert "ld4mrec-train" in script and "--out /artifacts/current" in script
    assert trainer["environment"]["DATASET"] == "demo"
    assert trainer["restart"] == "no"
    volumes = mounts(trainer)
    assert volumes["/artifacts"] == {"source": "artifacts", "read_only": False}
    assert volumes["/data"]["read_only"]
    assert Path(volumes["/data"]["source"]) == REPO / "docker" / "data"


def test_api_waits_for_redis_and_trainer_and_is_supervised(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }
    assert api["restart"] in {"unless-stopped", "always", "on-failure"}
    assert any("/readyz" in part for part in api["healthcheck"]["test"])
    assert api["environment"]["LD4MREC_REDIS_URL"] == "redis://redis:6379/0"
    assert api["command"][0] == "ld4mrec-serve"
    artifact = api["command"][api["command"].index("--artifact") + 1]
    assert artifact.startswith("/artifacts/")
    assert mounts(api)["/artifacts"] == {"source": "artifacts", "read_only": True}
    assert published_ports(api) == [("", 8000, 8000)]


def test_images_build_from_the_repo_dockerfiles(
    services: dict[str, Any], gpu_services: dict[str, Any]
) -> None:
    for name in ("trainer", "api"):
        assert REPO / services[name]["build"]["dockerfile"] == DOCKERFILE_CPU
        assert REPO / gpu_services[name]["build"]["dockerfile"] == DOCKERFILE_GPU


def test_gpu_override_reserves_an_nvidia_gpu(gpu_services: dict[str, Any]) -> None:
    for name in ("trainer", "api"):
        service = gpu_services[name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["environment"]["LD4MREC_DEVICE"] == "cuda"
    assert "deploy" not in gpu_services["redis"]


def test_prometheus_loads_the_repo_config(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    mount = mounts(prometheus)[str(config_path.parent)]
    assert Path(mount["source"]) / config_path.name == PROMETHEUS_CONFIG
    assert mount["read_only"]
    assert published_ports(prometheus) == [("127.0.0.1", 9090, 9090)], "no auth in Prometheus: loopback only"


def test_prometheus_scrapes_the_api_service(services: dict[str, Any]) -> None:
    targets = [
        target
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        if job["job_name"] == "ld4mrec-api"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    ((_, _, api_port),) = published_ports(services["api"])
    assert targets == [f"api:{api_port}"]


def test_grafana_is_provisioned_from_repo_files_with_a_password(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "change-me"  # from .env.example
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    volumes = mounts(grafana)
    assert Path(volumes["/etc/grafana/provisioning"]["source"]) == GRAFANA_DATASOURCE.parents[1]
    # The dashboard provider reads the directory the dashboards are mounted at.
    provider_path = load_yaml(GRAFANA_DASHBOARD_PROVIDER)["providers"][0]["options"]["path"]
    assert Path(volumes[provider_path]["source"]) == REPO / "docker" / "grafana" / "dashboards"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (Path(volumes[provider_path]["source"]) / Path(home).relative_to(provider_path)).is_file()
    # The datasource points at the prometheus service's port.
    (datasource,) = load_yaml(GRAFANA_DATASOURCE)["datasources"]
    ((_, _, prometheus_port),) = published_ports(services["prometheus"])
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"


def run_trainer_command(services: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> str:
    """The trainer's resolved shell command run by /bin/sh, with /artifacts moved to ``tmp_path`` and an
    ``ld4mrec-train`` on PATH that records its arguments (so the test checks the command, not training)."""
    command = services["trainer"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$").replace("/artifacts/", f"{tmp_path}/artifacts/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "ld4mrec-train"
    recorder.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/train-args\n')
    recorder.chmod(0o755)
    (tmp_path / "train-args").unlink(missing_ok=True)
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    args = tmp_path / "train-args"
    return args.read_text().strip() if args.exists() else ""


def test_trainer_trains_once_then_skips_unless_retrain(services: dict[str, Any], tmp_path: Path) -> None:
    out = f"{tmp_path}/artifacts/current"
    defaults = {"DATASET": "demo", "RETRAIN": "0", "LD4MREC_DEVICE": "cpu"}
    assert run_trainer_command(services, tmp_path, defaults) == f"--data demo --out {out} --device cpu"
    Path(out).mkdir(parents=True)
    (Path(out) / "manifest.json").write_text("{}")
    assert run_trainer_command(services, tmp_path, defaults) == "", "an existing artifact is kept"
    retrain = {
        "DATASET": "/data/mydata",
        "RETRAIN": "1",
        "LD4MREC_DEVICE": "cuda",
        "TRAIN_ARGS": "--epochs 30 --lr 0.01",
    }
    assert (
        run_trainer_command(services, tmp_path, retrain)
        == f"--data /data/mydata --out {out} --device cuda --epochs 30 --lr 0.01"
    )
