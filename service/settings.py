"""Service settings, read from the environment with the prefix ``LD4MREC_`` (pydantic-settings).

Every field can be set as ``LD4MREC_<NAME>`` (e.g. ``LD4MREC_ARTIFACT=artifacts/demo``,
``LD4MREC_REDIS_URL=redis://127.0.0.1:6379/0``) or passed to :class:`Settings` directly (what the CLI
does with its flags, which therefore override the environment). Durations are in seconds unless the
name says ``_ms``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PrecisionChoice", "Settings", "resolve_device", "usable_cpus"]

PrecisionChoice = Literal["auto", "fp32", "bf16", "int8"]


class Settings(BaseSettings):
    """Configuration of one service process."""

    model_config = SettingsConfigDict(env_prefix="LD4MREC_", extra="ignore", frozen=True)

    # -- model ----------------------------------------------------------------------------------------------
    artifact: Annotated[Path, Field(description="artifact directory written by ld4mrec-train")] = Path(
        "artifacts/demo"
    )
    device: Annotated[
        str, Field(description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    ] = "auto"
    torch_threads: Annotated[
        int, Field(ge=0, le=256, description="intra-op threads of the forward pass; 0 = torch's default")
    ] = 0
    precision: Annotated[
        PrecisionChoice,
        Field(
            description="scoring precision: 'auto' (bf16 where the device computes bf16 natively and the "
            "top-20 overlap with fp32, measured at load on a sample of training users, is >= 0.95; else "
            "fp32), 'fp32' (as trained), 'bf16', or 'int8' (dynamic int8 quantisation of every "
            "nn.Linear; CPU only)"
        ),
    ] = "auto"

    # -- processes ------------------------------------------------------------------------------------------
    workers: Annotated[
        int,
        Field(
            ge=0,
            le=256,
            description="worker processes sharing the port (each with its own micro-batcher); 0 = one per "
            "usable CPU (os.sched_getaffinity); the in-process history store allows 1 only",
        ),
    ] = 0

    # -- micro-batching -------------------------------------------------------------------------------------
    max_batch: Annotated[int, Field(ge=1, le=4096, description="users per forward pass, at most")] = 64
    max_wait_ms: Annotated[
        float,
        Field(
            ge=0.0,
            le=1000.0,
            description="at low load, how long a request that finds the forward thread idle waits for "
            "company, at most (ms)",
        ),
    ] = 2.0

    # -- request limits -------------------------------------------------------------------------------------
    max_k: Annotated[int, Field(ge=1, le=10_000, description="largest k a request may ask for")] = 100
    max_ids: Annotated[
        int,
        Field(
            ge=1, le=100_000, description="most ids in one list (item_ids of a write, exclude, candidates)"
        ),
    ] = 1000
    max_batch_users: Annotated[int, Field(ge=1, le=10_000, description="most users in one batch call")] = 256
    max_history: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="most items in a history: a stored one keeps the newest, a longer POST /recommend "
            "history is 422",
        ),
    ] = 2000
    max_body_bytes: Annotated[
        int, Field(ge=1024, le=1 << 30, description="largest request body (bytes); larger ones are 413")
    ] = 1 << 20
    request_timeout_s: Annotated[
        float,
        Field(gt=0.0, le=600.0, description="a request not answered by then gets 503 (admin routes exempt)"),
    ] = 10.0
    max_queue: Annotated[
        int,
        Field(ge=1, le=1_000_000, description="scoring requests waiting for a pass, at most; more are 503"),
    ] = 4096

    # -- HTTP connection limits (enforced by the server's protocol, see service/http_server.py) ------------
    max_header_bytes: Annotated[
        int,
        Field(
            ge=1024,
            le=1 << 20,
            description="largest request line + headers (bytes); larger ones are 431 and the connection "
            "is closed",
        ),
    ] = 16384
    header_timeout_s: Annotated[
        float,
        Field(
            gt=0.0,
            le=600.0,
            description="a request's line and headers must arrive within this time of its first byte (or "
            "of the connection's opening); else 408 and the connection is closed",
        ),
    ] = 10.0
    body_timeout_s: Annotated[
        float,
        Field(
            gt=0.0,
            le=3600.0,
            description="a request body must arrive within this time of the headers; else 408 and the "
            "connection is closed",
        ),
    ] = 30.0
    send_timeout_s: Annotated[
        float,
        Field(
            gt=0.0,
            le=3600.0,
            description="how long an answer may wait for a client that does not read it (its socket "
            "buffer full) before the connection is dropped",
        ),
    ] = 30.0

    # -- history store --------------------------------------------------------------------------------------
    redis_url: Annotated[str | None, Field(description="Redis URL; unset = in-process history store")] = None
    memory_max_users: Annotated[
        int,
        Field(
            ge=1,
            le=100_000_000,
            description="users kept by the in-process history store (least recently used dropped)",
        ),
    ] = 100_000
    redis_prefix: Annotated[str, Field(description="namespace of every Redis key the service writes")] = (
        "ld4mrec:"
    )
    redis_timeout_s: Annotated[float, Field(gt=0.0, le=30.0, description="socket timeout")] = 0.25
    redis_connect_timeout_s: Annotated[float, Field(gt=0.0, le=30.0, description="connect timeout")] = 0.25
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000, description="connection pool size")] = 64
    redis_retries: Annotated[
        int,
        Field(
            ge=0, le=10, description="immediate retries of a failed call (lets a stale connection reconnect)"
        ),
    ] = 1
    redis_backoff_s: Annotated[
        float, Field(ge=0.0, le=60.0, description="after a Redis failure, skip Redis for this long")
    ] = 0.5
    retry_after_s: Annotated[int, Field(ge=1, le=3600, description="Retry-After (seconds) of a 503")] = 1

    # -- auth -----------------------------------------------------------------------------------------------
    api_key: Annotated[
        SecretStr | None,
        Field(description="when set, writes and /admin/* need it (Authorization: Bearer or X-API-Key)"),
    ] = None
    protect_reads: Annotated[
        bool, Field(description="with API_KEY set, the read endpoints (recommend, /model) need it too")
    ] = False

    # -- reload and shutdown --------------------------------------------------------------------------------
    artifact_root: Annotated[
        Path | None,
        Field(
            description="POST /admin/reload may only read directories under this one (default: the "
            "directory that holds ARTIFACT)"
        ),
    ] = None
    shutdown_timeout_s: Annotated[
        float,
        Field(gt=0.0, le=3600.0, description="on SIGTERM, wait this long for in-flight requests, at most"),
    ] = 30.0

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto":
            try:
                torch.device(value)
            except RuntimeError as exc:
                raise ValueError(f"not a torch device: {value!r} ({exc})") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("precision", mode="before")
    @classmethod
    def _lower_precision(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _int8_runs_on_the_cpu(self) -> Settings:
        if self.precision == "int8" and resolve_device(self.device).type != "cpu":
            raise ValueError(
                f"precision 'int8' runs on the CPU only (dynamic int8 quantisation has no CUDA kernels), "
                f"but the device is {self.device!r} (-> {resolve_device(self.device)}): set "
                f"LD4MREC_DEVICE=cpu to serve int8, or LD4MREC_PRECISION=fp32 on the GPU"
            )
        return self

    @model_validator(mode="after")
    def _one_worker_with_the_memory_store(self) -> Settings:
        if self.redis_url is None and self.workers > 1:
            raise ValueError(
                f"{self.workers} workers need a shared history store: the in-process store ('memory') "
                f"lives in one process, so each worker would see different histories. Set "
                f"LD4MREC_REDIS_URL, or LD4MREC_WORKERS=1 (0 = auto serves 1 worker without Redis)"
            )
        return self

    @property
    def worker_count(self) -> int:
        """Processes to run: ``workers``, or with 0 one per usable CPU (1 without Redis: the in-process
        history store cannot be shared)."""
        if self.workers:
            return self.workers
        return usable_cpus() if self.redis_url is not None else 1

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def reload_root(self) -> Path:
        """The directory ``POST /admin/reload`` may read artifacts from (resolved)."""
        root = self.artifact_root if self.artifact_root is not None else self.artifact.absolute().parent
        return root.resolve()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
