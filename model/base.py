"""The model contract: what a recommender is to the trainer, the evaluator, the artifact and the service.

A model is built from its config of defaults and the training data (:meth:`Recommender.create`), fitted
either in one call (closed form, :meth:`Recommender.fit`) or epoch by epoch (``iterative = True``,
:meth:`Recommender.fit_epoch`, with the trainer doing evaluation, early stopping and the best-epoch
snapshot), and then only ever used through three functions of a user's *history* (a set of item ids):

* :meth:`Recommender.fold_in` turns histories into per-user *states* (``state_dim`` floats each; what a
  model needs beyond the history itself, e.g. LD4MRec's condition signals or DiffMM's user embedding).
  The trainer stores the training users' states in the artifact; the service folds in changed histories
  and caches the result. It is the *one* fold-in path of both sides.
* :meth:`Recommender.score` scores a :class:`UserBatch` (histories in embedding-bag form, the internal user
  ids or -1 for users the model never saw, and their states) over the whole catalogue.
* :meth:`Recommender.arrays` / :meth:`Recommender.from_arrays` save and restore everything the model
  learned as named arrays; :meth:`Recommender.array_shapes` says, from the config and ``dims`` alone, which
  arrays of which shapes an artifact must hold, so a loader checks every file before allocating anything.

Shapes: ``B`` users in a batch, ``n`` items, ``S`` = ``state_dim``.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "ConfigError",
    "FitContext",
    "ModelConfig",
    "PrecisionError",
    "SELECT_METRIC",
    "Recommender",
    "ScoreFn",
    "TrainingData",
    "UserBatch",
    "Validate",
    "as_tensor",
    "make_score_fn",
]


SELECT_METRIC = "recall@20"
"""The valid-split metric every selection (best epoch, a closed form's grid) maximises."""


class ConfigError(ValueError):
    """A model configuration that is unknown or out of range; the message names the option."""


class PrecisionError(ValueError):
    """A serving precision the model does not support, or not on its device."""


# -- configuration ------------------------------------------------------------------------------------------
def option(default: Any, help: str) -> Any:
    """A config field with its default and the one-line help the CLI shows (``field`` with metadata)."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults: use a tuple")
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's config: a frozen dataclass of hyperparameters, each with its default and help.

    Subclasses declare fields with :func:`option` and override :meth:`checks`. Saved whole in the manifest.
    """

    def checks(self) -> list[tuple[str, bool]]:
        """``(option name, is valid)`` pairs; sane upper bounds too (a manifest is untrusted input)."""
        return []

    def validate(self) -> Self:
        """Raise :class:`ConfigError` naming the first out-of-range option; returns ``self``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not np.isfinite(value):
                raise ConfigError(f"invalid value for {f.name}: {value!r} (not finite)")
        for name, ok in self.checks():
            if not ok:
                raise ConfigError(f"invalid value for {name}: {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """A validated config from JSON-like values (unknown keys and wrong types are refused)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(name, hints[name], value) for name, value in values.items()}
        return cls(**kwargs).validate()

    @classmethod
    def help(cls) -> dict[str, str]:
        """Option name -> help line."""
        return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the field's type (bool, int, float, str, tuples of those), else ConfigError."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) > 64:
            raise ConfigError(f"invalid value for {name}: expected a list of at most 64 values")
        return tuple(_coerce(name, inner, v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value for {name}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"invalid value for {name}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"invalid value for {name}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > 256:
            raise ConfigError(f"invalid value for {name}: expected a short string")
        return value
    raise ConfigError(f"option {name} has an unsupported type {hint!r}")


# -- data and context ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """What a model is fitted on.

    Attributes:
        train: (n_users, n_items) binary float32 CSR of training interactions (sorted indices).
        modality_names: modality order, e.g. ("audio", "text").
        modality_features: one (n_items, d_m) float32 matrix per modality, in that order.
    """

    train: sp.csr_matrix
    modality_names: tuple[str, ...] = ()
    modality_features: tuple[np.ndarray, ...] = ()

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])


@dataclass(frozen=True)
class FitContext:
    """How a fit runs. ``rank`` / ``world_size`` describe a distributed run (one process: 0 / 1)."""

    seed: int = 2026
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    progress: bool = False


ScoreFn = Callable[[np.ndarray], torch.Tensor]
"""Internal user ids (B,) -> scores (B, n_items), higher is better."""

Validate = Callable[[ScoreFn], dict[str, float]]
"""Valid-split metrics (e.g. ``recall@20``) of a scoring function; what closed-form fits select with."""


@dataclass
class UserBatch:
    """B users to score, histories in embedding-bag form.

    Attributes:
        item_ids: (total,) int64, every history's item ids, concatenated.
        offsets: (B,) int64, start of each history in ``item_ids``.
        user_index: (B,) int64 internal user ids; -1 for a user the model never saw (cold start).
        states: (B, S) float32 states of the histories (:meth:`Recommender.fold_in`).
    """

    item_ids: torch.Tensor
    offsets: torch.Tensor
    user_index: torch.Tensor
    states: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])

    @classmethod
    def from_csr(
        cls, histories: sp.csr_matrix, user_index: np.ndarray, states: np.ndarray, device: torch.device
    ) -> UserBatch:
        """From (B, n) binary CSR histories, (B,) user ids and (B, S) states."""
        return cls(
            item_ids=torch.from_numpy(histories.indices.astype(np.int64)).to(device),
            offsets=torch.from_numpy(histories.indptr[:-1].astype(np.int64)).to(device),
            user_index=torch.from_numpy(np.asarray(user_index, dtype=np.int64)).to(device),
            states=torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)).to(device),
        )

    def lengths(self) -> torch.Tensor:
        """(B,) int64 history lengths."""
        end = torch.tensor([self.item_ids.shape[0]], device=self.offsets.device)
        return torch.diff(self.offsets, append=end)

    def dense(self, n_items: int) -> torch.Tensor:
        """(B, n) float32 multi-hot matrix of the histories."""
        rows = torch.repeat_interleave(torch.arange(self.size, device=self.offsets.device), self.lengths())
        x = torch.zeros(self.size, n_items, device=self.item_ids.device)
        x[rows, self.item_ids] = 1.0
        return x


# -- the contract -------------------------------------------------------------------------------------------
class Recommender(ABC):
    """A recommender model. Subclasses set ``name``, ``config_class`` and ``iterative`` and implement the
    abstract methods; :mod:`model.registry` lists them. An iterative model that trains under ``torchrun``
    also sets ``distributed`` and follows :mod:`model.distributed` in ``create`` / ``fit_epoch``."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    iterative: ClassVar[bool] = False
    distributed: ClassVar[bool] = False  # fit_epoch shards users across ranks (model/distributed.py)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    config: ModelConfig
    n_users: int
    n_items: int
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    fitted_info: dict[str, Any] = {}  # what fitting chose (set by fit, or by the loader from the manifest)

    # -- build and fit -----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def create(cls, config: ModelConfig, data: TrainingData, ctx: FitContext) -> Self:
        """A fresh, untrained model for ``data`` on ``ctx.device`` (seeded by ``ctx.seed``)."""

    def fit(self, data: TrainingData, validate: Validate, ctx: FitContext) -> None:
        """Closed-form fit (``iterative = False``); may select its own settings with ``validate``."""
        raise NotImplementedError(f"{self.name} trains in epochs: the trainer calls fit_epoch")

    def fit_epoch(self, data: TrainingData, epoch: int, ctx: FitContext) -> dict[str, float]:
        """One epoch of training (``iterative = True``); returns its losses (at least ``loss``)."""
        raise NotImplementedError(f"{self.name} is fitted in closed form: the trainer calls fit")

    def snapshot(self) -> Any:
        """A copy of the learned state (the trainer keeps the best epoch's)."""
        return {k: np.array(v, copy=True) for k, v in self.arrays().items()}

    def restore(self, snapshot: Any) -> None:
        """Go back to a :meth:`snapshot`."""
        raise NotImplementedError(f"{self.name} cannot restore a snapshot")

    def fitted(self) -> dict[str, Any]:
        """What fitting chose (e.g. a regularisation selected on valid), for the manifest."""
        return dict(self.fitted_info)

    # -- user states and scoring ---------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        """S, floats per user state (0 when the history alone is enough)."""
        return 0

    def fold_in(self, histories: sp.csr_matrix) -> np.ndarray:
        """(B, S) float32 states of (B, n) binary CSR histories, from what training fixed."""
        return np.zeros((histories.shape[0], self.state_dim), dtype=np.float32)

    def user_states(self) -> np.ndarray:
        """(n_users, S) float32 states of the training users, as the artifact stores them."""
        return np.zeros((self.n_users, self.state_dim), dtype=np.float32)

    @abstractmethod
    def score(self, batch: UserBatch) -> torch.Tensor:
        """(B, n) scores over the whole catalogue on :attr:`device` (nothing masked yet)."""

    # -- persistence ---------------------------------------------------------------------------------------
    def dims(self) -> dict[str, Any]:
        """Sizes derived from the data at fit time (JSON), which with the config fix every array shape."""
        return {}

    @classmethod
    @abstractmethod
    def array_shapes(
        cls, config: ModelConfig, n_users: int, n_items: int, dims: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every array :meth:`arrays` returns (float32). Raises ConfigError for bad dims."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything learned, as named float32 arrays (CPU), shaped as :meth:`array_shapes` says."""

    @classmethod
    @abstractmethod
    def from_arrays(
        cls,
        config: ModelConfig,
        n_users: int,
        n_items: int,
        dims: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        device: torch.device,
    ) -> Self:
        """The model in eval mode on ``device`` from validated ``arrays`` (shapes already checked)."""

    # -- serving -------------------------------------------------------------------------------------------
    def with_precision(self, precision: str) -> Self:
        """The model to serve in ``precision`` (``fp32`` returns ``self``); PrecisionError if unsupported."""
        if precision == "fp32":
            return self
        raise PrecisionError(
            f"model {self.name} supports precision {', '.join(self.precisions)}, not {precision!r}"
        )


def make_score_fn(model: Recommender, histories: sp.csr_matrix, states: np.ndarray) -> ScoreFn:
    """Scores of internal users from their ``histories`` (n_users, n) and ``states`` (n_users, S)."""

    @torch.inference_mode()
    def score(users: np.ndarray) -> torch.Tensor:
        batch = UserBatch.from_csr(histories[users], users, states[users], model.device)
        return model.score(batch)

    return score


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory, also for a read-only (memory-mapped) array; such a tensor
    must never be written (models only read their loaded arrays or copy them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))
