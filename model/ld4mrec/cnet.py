"""C-Net, the conditional denoiser of LD4MRec (spec: "C-Net (Eq. 4)").

``FC_in -> CG -> PG(m_1) -> LeakyReLU -> PG(m_2) ... -> CG -> FC_out``

Shapes: B users, n items, d hidden, d_fwd step-embedding dims, d_c = 2 * d_svd collaborative dims,
d_m per-modality dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNet", "CNetConfig"]


@dataclass(frozen=True)
class CNetConfig:
    """Architecture of C-Net. Everything here is saved in the artifact manifest.

    Attributes:
        n_items: catalogue size n.
        collab_dim: d_c = 2 * d_svd.
        modality_dims: d_m of each modality, in modality order.
        hidden_dim: d.
        step_dim: d_fwd.
        use_cg: collaboration-aware generation blocks (False: ``act(W1 [h; z])`` in their place).
        use_pg: preference-aware generation blocks (False: the two CG blocks are linked directly).
        input_dropout: dropout on the (noisy) behaviour vector before FC_in, training only.
        gate_bias: initial bias of the CG gate; negative starts the collaborative branch near off.
        activation: "tanh" (DiffRec) or "leaky_relu".
        item_graph: w of the frozen item graph S (0: none); set with :meth:`CNet.set_item_structures`.
        feature_dim: width of the item features of the feature output layer (0: none).
        gfcf_prior: whether a GF-CF item-item prior (n, n) is added to the output.
    """

    n_items: int
    collab_dim: int
    modality_dims: tuple[int, ...] = ()
    hidden_dim: int = 1000
    step_dim: int = 10
    use_cg: bool = True
    use_pg: bool = True
    input_dropout: float = 0.5
    gate_bias: float = -4.0
    activation: str = "tanh"
    item_graph: float = 0.0
    feature_dim: int = 0
    gfcf_prior: bool = False


def _activation(name: str) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"unknown activation {name!r}; expected 'tanh' or 'leaky_relu'")


def _xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    nn.init.normal_(layer.bias, std=0.001)
    return layer


class CGBlock(nn.Module):
    """Collaboration-aware generation block (Eqs. 18-20).

    ``h' = act(W1 [h; z] + b1)``, ``c' = act(W2 c + b2)``, ``g = sigmoid(W3 z + b3)``,
    output ``h' * (1 - g) + c' * g``. With ``use_condition=False`` the output is ``h'``.
    """

    def __init__(self, cfg: CNetConfig, use_condition: bool) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.act = _activation(cfg.activation)
        self.hidden = _xavier_linear(d + cfg.step_dim, d)
        self.use_condition = use_condition
        if use_condition:
            self.condition = _xavier_linear(cfg.collab_dim, d)
            self.gate = nn.Linear(cfg.step_dim, d)
            nn.init.normal_(self.gate.weight, std=0.01)
            nn.init.constant_(self.gate.bias, cfg.gate_bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h (B, d), z (B, d_fwd), c (B, d_c) -> (B, d)."""
        h_new = self.act(self.hidden(torch.cat([h, z], dim=1)))
        if not self.use_condition:
            return h_new
        c_new = self.act(self.condition(c))
        g = torch.sigmoid(self.gate(z))
        return h_new * (1.0 - g) + c_new * g


