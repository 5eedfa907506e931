"""The precision a loaded LD4MRec is served in: ``fp32`` (as trained) or ``int8`` (dynamic int8 weights).

``int8`` is ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear``: the CG blocks' hidden,
condition and gate layers, the PG blocks' MLPs if any, ``content_proj`` if any, and ``FC_out`` (hidden x
n_items, the largest read of a pass). Their weights are stored as int8 (per-tensor scale), activations are
quantised per batch on the fly, outputs are fp32. The first layer ``item_in`` (a Parameter read by the
embedding bag), the biases outside those layers, ``z_in`` and the signal standardisation stay fp32, and so
do the scores. CPU only: the quantised kernels (fbgemm / onednn) have no CUDA implementation.

``torch.ao.quantization`` is deprecated in favour of torchao; torch 2.13 still ships it and its notices are
silenced here. Its replacement (torchao's ``quantize_``) is a separate package.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, get_args

import torch
from torch import nn

from model.ld4mrec import LD4MRec

__all__ = ["PRECISIONS", "Precision", "PrecisionError", "quantise_int8", "quantised_layers", "to_precision"]

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class PrecisionError(ValueError):
    """A precision that does not exist, or that cannot run on the model's device."""


def quantise_int8(model: LD4MRec, inplace: bool = False) -> LD4MRec:
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (see the module docstring), in eval
    mode: a copy, or ``model`` itself with ``inplace=True`` (its fp32 Linear weights are then released).
    The model must be on the CPU."""
    with warnings.catch_warnings():
        # the deprecation notices of torch.ao.quantization and of quantised tensor creation (torch >= 2.9)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        from torch.ao.quantization import quantize_dynamic

        target = model if inplace else copy.deepcopy(model)
        quantised = quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantised.eval()


def quantised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that :func:`quantise_int8` replaced (dynamic quantised Linear)."""
    return [name for name, m in model.named_modules() if m._get_name() == "DynamicQuantizedLinear"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def to_precision(model: LD4MRec, precision: str, inplace: bool = False) -> LD4MRec:
    """The model to serve in ``precision`` ("fp32" | "int8") from a loaded fp32 ``model`` in eval mode.

    "fp32" returns ``model`` itself. "int8" returns :func:`quantise_int8` of it (a copy unless
    ``inplace``). Raises PrecisionError for an unknown name, and for "int8" when the model is not on the
    CPU (no fallback: serve fp32 on the GPU, or int8 on the CPU).
    """
    if precision == "fp32":
        return model
    if precision == "int8":
        device = model_device(model)
        if device.type != "cpu":
            raise PrecisionError(
                f"int8 precision runs on the CPU only (dynamic int8 quantisation has no CUDA kernels); the "
                f"model is on {device}: use the CPU device with int8, or fp32 on {device}"
            )
        return quantise_int8(model, inplace=inplace)
    raise PrecisionError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
