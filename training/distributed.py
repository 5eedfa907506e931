"""The trainer's side of a ``torchrun`` launch: read the launcher's environment, start and end the
process group, and let rank 0's decisions (early stopping) reach every rank.

``torchrun --nproc_per_node=W -m training ...`` starts W copies of the trainer with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Without them (``python -m
training``) or with ``WORLD_SIZE=1`` the run is the single-process one, and nothing here touches
``torch.distributed``. The backend is gloo on the CPU and NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist

__all__ = ["SINGLE_PROCESS", "Launch", "LaunchError", "agree", "device_for", "from_env", "start", "stop"]

log = logging.getLogger(__name__)

ENV_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
MAX_WORLD_SIZE = 65_536
GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits in a collective (e.g. for rank 0's evaluation) before the run fails."""
_HAS_DEVICE_ID = dist.is_available() and "device_id" in inspect.signature(dist.init_process_group).parameters


class LaunchError(ValueError):
    """The launcher's environment is inconsistent or asks for something this run cannot do."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the run. ``backend`` is None until :func:`start` (and for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: evaluates, logs, shows progress and writes the artifact."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Launch()


def _int_env(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if raw is None:
        raise LaunchError(f"{name} is not set; torchrun sets {', '.join(ENV_VARIABLES)} together")
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"{name} must be an integer, got {raw[:32]!r}") from None


def from_env(env: Mapping[str, str] | None = None) -> Launch:
    """The launch described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``os.environ`` by default).

    No ``WORLD_SIZE``, or ``WORLD_SIZE=1``: :data:`SINGLE_PROCESS`."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE") is None:
        return SINGLE_PROCESS
    world_size = _int_env(env, "WORLD_SIZE")
    if not 1 <= world_size <= MAX_WORLD_SIZE:
        raise LaunchError(f"WORLD_SIZE must be in 1..{MAX_WORLD_SIZE}, got {world_size}")
    if world_size == 1:
        return SINGLE_PROCESS
    rank, local_rank = _int_env(env, "RANK"), _int_env(env, "LOCAL_RANK")
    if not 0 <= rank < world_size or not 0 <= local_rank < world_size:
        raise LaunchError(f"RANK {rank} / LOCAL_RANK {local_rank} do not fit WORLD_SIZE {world_size}")
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


def device_for(device: str, launch: Launch) -> torch.device:
    """The torch device of this rank: ``cpu``, or ``cuda:LOCAL_RANK`` for a ``cuda`` run under torchrun."""
    requested = torch.device(device)
    if not launch.distributed or requested.type != "cuda":
        return requested
    if requested.index is not None:
        raise LaunchError(
            f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda "
            "(and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    return torch.device("cuda", launch.local_rank)


def start(launch: Launch, device: torch.device) -> Launch:
    """Join the process group (``env://``: MASTER_ADDR / MASTER_PORT from torchrun); gloo on the CPU,
    NCCL on CUDA. Returns ``launch`` with its backend; a single-process launch is returned as is."""
    if not launch.distributed:
        return launch
    if not dist.is_available():
        raise LaunchError("this torch build has no torch.distributed; run in one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # device_id (torch >= 2.3) binds the NCCL communicator to this rank's GPU up front
    bind = {"device_id": device} if device.type == "cuda" and _HAS_DEVICE_ID else {}
    init = cast(Any, dist.init_process_group)
    init(backend=backend, rank=launch.rank, world_size=launch.world_size, timeout=GROUP_TIMEOUT, **bind)
    log.info("rank %d of %d joined the %s process group", launch.rank, launch.world_size, backend)
    return replace(launch, backend=backend)


def agree(value: bool, launch: Launch, device: torch.device) -> bool:
    """Rank 0's ``value`` on every rank (one broadcast); ``value`` itself in a single-process run."""
    if not launch.distributed:
        return value
    flag = torch.tensor([1 if value else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
