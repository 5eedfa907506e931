"""Settings come from LD4MREC_* environment variables; explicit values (the CLI's flags) override them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from service.settings import Settings, resolve_device


def test_defaults_are_the_embedded_demo_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ARTIFACT",
        "REDIS_URL",
        "DEVICE",
        "PRECISION",
        "MAX_BATCH",
        "MAX_WAIT_MS",
        "MAX_K",
        "API_KEY",
        "WORKERS",
    ):
        monkeypatch.delenv(f"LD4MREC_{name}", raising=False)
    settings = Settings()
    assert settings.artifact == Path("artifacts/demo")
    assert settings.redis_url is None  # in-process history store
    assert settings.device == "auto"
    assert settings.precision == "auto"  # bf16 where native and measured to keep the ranking, else fp32
    assert settings.workers == 0 and settings.worker_count == 1  # one per CPU, 1 without Redis
    assert settings.api_key is None
    assert settings.max_batch >= 1 and settings.max_wait_ms >= 0 and settings.max_k >= 20


def test_environment_with_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD4MREC_ARTIFACT", "/srv/model")
    monkeypatch.setenv("LD4MREC_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("LD4MREC_DEVICE", "CPU")
    monkeypatch.setenv("LD4MREC_MAX_BATCH", "16")
    monkeypatch.setenv("LD4MREC_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("LD4MREC_MAX_K", "50")
    monkeypatch.setenv("LD4MREC_API_KEY", "s3cret")
    settings = Settings()
    assert settings.artifact == Path("/srv/model")
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.device == "cpu"
    assert (settings.max_batch, settings.max_wait_ms, settings.max_k) == (16, 0.5, 50)
    assert settings.max_wait_s == pytest.approx(0.0005)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_explicit_values_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD4MREC_ARTIFACT", "/from/env")
    assert Settings(artifact=Path("/from/flag")).artifact == Path("/from/flag")


def test_blank_redis_url_means_in_process_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD4MREC_REDIS_URL", "  ")
    assert Settings().redis_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_BATCH", "0"), ("MAX_K", "0"), ("MAX_WAIT_MS", "-1"), ("DEVICE", "tpu"), ("MAX_BATCH", "many")],
)
def test_invalid_values_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"LD4MREC_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_auto_device_is_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_reload_root_defaults_to_the_directory_holding_the_artifact(tmp_path: Path) -> None:
    assert Settings(artifact=tmp_path / "current").reload_root == tmp_path.resolve()
    assert Settings(artifact=tmp_path / "a", artifact_root=tmp_path / "b").reload_root == (tmp_path / "b")


@pytest.mark.parametrize(
    ("name", "value"), [("MAX_BODY_BYTES", "10"), ("REQUEST_TIMEOUT_S", "0"), ("MAX_QUEUE", "0")]
)
def test_limits_are_validated(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"LD4MREC_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_a_blank_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD4MREC_API_KEY", "  ")
    assert Settings().api_key is None


@pytest.mark.parametrize("value", ["int4", "fp16", "bfloat16", ""])
def test_an_unknown_precision_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LD4MREC_PRECISION", value)
    with pytest.raises(ValidationError, match="precision"):
        Settings(device="cpu")


def test_the_precision_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD4MREC_PRECISION", " INT8 ")
    assert Settings(device="cpu").precision == "int8"


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_int8_on_a_gpu_is_refused_by_the_settings(device: str) -> None:
    with pytest.raises(ValidationError, match="CPU only.*LD4MREC_DEVICE=cpu"):
        Settings(device=device, precision="int8")
    assert Settings(device=device, precision="fp32").precision == "fp32"


def test_int8_with_the_auto_device_is_refused_only_where_cuda_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Settings(device="auto", precision="int8").precision == "int8"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValidationError, match="CPU only"):
        Settings(device="auto", precision="int8")
