"""Tucker-2 conv: ``1x1`` (C_in -> R_in) -> ``k x k`` core (R_in -> R_out) -> ``1x1`` (R_out -> C_out).

:class:`TuckerLinear` is the 2-D case: ``in -> R_in -> R_out -> out``, three Linears.
"""

from __future__ import annotations

from typing import Any

import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import hosvd_two_modes
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


def tucker2(kernel: Tensor, rank_out: int, rank_in: int, n_iter_max: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 ``kernel ~= core x_0 u_out x_1 u_in`` by truncated HOSVD, refined by HOOI if ``n_iter_max > 0``.

    The HOSVD uses Gram-matrix eigendecompositions (fast on wide unfoldings); HOOI runs TensorLy's
    ``partial_tucker`` under ``tl.backend_context("pytorch")`` (the global backend is never changed).
    """
    work = kernel.detach().float()
    if n_iter_max <= 0:
        return hosvd_two_modes(work, rank_out, rank_in)
    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(
            work, rank=[rank_out, rank_in], modes=[0, 1], n_iter_max=n_iter_max, init="svd"
        )
    return core, u_out, u_in


class TuckerConv2d(_BiasOnAccess, FactorizedLayer, _ConvShape):
    """Tucker-2 factorized conv; stride, padding and dilation live on the ``k x k`` core.

    ``ranks`` is ``(R_out, R_in)``. Parameters: ``C_in R_in + R_in R_out kh kw + R_out C_out`` (+ bias). A grouped
    conv is factorized per group (the three convs are grouped; ``ranks`` are per group).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias, groups: the dense
            conv's geometry.
        rank: ``(R_out, R_in)``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TuckerConv2d
        >>> dense = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        >>> layer = TuckerConv2d.from_dense(dense, rank=(16, 8))
        >>> x = torch.randn(2, 8, 10, 10)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4)
        True
    """

    method = "tucker"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] | list[int],
        rank: tuple[int, int] | list[int],
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
        rank_out, rank_in = (int(r) * self.groups for r in rank)
        self.first = nn.Conv2d(self.in_channels, rank_in, 1, groups=self.groups, bias=False)
        self.core = nn.Conv2d(
            rank_in,
            rank_out,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            groups=self.groups,
            bias=False,
        )
        self.last = nn.Conv2d(rank_out, self.out_channels, 1, groups=self.groups, bias=self.has_bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, rank: tuple[int, int], n_iter_max: int = 0) -> TuckerConv2d:
        """Factorize ``layer`` with Tucker-2 ranks ``(R_out, R_in)`` (per group for a grouped conv)."""
        rank_out, rank_in = (int(r) for r in rank)
        groups = layer.groups
        check_ranks(
            "TuckerConv2d", (rank_out, rank_in), (layer.out_channels // groups, layer.in_channels // groups)
        )
        module = cls(rank=(rank_out, rank_in), **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        firsts, cores, lasts = [], [], []
        for block in group_blocks(layer.weight, groups):
            core, u_out, u_in = tucker2(block, rank_out, rank_in, n_iter_max)
            firsts.append(u_in.T[:, :, None, None])
            cores.append(core)
            lasts.append(u_out[:, :, None, None])
        with torch.no_grad():
            module.first.weight.copy_(torch.cat(firsts))
            module.core.weight.copy_(torch.cat(cores))
            module.last.weight.copy_(torch.cat(lasts))
            if layer.bias is not None:
                module.last.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.core.out_channels // self.groups, self.core.in_channels // self.groups)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {**self._conv_kwargs(), "rank": list(self.ranks)}

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> Tensor:
        blocks = []
        for first, core, last in zip(
            group_blocks(self.first.weight, self.groups),
            group_blocks(self.core.weight, self.groups),
            group_blocks(self.last.weight, self.groups),
            strict=True,
        ):
            # first: (R_in, C_in / g), last: (C_out / g, R_out)
            blocks.append(torch.einsum("oa,abhw,bi->oihw", last.flatten(1), core, first.flatten(1)))
        return torch.cat(blocks)

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()


class TuckerLinear(_BiasOnAccess, FactorizedLayer, _LinearShape):
    """Tucker-2 of an ``nn.Linear`` weight: ``first: in -> R_in``, ``core: R_in -> R_out``, ``last: R_out -> out``.

    The 2-D case of :class:`TuckerConv2d` (a ``1 x 1`` kernel), built by the same HOSVD / HOOI. ``ranks`` is
    ``(R_out, R_in)``. Parameters: ``in R_in + R_in R_out + R_out out`` (+ bias). For a matrix the best Tucker-2
    has ``R_out = R_in`` and a diagonal core (the truncated SVD), which is what float ranks choose.

    Args:
        in_features: input features of the dense layer.
        out_features: output features of the dense layer.
        rank: ``(R_out, R_in)``.
        bias: whether the layer has a bias.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TuckerLinear
        >>> dense = torch.nn.Linear(24, 16)
        >>> layer = TuckerLinear.from_dense(dense, rank=(16, 16))
        >>> x = torch.randn(3, 24)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4), layer.ranks
        (True, (16, 16))
    """

    method = "tucker"

    def __init__(
        self, in_features: int, out_features: int, rank: tuple[int, int] | list[int], bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.has_bias = int(in_features), int(out_features), bool(bias)
        rank_out, rank_in = (int(r) for r in rank)
        self.first = nn.Linear(self.in_features, rank_in, bias=False)
        self.core = nn.Linear(rank_in, rank_out, bias=False)
        self.last = nn.Linear(rank_out, self.out_features, bias=self.has_bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, rank: tuple[int, int], n_iter_max: int = 0) -> TuckerLinear:
        """Factorize ``layer`` with ranks ``(R_out, R_in)``, ``R_out <= out_features``, ``R_in <= in_features``."""
        rank_out, rank_in = (int(r) for r in rank)
        check_ranks("TuckerLinear", (rank_out, rank_in), (layer.out_features, layer.in_features))
        module = cls(layer.in_features, layer.out_features, (rank_out, rank_in), bias=layer.bias is not None)
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        core, u_out, u_in = tucker2(layer.weight[:, :, None, None], rank_out, rank_in, n_iter_max)
        with torch.no_grad():
            module.first.weight.copy_(u_in.T)
            module.core.weight.copy_(core[:, :, 0, 0])
            module.last.weight.copy_(u_out)
            if layer.bias is not None:
                module.last.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.core.out_features, self.core.in_features)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": list(self.ranks),
            "bias": self.has_bias,
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> Tensor:
        return self.last.weight @ self.core.weight @ self.first.weight

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Linear:
        return self._dense_linear()
