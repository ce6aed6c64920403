"""Tensorized layers trained from scratch: TT linear/conv constructors, ``TTEmbedding``, TT-GRU and TT-LSTM cells.

The TT-matrix and TT-conv layers are the ones of :mod:`tetra_lightning.decompose.tt`; :func:`tt_linear` and
:func:`tt_conv2d` build them from shapes alone with the initialization of Khrulkov et al. (Tensorized embedding
layers, 2019): every core entry is drawn from ``N(0, s^2)`` with ``s`` chosen so that the *product* of the
``n_factors`` cores summed over the bonds has the variance of a Kaiming-initialized dense weight,
``Var(W) = s^(2 n_factors) * prod(ranks) = gain^2 / fan_in``, so activations keep their variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import tt_svd, tt_to_tensor
from tetra_lightning.decompose.base import FactorizedLayer, relative_error
from tetra_lightning.decompose.tt import (
    TTConv2d,
    TTLinear,
    auto_modes,
    factorize,
    tt_bounds_conv,
    tt_bounds_linear,
)

__all__ = [
    "TTEmbedding",
    "TTGRUCell",
    "TTLSTMCell",
    "khrulkov_init_",
    "tt_conv2d",
    "tt_embedding_from",
    "tt_linear",
]

RankArg = int | Sequence[int]


def _bond_ranks(ranks: RankArg, bounds: Sequence[int], owner: str) -> list[int]:
    if isinstance(ranks, bool) or not isinstance(ranks, (int, Sequence)):
        raise TypeError(f"`ranks` of {owner} must be an int or a sequence of ints, got {type(ranks).__name__}.")
    values = [int(ranks)] * len(bounds) if isinstance(ranks, int) else [int(r) for r in ranks]
    if len(values) != len(bounds) or any(r < 1 for r in values):
        raise ValueError(
            f"`ranks` of {owner} must be one int >= 1 or {len(bounds)} ints >= 1 (one per bond), got {ranks!r}. "
            f"Pass e.g. ranks=8."
        )
    # A bond rank above what the unfolding allows only adds redundant parameters: cap it.
    return [min(r, b) for r, b in zip(values, bounds, strict=True)]


def khrulkov_init_(factors: Sequence[Tensor], ranks: Sequence[int], variance: float) -> None:
    """Draw every factor from ``N(0, s^2)`` so that the contracted tensor's entries have variance ``variance``.

    Args:
        factors: the TT factors (parameters), modified in place.
        ranks: the bond ranks summed over in the contraction.
        variance: target variance of one entry of the full tensor.

    Example:
        >>> import torch
        >>> cores = [torch.empty(1, 64, 8), torch.empty(8, 64, 1)]
        >>> khrulkov_init_(cores, [8], variance=0.5)
        >>> round(float((cores[0][0] @ cores[1][:, :, 0]).var()), 1)
        0.5
    """
    std = (variance / math.prod(int(r) for r in ranks)) ** (1.0 / (2 * len(factors)))
    with torch.no_grad():
        for factor in factors:
            factor.normal_(0.0, std)


def tt_linear(
    in_features: int,
    out_features: int,
    ranks: RankArg,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    bias: bool = True,
    gain: float = math.sqrt(2.0),
) -> TTLinear:
    """A :class:`~tetra_lightning.decompose.TTLinear` built from shapes, Khrulkov-initialized (``Var W = gain^2/in``).

    Args:
        in_features: input features.
        out_features: output features.
        ranks: one bond rank for every bond, or ``d - 1`` ranks (capped at the TT-matrix's maximal ranks).
        in_modes: factorization of ``in_features`` (None: automatic, like ``TTConfig``).
        out_modes: factorization of ``out_features``, same length.
        bias: whether the layer has a (zero-initialized) bias.
        gain: Kaiming gain (``sqrt(2)`` for ReLU, 1 for linear/tanh).

    Returns:
        The layer.

    Raises:
        ValueError: for modes that do not multiply to the sizes or ranks that are not positive.

    Example:
        >>> layer = tt_linear(256, 128, ranks=8)
        >>> layer.in_modes, layer.out_modes, layer.ranks
        ((8, 8, 4), (8, 4, 4), (8, 8))
    """
    if in_modes is None or out_modes is None:
        in_modes, out_modes = auto_modes(int(in_features), int(out_features))
    bonds = _bond_ranks(ranks, tt_bounds_linear(in_modes, out_modes), "tt_linear")
    layer = TTLinear(in_features, out_features, in_modes, out_modes, bonds, bias=bias)
    khrulkov_init_(list(layer.cores), bonds, gain**2 / int(in_features))
    return layer


def tt_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    ranks: RankArg,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    padding_mode: str = "zeros",
    bias: bool = True,
    gain: float = math.sqrt(2.0),
) -> TTConv2d:
    """A :class:`~tetra_lightning.decompose.TTConv2d` built from shapes, Khrulkov-initialized.

    ``ranks`` are the ``d`` bond ranks ``(r_0, ..., r_{d-1})`` (one int: all equal, capped at the maximal ranks);
    the target weight variance is ``gain^2 / (in_channels * kh * kw)``.

    Example:
        >>> import torch
        >>> conv = tt_conv2d(16, 32, 3, ranks=4, padding=1)
        >>> conv(torch.zeros(1, 16, 8, 8)).shape, conv.ranks
        (torch.Size([1, 32, 8, 8]), (4, 4))
    """
    kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if in_modes is None or out_modes is None:
        in_modes, out_modes = auto_modes(int(in_channels), int(out_channels))
    bonds = _bond_ranks(ranks, tt_bounds_conv(kernel, in_modes, out_modes), "tt_conv2d")
    layer = TTConv2d(
        in_channels, out_channels, kernel, in_modes, out_modes, bonds,
        stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, bias=bias,
    )
    fan_in = int(in_channels) * kernel[0] * kernel[1]
    khrulkov_init_([layer.spatial.weight, *layer.cores], bonds, gain**2 / fan_in)
    return layer


def _vocabulary_modes(num_embeddings: int, n_modes: int) -> tuple[int, ...]:
    """Balanced modes whose product is at least ``num_embeddings`` (the vocabulary is padded, as in Khrulkov)."""
    modes = [max(1, math.ceil(num_embeddings ** (1.0 / n_modes) - 1e-9))] * n_modes
    for index in reversed(range(n_modes)):
        while modes[index] > 1 and math.prod(modes) // modes[index] * (modes[index] - 1) >= num_embeddings:
            modes[index] -= 1
    return tuple(modes)


class TTEmbedding(FactorizedLayer):
    """``nn.Embedding`` stand-in whose ``(V, E)`` table is a TT-matrix over factorized vocabulary and embedding.

    ``W[(v_1..v_d), (e_1..e_d)] = G_1[v_1, e_1] ... G_d[v_d, e_d]`` with cores ``(r_{k-1}, v_k, e_k, r_k)``;
    ``prod(voc_modes)`` may exceed ``num_embeddings`` (padding rows are never looked up). A lookup gathers one
    slice per core and multiplies them: ``O(d r^2 E)`` per index, the table is never formed.

    Args:
        num_embeddings: vocabulary size ``V``.
        embedding_dim: embedding size ``E`` (``= prod(emb_modes)``).
        voc_modes: factorization of the vocabulary, product ``>= V`` (None: ``n_modes`` balanced modes).
        emb_modes: factorization of ``E`` (None: balanced, same length).
        rank: the ``d - 1`` bond ranks, or one int for all (capped at the maximal ranks).
        n_modes: number of modes when the modes are automatic.
        init_std: standard deviation of the table's entries at initialization (``nn.Embedding``: 1).

    Raises:
        ValueError: for sizes < 1, modes that do not fit, or bad ranks.

    Example:
        >>> import torch
        >>> emb = TTEmbedding(1000, 64, rank=8)
        >>> emb.voc_modes, emb.emb_modes, emb(torch.tensor([[0, 999]])).shape
        ((10, 10, 10), (4, 4, 4), torch.Size([1, 2, 64]))
    """

    method = "tt"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        voc_modes: Sequence[int] | None = None,
        emb_modes: Sequence[int] | None = None,
        rank: RankArg = 8,
        n_modes: int = 3,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if int(num_embeddings) < 1 or int(embedding_dim) < 1:
            raise ValueError(
                f"`num_embeddings` and `embedding_dim` must be >= 1, got {num_embeddings} and {embedding_dim}."
            )
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if voc_modes is None:
            n = len(emb_modes) if emb_modes is not None else int(n_modes)
            voc_modes = _vocabulary_modes(self.num_embeddings, n)
        if emb_modes is None:
            emb_modes = factorize(self.embedding_dim, len(voc_modes))
        self.voc_modes, self.emb_modes = tuple(int(m) for m in voc_modes), tuple(int(m) for m in emb_modes)
        if (
            len(self.voc_modes) != len(self.emb_modes)
            or math.prod(self.voc_modes) < self.num_embeddings
            or math.prod(self.emb_modes) != self.embedding_dim
        ):
            raise ValueError(
                f"TTEmbedding(voc_modes={self.voc_modes}, emb_modes={self.emb_modes}) does not fit "
                f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}: prod(voc_modes) must be "
                f">= num_embeddings, prod(emb_modes) == embedding_dim, same lengths. Pass e.g. voc_modes="
                f"{_vocabulary_modes(self.num_embeddings, 3)}, emb_modes={factorize(self.embedding_dim, 3)}."
            )
        bonds = _bond_ranks(rank, tt_bounds_linear(self.voc_modes, self.emb_modes), "TTEmbedding")
        padded = [1, *bonds, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(padded[k], v, e, padded[k + 1]))
            for k, (v, e) in enumerate(zip(self.voc_modes, self.emb_modes, strict=True))
        )
        khrulkov_init_(list(self.cores), bonds, float(init_std) ** 2)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(core.shape[-1]) for core in self.cores[:-1])

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "voc_modes": list(self.voc_modes),
            "emb_modes": list(self.emb_modes),
            "rank": list(self.ranks),
        }

    def forward(self, indices: Tensor) -> Tensor:
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"TTEmbedding expects integer indices (torch.long), got dtype {indices.dtype}.")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_embeddings):
            raise IndexError(
                f"TTEmbedding index out of range: indices must be in [0, {self.num_embeddings - 1}] "
                f"(num_embeddings={self.num_embeddings}), got values in [{int(indices.min())}, "
                f"{int(indices.max())}]. Map unknown tokens to an in-vocabulary id first."
            )
        flat = indices.reshape(-1).long()
        digits = []
        remainder = flat
        for mode in reversed(self.voc_modes):
            digits.append(remainder % mode)
            remainder = torch.div(remainder, mode, rounding_mode="floor")
        digits.reverse()
        out = self.cores[0][0].index_select(0, digits[0])  # (N, e_1, r_1)
        for core, digit in zip(self.cores[1:], digits[1:], strict=True):
            piece = core.permute(1, 0, 2, 3).index_select(0, digit)  # (N, r, e, r')
            out = torch.einsum("nar,nrbs->nabs", out, piece)
            out = out.reshape(flat.shape[0], out.shape[1] * out.shape[2], out.shape[3])
        return out.reshape(*indices.shape, self.embedding_dim)

    def dense_weight(self) -> Tensor:
        """The ``(num_embeddings, embedding_dim)`` table (padding rows dropped)."""
        d = len(self.voc_modes)
        merged = [core.reshape(core.shape[0], -1, core.shape[-1]) for core in self.cores]
        sizes = [size for pair in zip(self.voc_modes, self.emb_modes, strict=True) for size in pair]
        tensor = tt_to_tensor(merged).reshape(sizes)
        order = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
        table = tensor.permute(order).reshape(math.prod(self.voc_modes), self.embedding_dim)
        return table[: self.num_embeddings]

    def dense_bias(self) -> Tensor | None:
        return None

    def to_dense(self) -> nn.Embedding:  # type: ignore[override]
        reference = self._reference()
        layer = nn.Embedding(self.num_embeddings, self.embedding_dim, device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
        return layer

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        rank: RankArg,
        voc_modes: Sequence[int] | None = None,
        emb_modes: Sequence[int] | None = None,
        n_modes: int = 3,
    ) -> TTEmbedding:
        """TT-SVD of ``embedding.weight`` (zero-padded to ``prod(voc_modes)`` rows) at the given bond ranks."""
        module = cls(embedding.num_embeddings, embedding.embedding_dim, voc_modes, emb_modes, rank, n_modes)
        module.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        weight = embedding.weight.detach().float()
        padded = weight.new_zeros(math.prod(module.voc_modes), module.embedding_dim)
        padded[: module.num_embeddings] = weight
        d = len(module.voc_modes)
        tensor = padded.reshape(*module.voc_modes, *module.emb_modes)
        order = [axis for k in range(d) for axis in (k, d + k)]
        dims = [v * e for v, e in zip(module.voc_modes, module.emb_modes, strict=True)]
        cores = tt_svd(tensor.permute(order).reshape(dims), ranks=list(module.ranks))
        with torch.no_grad():
            for parameter, core, v, e in zip(module.cores, cores, module.voc_modes, module.emb_modes, strict=True):
                parameter.copy_(core.reshape(core.shape[0], v, e, core.shape[-1]))
        module.rel_error = relative_error(module.dense_weight(), embedding.weight)
        return module


def tt_embedding_from(embedding: nn.Embedding, ranks: RankArg, **kwargs: Any) -> TTEmbedding:
    """Turn an existing ``nn.Embedding`` into a :class:`TTEmbedding` (TT-SVD at bond ranks ``ranks``).

    Args:
        embedding: the dense embedding (``padding_idx``, ``max_norm`` and sparse gradients are not carried over).
        ranks: bond ranks (one int or ``d - 1`` ints), capped at the maximal ranks.
        **kwargs: ``voc_modes``, ``emb_modes``, ``n_modes`` of :class:`TTEmbedding`.

    Returns:
        The TT embedding; ``rel_error`` holds the relative error of its table.

    Raises:
        TypeError: if ``embedding`` is not an ``nn.Embedding``.

    Example:
        >>> import torch
        >>> dense = torch.nn.Embedding(64, 16)
        >>> emb = tt_embedding_from(dense, ranks=64, voc_modes=(8, 8), emb_modes=(4, 4))
        >>> bool(torch.allclose(emb(torch.arange(64)), dense.weight, atol=1e-4))
        True
    """
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"`embedding` must be an nn.Embedding, got {type(embedding).__name__}.")
    return TTEmbedding.from_embedding(embedding, ranks, **kwargs)


class _TTRecurrentCell(nn.Module):
    """Shared part of the TT-RNN cells: a TT input-to-hidden map and a dense hidden-to-hidden map."""

    n_gates: int = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        ranks: RankArg,
        bias: bool = True,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"`input_size` and `hidden_size` must be >= 1, got {input_size} and {hidden_size}.")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        gates = self.n_gates * self.hidden_size
        # PyTorch's RNN cells draw U(-1/sqrt(h), 1/sqrt(h)): variance 1/(3h). The TT map targets the same.
        gain = math.sqrt(self.input_size / (3.0 * self.hidden_size))
        self.input_map = tt_linear(
            self.input_size, gates, ranks, in_modes=in_modes, out_modes=out_modes, bias=bias, gain=gain
        )
        self.hidden_map = nn.Linear(self.hidden_size, gates, bias=bias)
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.hidden_map.weight.uniform_(-bound, bound)
            if bias:
                self.hidden_map.bias.uniform_(-bound, bound)
                self.input_map.bias.uniform_(-bound, bound)

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[:-1], self.hidden_size)


class TTGRUCell(_TTRecurrentCell):
    """``nn.GRUCell`` with a TT-matrix input-to-hidden map (Yang et al., TT-RNN); gates ordered ``r, z, n``.

    ``input_map: input_size -> 3 * hidden_size`` is a :class:`~tetra_lightning.decompose.TTLinear`,
    ``hidden_map: hidden_size -> 3 * hidden_size`` a dense ``nn.Linear``. The update is PyTorch's:
    ``r = sigmoid(x_r + h_r)``, ``z = sigmoid(x_z + h_z)``, ``n = tanh(x_n + r * h_n)``, ``h' = (1 - z) n + z h``.

    Args:
        input_size: features of the input.
        hidden_size: features of the hidden state.
        ranks: bond ranks of the TT input map.
        bias: whether both maps have biases.
        in_modes: factorization of ``input_size`` (None: automatic).
        out_modes: factorization of ``3 * hidden_size``.

    Example:
        >>> import torch
        >>> cell = TTGRUCell(64, 32, ranks=4)
        >>> cell(torch.randn(5, 64)).shape
        torch.Size([5, 32])
    """

    n_gates = 3

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if hx is None else hx
        x_r, x_z, x_n = self.input_map(x).chunk(3, dim=-1)
        h_r, h_z, h_n = self.hidden_map(h).chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + reset * h_n)
        return (1 - update) * candidate + update * h


class TTLSTMCell(_TTRecurrentCell):
    """``nn.LSTMCell`` with a TT-matrix input-to-hidden map; gates ordered ``i, f, g, o`` like PyTorch.

    Args: as :class:`TTGRUCell` (the TT map goes to ``4 * hidden_size``).

    Example:
        >>> import torch
        >>> cell = TTLSTMCell(64, 32, ranks=4)
        >>> h, c = cell(torch.randn(5, 64))
        >>> h.shape, c.shape
        (torch.Size([5, 32]), torch.Size([5, 32]))
    """

    n_gates = 4

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h, c = (self._zeros(x), self._zeros(x)) if hx is None else hx
        gates = self.input_map(x) + self.hidden_map(h)
        i, f, g, o = gates.chunk(4, dim=-1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_next), c_next
