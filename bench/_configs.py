"""Configurations of the bench scripts that train: a model name (any registered one) and flat overrides
(``{"lr": 1e-3, "epochs": 30}``) split into the model's own config (``get_model(name).config_class``) and
the :class:`training.config.RunConfig` every model shares.

Shared by the scripts in ``bench/`` (imported as ``from _configs import ...``, see ``_machine``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from model.base import ConfigError, ModelConfig
from model.registry import get_model
from training.config import RunConfig

__all__ = ["TRUE_WORDS", "config_diff", "option_hints", "parse_set", "split_overrides"]

TRUE_WORDS = ("1", "true", "yes", "on")
_BOOL_WORDS = (*TRUE_WORDS, "0", "false", "no", "off")


def option_hints(model_name: str) -> dict[str, Any]:
    """Option name -> type hint of every RunConfig field and every field of ``model_name``'s config.

    Raises ConfigError for an unknown model, or when a model option has a RunConfig field's name (a flat
    override would then be ambiguous)."""
    config_class = get_model(model_name).config_class
    run_hints = typing.get_type_hints(RunConfig)
    model_hints = typing.get_type_hints(config_class)
    shared = sorted(set(run_hints) & set(model_hints))
    if shared:
        raise ConfigError(f"{config_class.__name__} and RunConfig both have option(s) {', '.join(shared)}")
    return run_hints | model_hints


def _parse_scalar(key: str, raw: str, hint: Any) -> Any:
    if hint is bool:
        if raw.lower() not in _BOOL_WORDS:
            raise ConfigError(f"{key} takes true or false")
        return raw.lower() in TRUE_WORDS
    try:
        return hint(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} takes a {getattr(hint, '__name__', hint)}") from None


def parse_set(model_name: str, items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "use_cg=false"]`` -> typed overrides (the type of each option; tuples comma-separated).

    Raises ConfigError naming the item for a malformed one or an unknown key."""
    hints = option_hints(model_name)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise ConfigError(f"--set {item[:80]!r}: expected key=value with key one of {', '.join(hints)}")
        hint = hints[key]
        try:
            if typing.get_origin(hint) is tuple:
                (inner, *_rest) = typing.get_args(hint)
                out[key] = tuple(_parse_scalar(key, x.strip(), inner) for x in raw.split(",") if x.strip())
            else:
                out[key] = _parse_scalar(key, raw.strip(), hint)
        except ConfigError as exc:
            raise ConfigError(f"--set {item[:80]!r}: {exc}") from None
    return out


def split_overrides(model_name: str, overrides: Mapping[str, Any]) -> tuple[ModelConfig, RunConfig]:
    """(model config, run config): the defaults with ``overrides`` applied, validated.

    Raises ConfigError naming an unknown or out-of-range option."""
    hints = option_hints(model_name)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ConfigError(f"unknown option(s) for {model_name} or the run: {', '.join(unknown)}")
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = RunConfig.from_dict({k: v for k, v in overrides.items() if k in run_fields})
    config_class = get_model(model_name).config_class
    model_config = config_class.from_dict({k: v for k, v in overrides.items() if k not in run_fields})
    return model_config, run


def config_diff(config: ModelConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from its class's defaults (JSON values)."""
    default = type(config)().to_dict()
    return {k: v for k, v in config.to_dict().items() if default[k] != v}