class PGBlock(nn.Module):
    """Preference-aware generation block (Eqs. 21-22), channel-wise affine: ``gamma(m) * h + beta(m)``.

    Both MLPs are ``Linear(d_m -> d) -> ReLU -> Linear(d -> d)`` with a zero last layer, so the block
    starts as the identity (gamma = 1, beta = 0).
    """

    def __init__(self, modality_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Sequential(
            _xavier_linear(modality_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.beta = nn.Sequential(
            _xavier_linear(modality_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        for mlp in (self.gamma, self.beta):
            last = mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """h (B, d), m (B, d_m) -> (B, d)."""
        return (1.0 + self.gamma(m)) * h + self.beta(m)


class CNet(nn.Module):
    """The conditional denoiser ``x0_hat = C-Net(x, z, c, {m})``.

    The first layer is stored as ``item_in`` (n, d) so that a sparse binary input is a sum of rows
    (an embedding bag) and a dense input is ``x @ item_in``: both give the same numbers.
    """

    signal_mean: torch.Tensor
    signal_std: torch.Tensor
    item_graph: torch.Tensor | None
    item_features: torch.Tensor
    prior: torch.Tensor

    def __init__(self, cfg: CNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.item_in = nn.Parameter(torch.empty(cfg.n_items, d))
        nn.init.xavier_normal_(self.item_in)
        self.bias_in = nn.Parameter(torch.zeros(d))
        self.cg_first = CGBlock(cfg, use_condition=cfg.use_cg)
        self.cg_second = CGBlock(cfg, use_condition=cfg.use_cg)
        n_pg = len(cfg.modality_dims) if cfg.use_pg else 0
        self.pg_blocks = nn.ModuleList(PGBlock(dm, d) for dm in cfg.modality_dims[:n_pg])
        self.pg_act = nn.LeakyReLU(0.2)
        self.out = _xavier_linear(d, cfg.n_items)
        # Fixed standardisation of the condition signals (set from training users, saved with the weights).
        width = cfg.collab_dim + sum(cfg.modality_dims)
        self.register_buffer("signal_mean", torch.zeros(width))
        self.register_buffer("signal_std", torch.ones(width))
        # structural switches: fixed item-side structures rebuilt from the item features (not saved) ...
        self.register_buffer("item_graph", None, persistent=False)
        self._table_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        if cfg.feature_dim > 0:
            self.register_buffer("item_features", torch.zeros(cfg.n_items, cfg.feature_dim), persistent=False)
            self.feature_proj = nn.Parameter(torch.zeros(cfg.feature_dim, d))
        # ... and the GF-CF prior, built from the training matrix (saved with the weights)
        if cfg.gfcf_prior:
            self.register_buffer("prior", torch.zeros(cfg.n_items, cfg.n_items))
            self.prior_weight = nn.Parameter(torch.ones(1))

    def set_item_structures(self, graph: torch.Tensor | None, features: torch.Tensor | None) -> None:
        """Fix the item graph S (n, n) sparse COO and the item features (n, feature_dim) when configured."""
        if self.cfg.item_graph > 0:
            if graph is None:
                raise ValueError("item_graph > 0 needs an item graph")
            self.item_graph = graph.to(self.item_in.device)
        if self.cfg.feature_dim > 0:
            if features is None or tuple(features.shape) != (self.cfg.n_items, self.cfg.feature_dim):
                shape = (self.cfg.n_items, self.cfg.feature_dim)
                raise ValueError(f"feature_output needs item features of shape {shape}")
            self.item_features.copy_(features)

    def _input_table(self) -> torch.Tensor:
        """The first layer's item table (n, d): ``item_in``, or ``item_in + w S item_in`` with the item graph
        (the same as smoothing the input row ``x -> x + w x S``)."""
        if self.item_graph is None:
            return self.item_in
        if torch.is_grad_enabled() and self.item_in.requires_grad:  # training: through the graph
            return self.item_in + self.cfg.item_graph * torch.sparse.mm(self.item_graph, self.item_in)
        # scoring: once per version of item_in (every optimiser step and load bumps it)
        key = (self.item_in._version, self.item_in.data_ptr())
        if self._table_cache is None or self._table_cache[0] != key:
            with torch.no_grad():
                table = self.item_in + self.cfg.item_graph * torch.sparse.mm(self.item_graph, self.item_in)
            self._table_cache = (key, table)
        return self._table_cache[1]

    # -- prior ---------------------------------------------------------------------------------------------
    def prior_dense(self, x: torch.Tensor) -> torch.Tensor:
        """GF-CF prior of dense histories x (B, n) -> (B, n), times its learned weight."""
        return self.prior_weight * torch.sparse.mm(x.to_sparse(), self.prior)

    def prior_sparse(self, item_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """GF-CF prior of binary histories given as an id list + bag offsets -> (B, n)."""
        return self.prior_weight * F.embedding_bag(item_ids, self.prior, offsets, mode="sum")

    # -- first layer -------------------------------------------------------------------------------------
    def embed_dense(self, x: torch.Tensor, keep_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n) dense, possibly noisy -> h (B, d).

        In training mode the input dropout is applied, with ``keep_mask`` (B, n) of 0/1 when the caller
        needs to know which entries were kept (e.g. to compute signals from the visible history).
        """
        if self.training and self.cfg.input_dropout > 0:
            if keep_mask is None:
                x = F.dropout(x, p=self.cfg.input_dropout)
            else:
                x = x * keep_mask / (1.0 - self.cfg.input_dropout)
        return x @ self._input_table() + self.bias_in

    def embed_sparse(self, item_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Binary histories as a flat id list + bag offsets (as ``F.embedding_bag``) -> h (B, d)."""
        return F.embedding_bag(item_ids, self._input_table(), offsets, mode="sum") + self.bias_in

    # -- conditions ----------------------------------------------------------------------------------------
    def set_signal_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the standardisation of the concatenated signals [c ; m_1 ; ...] (width,)."""
        self.signal_mean.copy_(mean)
        self.signal_std.copy_(std.clamp_min(1e-8))

    def _prepare_conditions(self, signals: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Standardise (B, width) signals and split them into c (B, d_c) and [m_k (B, d_k)]."""
        s = (signals - self.signal_mean) / self.signal_std
        blocks = list(torch.split(s, [self.cfg.collab_dim, *self.cfg.modality_dims], dim=1))
        return blocks[0], blocks[1:]

    # -- body ----------------------------------------------------------------------------------------------
    def forward_hidden(self, h: torch.Tensor, z: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        """h (B, d) from a first layer, z (B, d_fwd), signals (B, width) -> scores x0_hat (B, n)."""
        c, modalities = self._prepare_conditions(signals)
        h = self.cg_first(h, z, c)
        for k, (block, m) in enumerate(zip(self.pg_blocks, modalities, strict=False)):
            if k > 0:
                h = self.pg_act(h)
            h = block(h, m)
        h = self.cg_second(h, z, c)
        y = self.out(h)
        if self.cfg.feature_dim > 0:
            y = y + (h @ self.feature_proj.T) @ self.item_features.T
        if self.item_graph is not None:
            y = y + self.cfg.item_graph * torch.sparse.mm(self.item_graph, y.T).T
        return y

    def forward(self, x: torch.Tensor, z: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        """Dense path for binary x (B, n), z (B, d_fwd), signals (B, width) -> x0_hat (B, n)."""
        return self.forward_hidden(self.embed_dense(x), z, signals)
