"""Tensorized layers trained from scratch: TT linear/conv constructors, ``TTEmbedding``, TT-GRU and TT-LSTM cells.

The TT-matrix and TT-conv layers are the ones of :mod:`tetra_lightning.decompose.tt`; :func:`tt_linear` and
:func:`tt_conv2d` build them from shapes alone with the initialization of Khrulkov et al. (Tensorized embedding
layers, 2019): every core entry is drawn from ``N(0, s^2)`` with ``s`` chosen so that the *product* of the
``n_factors`` cores summed over the bonds has the variance of a Kaiming-initialized dense weight,
``Var(W) = s^(2 n_factors) * prod(ranks) = gain^2 / fan_in``, so activations keep their variance.
:class:`TTEmbedding` and :func:`khrulkov_init_` live in :mod:`tetra_lightning.decompose` (``compress_`` needs them
too) and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose.embedding import TTEmbedding
from tetra_lightning.decompose.recurrent import gru_update, lstm_update
from tetra_lightning.decompose.tt import (
    RankArg,
    TTConv2d,
    TTLinear,
    auto_modes,
    bond_ranks,
    khrulkov_init_,
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
    bonds = bond_ranks(ranks, tt_bounds_linear(in_modes, out_modes), "tt_linear")
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
    bonds = bond_ranks(ranks, tt_bounds_conv(kernel, in_modes, out_modes), "tt_conv2d")
    layer = TTConv2d(
        in_channels, out_channels, kernel, in_modes, out_modes, bonds,
        stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, bias=bias,
    )
    fan_in = int(in_channels) * kernel[0] * kernel[1]
    khrulkov_init_([layer.spatial.weight, *layer.cores], bonds, gain**2 / fan_in)
    return layer


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

    The gate update is :func:`~tetra_lightning.decompose.recurrent.gru_update`, the one
    :func:`~tetra_lightning.decompose.compress_` uses when it converts an ``nn.GRU`` with ``TTConfig``.

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
        return gru_update(self.input_map(x), self.hidden_map(h), h)


class TTLSTMCell(_TTRecurrentCell):
    """``nn.LSTMCell`` with a TT-matrix input-to-hidden map; gates ordered ``i, f, g, o`` like PyTorch.

    The gate update is :func:`~tetra_lightning.decompose.recurrent.lstm_update`, the one
    :func:`~tetra_lightning.decompose.compress_` uses when it converts an ``nn.LSTM`` with ``TTConfig``.

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
        return lstm_update(self.input_map(x), self.hidden_map(h), c)
