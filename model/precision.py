"""Serving precisions: ``fp32`` (as trained), ``bf16`` (a bfloat16 copy of a network: weights, buffers and
inputs; scores returned as fp32) or ``int8`` (dynamic int8 weights of a network's Linear layers).

A model says which it supports (``Recommender.precisions``) and converts itself
(``Recommender.with_precision``); this module holds the shared pieces. For LD4MRec, ``int8`` is
``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear``: the CG blocks' hidden, condition and
gate layers, the PG blocks' MLPs and ``FC_out`` (hidden x n_items, the largest read of a pass). Their
weights are stored as int8 (per-tensor scale), activations are quantised per batch on the fly, outputs
are fp32. The first layer ``item_in`` (a Parameter read by the
embedding bag), the biases outside those layers, ``z_in`` and the signal standardisation stay fp32, and so
do the scores. CPU only: the quantised kernels (fbgemm / onednn) have no CUDA implementation.

``torch.ao.quantization`` is deprecated in favour of torchao; torch 2.13 still ships it and its notices are
silenced here. Its replacement (torchao's ``quantize_``) is a separate package.

:func:`ranking_overlap` measures what a reduced precision does to the ranking (mean top-k overlap with fp32
on real users), and :func:`native_bf16` whether a device computes bf16 natively (a CPU without
AVX512-BF16 or AMX converts every bf16 operand and is slower in bf16 than in fp32); the service's
``LD4MREC_PRECISION=auto`` serves bf16 only where both hold (overlap >= :data:`AUTO_MIN_OVERLAP`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Literal, TypeVar, get_args

import torch
from torch import nn

__all__ = [
    "AUTO_MIN_OVERLAP",
    "PRECISIONS",
    "Precision",
    "model_device",
    "native_bf16",
    "quantise_int8",
    "quantised_layers",
    "ranking_overlap",
]

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
AUTO_MIN_OVERLAP = 0.95  # the mean top-20 overlap with fp32 that LD4MREC_PRECISION=auto requires of bf16

M = TypeVar("M", bound=nn.Module)


def quantise_int8(model: M, inplace: bool = False, share: Iterable[object] = ()) -> M:
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (see the module docstring), in eval
    mode: a copy, or ``model`` itself with ``inplace=True`` (its fp32 Linear weights are then released).
    The copy shares the objects in ``share`` with ``model`` instead of copying them (what quantisation does
    not change and nothing writes, e.g. an items x width embedding table). The model must be on the CPU."""
    with warnings.catch_warnings():
        # the deprecation notices of torch.ao.quantization and of quantised tensor creation (torch >= 2.9)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        from torch.ao.quantization import quantize_dynamic

        target = model if inplace else copy.deepcopy(model, memo={id(obj): obj for obj in share})
        quantised = quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantised.eval()


def quantised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that :func:`quantise_int8` replaced (dynamic quantised Linear)."""
    return [name for name, m in model.named_modules() if m._get_name() == "DynamicQuantizedLinear"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (``/proc/cpuinfo`` flags; ``False`` where that cannot be read)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def ranking_overlap(
    reference: torch.Tensor, other: torch.Tensor, exclude: torch.Tensor, k: int = 20
) -> float:
    """Mean over rows of |top-k(reference) & top-k(other)| / k, for (B, n) scores of the same users;
    ``exclude`` (B, n) bool marks items never ranked (e.g. the history)."""
    k = min(k, reference.shape[1])
    if reference.shape[0] == 0 or k == 0:
        return 1.0
    a = reference.float().masked_fill(exclude, float("-inf")).topk(k, dim=1).indices
    b = other.float().masked_fill(exclude, float("-inf")).topk(k, dim=1).indices
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.float().mean() / k)
