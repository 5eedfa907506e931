"""The one place that names the model classes. Everything else chooses a model by its name through here."""

from __future__ import annotations

from model.base import ConfigError, Recommender
from model.diffmm.recommender import DiffMM
from model.ease import EASE
from model.ld4mrec.recommender import LD4MRec
from model.popularity import Popularity

__all__ = ["DEFAULT_MODEL", "MODELS", "UnknownModelError", "get_model", "model_names"]

MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (LD4MRec, DiffMM, EASE, Popularity)}
DEFAULT_MODEL = LD4MRec.name


class UnknownModelError(ConfigError):
    """No registered model has this name."""


def model_names() -> tuple[str, ...]:
    """Registered model names, the default first."""
    return (DEFAULT_MODEL, *sorted(n for n in MODELS if n != DEFAULT_MODEL))


def get_model(name: str) -> type[Recommender]:
    """The model class registered as ``name``; UnknownModelError lists the known ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        raise UnknownModelError(
            f"unknown model {shown!r}; known models: {', '.join(model_names())}"
        ) from None
