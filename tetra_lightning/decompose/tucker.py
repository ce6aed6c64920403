"""Tucker-2 conv: ``1x1`` (C_in -> R_in) -> ``k x k`` core (R_in -> R_out) -> ``1x1`` (R_out -> C_out)."""

from __future__ import annotations

from typing import Any

import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import hosvd_two_modes
from tetra_lightning.decompose.base import (
    FactorizedLayer,
    _ConvShape,
    check_ranks,
    conv_geometry,
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


class TuckerConv2d(FactorizedLayer, _ConvShape):
    """Tucker-2 factorized conv; stride, padding and dilation live on the ``k x k`` core.

    ``ranks`` is ``(R_out, R_in)``. Parameters: ``C_in R_in + R_in R_out kh kw + R_out C_out`` (+ bias).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias: the dense
            conv's geometry (``groups`` must be 1).
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
    ) -> None:
        super().__init__()
        self._set_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias)
        rank_out, rank_in = (int(r) for r in rank)
        self.first = nn.Conv2d(self.in_channels, rank_in, 1, bias=False)
        self.core = nn.Conv2d(
            rank_in,
            rank_out,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            bias=False,
        )
        self.last = nn.Conv2d(rank_out, self.out_channels, 1, bias=self.has_bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, rank: tuple[int, int], n_iter_max: int = 0) -> TuckerConv2d:
        """Factorize ``layer`` with Tucker-2 ranks ``(R_out, R_in)``."""
        rank_out, rank_in = (int(r) for r in rank)
        check_ranks("TuckerConv2d", (rank_out, rank_in), (layer.out_channels, layer.in_channels))
        module = cls(rank=(rank_out, rank_in), **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        core, u_out, u_in = tucker2(layer.weight, rank_out, rank_in, n_iter_max)
        with torch.no_grad():
            module.first.weight.copy_(u_in.T[:, :, None, None])
            module.core.weight.copy_(core)
            module.last.weight.copy_(u_out[:, :, None, None])
            if layer.bias is not None:
                module.last.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.core.out_channels, self.core.in_channels)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {**self._conv_kwargs(), "rank": list(self.ranks)}

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> Tensor:
        u_in = self.first.weight.flatten(1)  # (R_in, C_in)
        u_out = self.last.weight.flatten(1)  # (C_out, R_out)
        return torch.einsum("oa,abhw,bi->oihw", u_out, self.core.weight, u_in)

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()
