"""Serving precisions: ``fp32`` (as trained) or ``int8`` (dynamic int8 weights of a network's Linear layers).

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
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Literal, TypeVar, get_args

import torch
from torch import nn

__all__ = ["PRECISIONS", "Precision", "model_device", "quantise_int8", "quantised_layers"]

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

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
