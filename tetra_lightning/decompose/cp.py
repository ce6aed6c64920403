"""CP conv (Lebedev et al. 2015): ``1x1`` -> depthwise ``kh x 1`` -> depthwise ``1 x kw`` -> ``1x1``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import cp_als, cp_to_kernel, truncated_svd
from tetra_lightning.decompose.base import (
    FactorizedLayer,
    _BiasOnAccess,
    _ConvShape,
    check_ranks,
    conv_geometry,
    group_blocks,
    relative_error,
)


class CPConv2d(_BiasOnAccess, FactorizedLayer, _ConvShape):
    """CP-factorized conv ``W[o,i,h,w] = sum_r A[o,r] B[i,r] C[h,r] D[w,r]`` as four small convs.

    The vertical depthwise conv carries the height part of stride/padding/dilation, the horizontal one the
    width part. Factor norms are balanced (no separate weight vector). Parameters:
    ``R (C_in + kh + kw + C_out)`` (+ bias). A grouped conv is factorized per group (rank ``R`` per group, the
    ``1x1`` convs grouped): a depthwise ``3 x 3`` conv at ``R = 1`` keeps 8 of its 9 weights per channel.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias, groups: the dense
            conv's geometry.
        rank: the CP rank ``R`` (of every group).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import CPConv2d
        >>> dense = torch.nn.Conv2d(4, 6, 3, padding=1)
        >>> layer = CPConv2d.from_dense(dense, rank=8)
        >>> layer.ranks, layer.rel_error < 1.0
        ((8,), True)
    """

    method = "cp"

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
        rank = int(rank) * self.groups
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_h: Any
        pad_w: Any
        if isinstance(self.padding, str):
            pad_h = pad_w = self.padding
        else:
            pad_h, pad_w = (self.padding[0], 0), (0, self.padding[1])
        self.first = nn.Conv2d(self.in_channels, rank, 1, groups=self.groups, bias=False)
        self.vertical = nn.Conv2d(
            rank, rank, (kh, 1), stride=(sh, 1), padding=pad_h, dilation=(dh, 1), groups=rank, bias=False,
            padding_mode=self.padding_mode,
        )
        self.horizontal = nn.Conv2d(
            rank, rank, (1, kw), stride=(1, sw), padding=pad_w, dilation=(1, dw), groups=rank, bias=False,
            padding_mode=self.padding_mode,
        )
        self.last = nn.Conv2d(rank, self.out_channels, 1, groups=self.groups, bias=self.has_bias)

    @classmethod
    def from_dense(
        cls,
        layer: nn.Conv2d,
        rank: int,
        n_iter_max: int = 5,
        l2_reg: float = 1e-3,
        tol: float = 1e-4,
        init: str = "auto",
    ) -> CPConv2d:
        """Factorize ``layer`` at CP rank ``rank`` (per group) with the fast regularised ALS of ``cp_als``."""
        groups = layer.groups
        dims = (layer.weight.shape[0] // groups, *layer.weight.shape[1:])
        check_ranks("CPConv2d", (rank,), (max(1, math.prod(dims) // max(dims)),))
        module = cls(rank=rank, **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        if groups > 1 and dims[0] == dims[1] == 1:
            return module._fill_depthwise(layer)
        if tuple(layer.kernel_size) == (1, 1):
            return module._fill_pointwise(layer)
        factors: list[list[Tensor]] = [[], [], [], []]
        results = []
        for block in group_blocks(layer.weight, groups):
            result = cp_als(block, int(rank), n_iter_max=n_iter_max, l2_reg=l2_reg, tol=tol, init=init)
            results.append(result)
            for collected, factor in zip(factors, result.factors, strict=True):
                collected.append(factor)
        # Per group: A_out (C_out / g, R), B_in (C_in / g, R), C_h (kh, R), D_w (kw, R).
        a_out = torch.cat(factors[0])  # (C_out, R): the grouped last conv's weight
        b_in, c_h, d_w = (torch.cat(collected, dim=1) for collected in factors[1:])  # columns in group order
        with torch.no_grad():
            module.first.weight.copy_(b_in.T[:, :, None, None])
            module.vertical.weight.copy_(c_h.T[:, None, :, None])
            module.horizontal.weight.copy_(d_w.T[:, None, None, :])
            module.last.weight.copy_(a_out[:, :, None, None])
            if layer.bias is not None:
                module.last.bias.copy_(layer.bias)
        if layer.weight.dtype == torch.float32 and groups == 1:
            module.rel_error = results[0].rel_error  # computed from the same float32 factors
        else:
            module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    def _fill_depthwise(self, layer: nn.Conv2d) -> CPConv2d:
        """A depthwise kernel ``(1, 1, kh, kw)`` per channel: its CP is the truncated SVD of the ``kh x kw`` matrix,
        computed for all channels in one batched SVD (a per-channel ALS costs minutes on wide models)."""
        rank = self.ranks[0]
        kernels = layer.weight.detach().float()[:, 0]  # (C, kh, kw)
        left, values, right = torch.linalg.svd(kernels, full_matrices=False)
        scale = values[:, :rank].sqrt()
        with torch.no_grad():
            self.first.weight.fill_(1.0)
            self.last.weight.fill_(1.0)
            self.vertical.weight.copy_((left[:, :, :rank] * scale[:, None, :]).transpose(1, 2).reshape(-1, 1, left.shape[1], 1))
            self.horizontal.weight.copy_((right[:, :rank, :] * scale[:, :, None]).reshape(-1, 1, 1, right.shape[2]))
            if layer.bias is not None:
                self.last.bias.copy_(layer.bias)
        self.rel_error = relative_error(self.dense_weight(), layer.weight)
        return self

    def _fill_pointwise(self, layer: nn.Conv2d) -> CPConv2d:
        """A ``1 x 1`` kernel is a matrix per group, whose rank-``R`` CP is its truncated SVD (exact optimum)."""
        rank = self.ranks[0]
        lefts, rights = [], []
        for block in group_blocks(layer.weight.detach().float(), self.groups):
            left, right, _ = truncated_svd(block.flatten(1), rank)
            lefts.append(left)
            rights.append(right)
        with torch.no_grad():
            self.last.weight.copy_(torch.cat(lefts)[:, :, None, None])
            self.first.weight.copy_(torch.cat(rights)[:, :, None, None])
            self.vertical.weight.fill_(1.0)
            self.horizontal.weight.fill_(1.0)
            if layer.bias is not None:
                self.last.bias.copy_(layer.bias)
        self.rel_error = relative_error(self.dense_weight(), layer.weight)
        return self

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_channels // self.groups,)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {**self._conv_kwargs(), "rank": self.ranks[0]}

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def factors(self) -> list[Tensor]:
        """CP factors ``[A_out (C_out, R), B_in (C_in, R), C_h (kh, R), D_w (kw, R)]`` read from the convs.

        For a grouped conv: the factors of the first group (see :meth:`group_factors`).
        """
        return self.group_factors()[0]

    def group_factors(self) -> list[list[Tensor]]:
        """The CP factors of every group, ``[[A_out, B_in, C_h, D_w], ...]`` (one list for ``groups=1``)."""
        rank, found = self.ranks[0], []
        for index, (last, first) in enumerate(
            zip(group_blocks(self.last.weight, self.groups), group_blocks(self.first.weight, self.groups), strict=True)
        ):
            columns = slice(index * rank, (index + 1) * rank)
            found.append(
                [
                    last.flatten(1),
                    first.flatten(1).T,
                    self.vertical.weight[columns].reshape(rank, -1).T,
                    self.horizontal.weight[columns].reshape(rank, -1).T,
                ]
            )
        return found

    def dense_weight(self) -> Tensor:
        return torch.cat([cp_to_kernel(factors) for factors in self.group_factors()])

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()
