"""The loaded model: an artifact of any registered model, id maps, stored user states, batched scoring.

Everything here is synchronous; :meth:`Engine.score` runs in the batcher's single worker thread. Shapes:
``n`` items, ``S`` floats per user state (``Recommender.state_dim``; 0 for models that need only the
history), ``B`` users in a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from model.artifact import Artifact, read_artifact
from model.base import Recommender, UserBatch
from model.precision import AUTO_MIN_OVERLAP, Precision, native_bf16, ranking_overlap
from model.ranking import mask_items, top_k

__all__ = ["Engine", "PrecisionDecision", "ScoredItems", "ScoringRequest", "choose_precision"]

log = logging.getLogger(__name__)

OVERLAP_USERS = 256  # training users on which LD4MREC_PRECISION=auto measures bf16's top-20 overlap
OVERLAP_K = 20

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ScoringRequest:
    """One user's row of a batched forward pass (internal ids).

    Attributes:
        user_index: internal user id, -1 for a user the model never saw (cold start).
        history: (h,) int64 unique item ids of the current history.
        state: (S,) float32 user state of ``history``; ``None`` = fold it in.
        k: how many items to return, at most.
        exclude: (e,) int64 item ids never to return (e.g. the history).
        candidates: (c,) int64 item ids; when given, only these may be returned.
    """

    user_index: int
    history: np.ndarray
    state: np.ndarray | None
    k: int
    exclude: np.ndarray = field(default_factory=lambda: _EMPTY)
    candidates: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredItems:
    """The answer for one :class:`ScoringRequest`.

    Attributes:
        items: (<= k,) int64 item ids, best first; only eligible items (fewer than k if fewer qualify).
        scores: (<= k,) float32 their scores.
        folded_state: (S,) float32 state computed by fold-in for this request, else ``None``.
    """

    items: np.ndarray
    scores: np.ndarray
    folded_state: np.ndarray | None


@dataclass(frozen=True)
class PrecisionDecision:
    """What ``LD4MREC_PRECISION`` asked for (``setting``), what is served, why, and bf16's measured mean
    top-20 overlap with fp32 (``None`` when not measured)."""

    setting: str
    served: Precision
    reason: str
    bf16_top20_overlap: float | None = None


def choose_precision(art: Artifact, device: torch.device, setting: str) -> PrecisionDecision:
    """``setting`` as given, or for ``auto``: bf16 where the model has a bf16 path, ``device`` computes bf16
    natively and bf16's mean top-20 overlap with fp32 on up to :data:`OVERLAP_USERS` training users (their
    histories masked, as served) is >= :data:`AUTO_MIN_OVERLAP`; else fp32."""
    if setting != "auto":
        return PrecisionDecision(setting, setting, "set by LD4MREC_PRECISION")  # type: ignore[arg-type]
    model = art.model
    if "bf16" not in model.precisions:
        return PrecisionDecision("auto", "fp32", f"model {model.name} has no bf16 path")
    if not native_bf16(device):
        return PrecisionDecision(
            "auto",
            "fp32",
            f"{device} has no native bf16 (a CPU needs AVX512-BF16 or AMX): bf16 would be slower than fp32",
        )
    histories = art.train_histories
    users = np.flatnonzero(np.diff(histories.indptr) > 0)
    if users.size > OVERLAP_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, OVERLAP_USERS, replace=False))
    batch = UserBatch.from_csr(histories[users], users, art.user_states[users], device)
    seen = torch.from_numpy(histories[users].toarray() > 0).to(device)
    with torch.inference_mode():
        reference = model.score(batch)
        reduced = model.with_precision("bf16").score(batch)
    overlap = round(ranking_overlap(reference, reduced, seen, OVERLAP_K), 4)
    measured = f"bf16's top-{OVERLAP_K} overlap with fp32 on {users.size} training users is {overlap:.4f}"
    if overlap >= AUTO_MIN_OVERLAP:
        return PrecisionDecision("auto", "bf16", f"{measured} >= {AUTO_MIN_OVERLAP}", overlap)
    return PrecisionDecision("auto", "fp32", f"{measured} < {AUTO_MIN_OVERLAP}", overlap)


class Engine:
    """An artifact loaded for serving: its model on ``device`` in ``precision`` (what
    ``Recommender.with_precision`` made of it) plus the id maps built once at load."""

    def __init__(
        self,
        art: Artifact,
        device: torch.device,
        precision: Precision = "fp32",
        decision: PrecisionDecision | None = None,
    ) -> None:
        self.artifact = art
        self.model: Recommender = art.model.with_precision(precision)
        self.precision: Precision = precision
        self.precision_decision = decision or PrecisionDecision(precision, precision, "set by the caller")
        self.device = device
        self.model_version = art.model_version
        self.dataset = art.dataset
        self.n_items = art.n_items
        self.state_dim = self.model.state_dim
        self._no_state = np.zeros(0, dtype=np.float32)
        self._user_index = {uid: i for i, uid in enumerate(art.user_ids)}
        self._item_index = {iid: i for i, iid in enumerate(art.item_ids)}
        self._item_ids = art.item_ids
        self._indptr = art.train_histories.indptr
        self._indices = art.train_histories.indices.astype(np.int64)

    @classmethod
    def load(cls, path: str | Path, device: torch.device, precision: str = "fp32") -> Engine:
        """Read and verify the artifact and build its model on ``device`` (raises ``ArtifactError`` naming
        the file), in ``precision`` (``auto``: :func:`choose_precision`; raises ``PrecisionError`` where the
        model or device cannot)."""
        # mapped read-only: worker processes serving the same artifact share its pages (the OS file cache)
        art = read_artifact(path, device, mmap=device.type == "cpu")
        decision = choose_precision(art, device, precision)
        engine = cls(art, device, decision.served, decision)
        log.info(
            "loaded %s model %s (dataset %s, %d users, %d items) on %s, precision %s (%s: %s)",
            art.model.name,
            art.model_version,
            art.dataset,
            art.n_users,
            art.n_items,
            device,
            decision.served,
            decision.setting,
            decision.reason,
        )
        return engine

    # -- id maps ---------------------------------------------------------------------------------------------
    def user_index(self, user_id: str) -> int:
        """Internal id of an external user id; -1 when the model never saw the user."""
        return self._user_index.get(user_id, -1)

    def item_indices(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Internal ids (unique, sorted) of the known external item ids, and the unknown ones in order."""
        if not item_ids:
            return _EMPTY, []
        index = self._item_index
        known: list[int] = []
        unknown: list[str] = []
        for item_id in item_ids:
            i = index.get(item_id)
            if i is None:
                unknown.append(item_id)
            else:
                known.append(i)
        # sorted(set()) of a short list: np.unique costs far more than the list itself at these sizes
        return np.asarray(sorted(set(known)), dtype=np.int64), list(dict.fromkeys(unknown))

    def item_ids_of(self, indices: np.ndarray) -> list[str]:
        """External ids of internal item ids (a short array, e.g. a top-k)."""
        ids = self._item_ids
        return [ids[i] for i in indices.tolist()]

    def artifact_history(self, user_index: int) -> np.ndarray:
        """(h,) int64 training history of a known user."""
        return self._indices[self._indptr[user_index] : self._indptr[user_index + 1]]

    def artifact_history_ids(self, user_index: int) -> list[str]:
        """External item ids of a known user's training history."""
        return self.item_ids_of(self.artifact_history(user_index))

    def stored_state(self, user_index: int) -> np.ndarray:
        """(S,) float32 state the trainer stored for a known user's training history."""
        return self.artifact.user_states[user_index]

    @property
    def caches_state(self) -> bool:
        """Whether fold-ins are worth caching (the model has a user state beside the history)."""
        return self.state_dim > 0

    def decode_state(self, raw: bytes | None) -> np.ndarray | None:
        """State from a fold-in cache entry; ``None`` when absent or not of this model's size. A model
        without state (S = 0) needs no fold-in: its empty state is always valid."""
        if self.state_dim == 0:
            return self._no_state
        if raw is None or len(raw) != self.state_dim * 4:
            return None
        return np.frombuffer(raw, dtype=np.float32)

    # -- scoring ---------------------------------------------------------------------------------------------
    def fold_in(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, S) float32 states of B histories of internal item ids."""
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.concatenate(histories) if histories else _EMPTY
        data = np.ones(indices.shape[0], dtype=np.float32)
        csr = sp.csr_matrix((data, indices, indptr), shape=(len(histories), self.n_items))
        return self.model.fold_in(csr)

    def score(self, requests: Sequence[ScoringRequest]) -> list[ScoredItems]:
        """One forward pass for all requests, then per-request masks and top-k (worker thread)."""
        size = len(requests)
        device = self.device
        states = np.empty((size, self.state_dim), dtype=np.float32)
        fold_rows = [i for i, r in enumerate(requests) if r.state is None]
        for i, r in enumerate(requests):
            if r.state is not None:
                states[i] = r.state
        if fold_rows:
            states[fold_rows] = self.fold_in([requests[i].history for i in fold_rows])

        lengths = np.fromiter((len(r.history) for r in requests), dtype=np.int64, count=size)
        batch = UserBatch(
            item_ids=torch.from_numpy(np.concatenate([r.history for r in requests])).to(device),
            offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)).to(
                device
            ),
            user_index=torch.tensor([r.user_index for r in requests], dtype=torch.int64, device=device),
            states=torch.from_numpy(states).to(device),
        )
        with torch.inference_mode():
            scores = self.model.score(batch)
            self._mask(scores, requests)
            values, ids = top_k(scores, max(r.k for r in requests))
            values_np, ids_np = values.cpu().numpy(), ids.cpu().numpy()

        results = []
        folded = set(fold_rows)
        for i, r in enumerate(requests):
            row_values = values_np[i, : r.k]
            keep = np.isfinite(row_values)
            results.append(
                ScoredItems(
                    items=ids_np[i, : r.k][keep].astype(np.int64),
                    scores=row_values[keep],
                    folded_state=states[i].copy() if i in folded and self.caches_state else None,
                )
            )
        return results

    def _mask(self, scores: torch.Tensor, requests: Sequence[ScoringRequest]) -> None:
        """Set excluded items, and items outside a request's candidates, to -inf in ``scores`` (B, n)."""
        device = scores.device
        counts = [len(r.exclude) for r in requests]
        if sum(counts):
            rows = np.repeat(np.arange(len(requests)), counts)
            items = np.concatenate([r.exclude for r in requests])
            mask_items(scores, torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device))
        restricted = [i for i, r in enumerate(requests) if r.candidates is not None]
        if restricted:
            cand = [requests[i].candidates for i in restricted]
            rows = np.repeat(np.arange(len(restricted)), [len(c) for c in cand if c is not None])
            items = np.concatenate([c for c in cand if c is not None])
            allowed = torch.zeros((len(restricted), scores.shape[1]), dtype=torch.bool, device=device)
            allowed[torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)] = True
            index = torch.tensor(restricted, dtype=torch.int64, device=device)
            scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
