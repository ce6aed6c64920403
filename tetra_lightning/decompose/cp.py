"""CP conv (Lebedev et al. 2015): ``1x1`` -> depthwise ``kh x 1`` -> depthwise ``1 x kw`` -> ``1x1``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import cp_als, cp_to_kernel
from tetra_lightning.decompose.base import (
    FactorizedLayer,
    _ConvShape,
    check_ranks,
    conv_geometry,
    relative_error,
)


class CPConv2d(FactorizedLayer, _ConvShape):
    """CP-factorized conv ``W[o,i,h,w] = sum_r A[o,r] B[i,r] C[h,r] D[w,r]`` as four small convs.

    The vertical depthwise conv carries the height part of stride/padding/dilation, the horizontal one the
    width part. Factor norms are balanced (no separate weight vector). Parameters:
    ``R (C_in + kh + kw + C_out)`` (+ bias).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias: the dense
            conv's geometry (``groups`` must be 1).
        rank: the CP rank ``R``.

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
    ) -> None:
        super().__init__()
        self._set_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias)
        rank = int(rank)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_h: Any
        pad_w: Any
        if isinstance(self.padding, str):
            pad_h = pad_w = self.padding
        else:
            pad_h, pad_w = (self.padding[0], 0), (0, self.padding[1])
        self.first = nn.Conv2d(self.in_channels, rank, 1, bias=False)
        self.vertical = nn.Conv2d(
            rank, rank, (kh, 1), stride=(sh, 1), padding=pad_h, dilation=(dh, 1), groups=rank, bias=False,
            padding_mode=self.padding_mode,
        )
        self.horizontal = nn.Conv2d(
            rank, rank, (1, kw), stride=(1, sw), padding=pad_w, dilation=(1, dw), groups=rank, bias=False,
            padding_mode=self.padding_mode,
        )
        self.last = nn.Conv2d(rank, self.out_channels, 1, bias=self.has_bias)

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
        """Factorize ``layer`` at CP rank ``rank`` with the fast regularised ALS of ``cp_als``."""
        dims = tuple(layer.weight.shape)
        check_ranks("CPConv2d", (rank,), (max(1, layer.weight.numel() // max(dims)),))
        module = cls(rank=rank, **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        result = cp_als(layer.weight, int(rank), n_iter_max=n_iter_max, l2_reg=l2_reg, tol=tol, init=init)
        a_out, b_in, c_h, d_w = result.factors
        with torch.no_grad():
            module.first.weight.copy_(b_in.T[:, :, None, None])
            module.vertical.weight.copy_(c_h.T[:, None, :, None])
            module.horizontal.weight.copy_(d_w.T[:, None, None, :])
            module.last.weight.copy_(a_out[:, :, None, None])
            if layer.bias is not None:
                module.last.bias.copy_(layer.bias)
        if layer.weight.dtype == torch.float32:
            module.rel_error = result.rel_error  # computed from the same float32 factors
        else:
            module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_channels,)

    def _spec_kwargs(self) -> dict[str, Any]:
        return {**self._conv_kwargs(), "rank": self.ranks[0]}

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def factors(self) -> list[Tensor]:
        """CP factors ``[A_out (C_out, R), B_in (C_in, R), C_h (kh, R), D_w (kw, R)]`` read from the convs."""
        return [
            self.last.weight.flatten(1),
            self.first.weight.flatten(1).T,
            self.vertical.weight.reshape(self.ranks[0], -1).T,
            self.horizontal.weight.reshape(self.ranks[0], -1).T,
        ]

    def dense_weight(self) -> Tensor:
        return cp_to_kernel(self.factors())

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()
