"""Truncated-SVD layers: ``nn.Linear`` -> two Linears, ``nn.Conv2d`` -> ``k x k`` conv to ``R`` channels + ``1x1``.

:class:`CPLinear` is the CP decomposition of a matrix, which is its truncated SVD (Eckart-Young): the same two
Linears, recorded as method ``"cp"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import truncated_svd
from tetra_lightning.decompose.base import (
    FactorizedLayer,
    _BiasOnAccess,
    _ConvShape,
    _LinearShape,
    check_ranks,
    conv_geometry,
    group_blocks,
    relative_error,
)


class SVDLinear(_BiasOnAccess, FactorizedLayer, _LinearShape):
    """``y = second(first(x))`` with ``first: in -> R`` (no bias) and ``second: R -> out`` (dense bias).

    Built from ``W = U S V^T`` truncated at ``R``: ``first.weight = sqrt(S) V^T``, ``second.weight = U sqrt(S)``.
    Parameters: ``R * (in + out)`` (+ ``out`` bias).

    Args:
        in_features: input features of the dense layer.
        out_features: output features of the dense layer.
        rank: the SVD rank ``R``.
        bias: whether the layer has a bias.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> dense = torch.nn.Linear(32, 16)
        >>> layer = SVDLinear.from_dense(dense, rank=16)
        >>> x = torch.randn(4, 32)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4)
        True
    """

    method = "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.has_bias = int(in_features), int(out_features), bool(bias)
        self.first = nn.Linear(self.in_features, int(rank), bias=False)
        self.second = nn.Linear(int(rank), self.out_features, bias=self.has_bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, rank: int) -> SVDLinear:
        """Factorize ``layer`` at SVD rank ``rank`` (``1 <= rank <= min(in, out)``)."""
        weight = layer.weight.detach().float()
        check_ranks("SVDLinear", (rank,), (min(weight.shape),))
        module = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        left, right, _ = truncated_svd(weight, rank)
        with torch.no_grad():
            module.first.weight.copy_(right)
            module.second.weight.copy_(left)
            if layer.bias is not None:
                module.second.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_features,)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.ranks[0],
            "bias": self.has_bias,
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        return self.second.weight @ self.first.weight

    def dense_bias(self) -> Tensor | None:
        return self.second.bias

    def to_dense(self) -> nn.Linear:
        return self._dense_linear()


class SVDConv2d(_BiasOnAccess, FactorizedLayer, _ConvShape):
    """``k x k`` conv ``C_in -> R`` (stride, padding, dilation of the dense conv) then ``1x1`` conv ``R -> C_out``.

    Built from the SVD of the ``(C_out, C_in * kh * kw)`` unfolding. Parameters:
    ``R * (C_in * kh * kw + C_out)`` (+ ``C_out`` bias). A grouped conv (``groups = g``) is factorized per group:
    both convs are grouped, each group gets rank ``R`` (``g R`` channels in between), parameters
    ``g R (C_in kh kw + C_out) / g``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias, groups: the dense
            conv's geometry.
        rank: the SVD rank ``R`` (of every group).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDConv2d
        >>> dense = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> layer = SVDConv2d.from_dense(dense, rank=16)
        >>> x = torch.randn(2, 8, 10, 10)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4)
        True
    """

    method = "svd"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] | list[int],
        rank: int,
        stride: int | tuple[int, int] | list[int] = 1,
        padding: int | tuple[int, int] | list[int] | str = 0,
        dilation: int | tuple[int, int] | list[int] = 1,
        padding_mode: str = "zeros",
        bias: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self._set_conv_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias, groups
        )
        self.first = nn.Conv2d(
            self.in_channels,
            int(rank) * self.groups,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            groups=self.groups,
            bias=False,
        )
        self.second = nn.Conv2d(int(rank) * self.groups, self.out_channels, 1, groups=self.groups, bias=self.has_bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, rank: int) -> SVDConv2d:
        """Factorize ``layer`` at SVD rank ``rank`` (``1 <= rank <= min(C_out, C_in * kh * kw)`` per group)."""
        weight = layer.weight.detach().float()
        groups = layer.groups
        check_ranks("SVDConv2d", (rank,), (min(weight.shape[0] // groups, weight[0].numel()),))
        module = cls(rank=rank, **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        lefts, rights = [], []
        for block in group_blocks(weight, groups):
            left, right, _ = truncated_svd(block.reshape(block.shape[0], -1), rank)
            lefts.append(left)
            rights.append(right.reshape(rank, *block.shape[1:]))
        with torch.no_grad():
            module.first.weight.copy_(torch.cat(rights))
            module.second.weight.copy_(torch.cat(lefts)[:, :, None, None])
            if layer.bias is not None:
                module.second.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_channels // self.groups,)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {**self._conv_kwargs(), "rank": self.ranks[0]}

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        blocks = []
        for first, second in zip(
            group_blocks(self.first.weight, self.groups), group_blocks(self.second.weight, self.groups), strict=True
        ):
            blocks.append((second.flatten(1) @ first.flatten(1)).reshape(second.shape[0], *first.shape[1:]))
        return torch.cat(blocks)

    def dense_bias(self) -> Tensor | None:
        return self.second.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()


class CPLinear(SVDLinear):
    """CP of an ``nn.Linear`` weight: for a matrix the rank-``R`` CP is the truncated SVD, so this is
    :class:`SVDLinear` (``in -> R -> out``) recorded as method ``"cp"``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import CPConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Linear(32, 16), CPConfig(rank=4))
        >>> type(layer).__name__, layer.method, layer.ranks
        ('CPLinear', 'cp', (4,))
    """

    method = "cp"
