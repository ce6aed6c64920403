"""Tensor-train layers: TT-matrix ``nn.Linear`` (Novikov et al.) and TT-conv ``nn.Conv2d`` (Garipov et al.)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose._linalg import tt_rank_bounds, tt_svd, tt_to_tensor
from tetra_lightning.decompose.base import (
    FactorizedLayer,
    _ConvShape,
    _LinearShape,
    check_ranks,
    conv_geometry,
    relative_error,
)

#: Bond ranks of a TT layer built from shapes: one int for every bond, or one int per bond.
RankArg = int | Sequence[int]


def _prime_factors(number: int) -> list[int]:
    factors, divisor = [], 2
    while divisor * divisor <= number:
        while number % divisor == 0:
            factors.append(divisor)
            number //= divisor
        divisor += 1
    if number > 1:
        factors.append(number)
    return factors


def factorize(number: int, n_modes: int) -> tuple[int, ...]:
    """Split ``number`` into ``n_modes`` factors as balanced as possible, largest first (1s pad primes).

    Example:
        >>> from tetra_lightning.decompose.tt import factorize
        >>> factorize(512, 3), factorize(64, 2), factorize(10, 3)
        ((8, 8, 8), (8, 8), (5, 2, 1))
    """
    buckets = [1] * n_modes
    for prime in sorted(_prime_factors(number), reverse=True):
        smallest = min(range(n_modes), key=lambda index: buckets[index])
        buckets[smallest] *= prime
    return tuple(sorted(buckets, reverse=True))


def auto_modes(in_size: int, out_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Automatic TT modes: ``d = max(2, ceil(log_8(max(in, out))))`` balanced factors of each size."""
    n_modes = max(2, math.ceil(math.log(max(in_size, out_size, 2)) / math.log(8) - 1e-9))
    return factorize(in_size, n_modes), factorize(out_size, n_modes)


def check_modes(in_size: int, out_size: int, in_modes: Sequence[int], out_modes: Sequence[int]) -> None:
    """Raise ``ValueError`` unless the modes multiply to the layer's sizes."""
    if math.prod(in_modes) != in_size or math.prod(out_modes) != out_size or len(in_modes) != len(out_modes):
        raise ValueError(
            f"TTConfig(in_modes={tuple(in_modes)}, out_modes={tuple(out_modes)}) does not fit a layer with "
            f"{in_size} inputs and {out_size} outputs: the products must equal the sizes and the lengths must "
            f"match. Pass e.g. in_modes={factorize(in_size, len(in_modes))}, "
            f"out_modes={factorize(out_size, len(in_modes))}, or leave both None to factorize automatically."
        )


def tt_linear_dims(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Mode sizes ``(m_k n_k)`` of the TT-matrix tensor."""
    return [m * n for m, n in zip(in_modes, out_modes, strict=True)]


def tt_conv_dims(kernel_size: Sequence[int], in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Mode sizes ``(kh kw, i_1 o_1, ..., i_d o_d)`` of the TT-conv tensor."""
    return [kernel_size[0] * kernel_size[1], *tt_linear_dims(in_modes, out_modes)]


def _channel_cores(cores: Sequence[Tensor], in_modes: Sequence[int], out_modes: Sequence[int]) -> list[Tensor]:
    return [
        core.reshape(core.shape[0], m, n, core.shape[-1])
        for core, m, n in zip(cores, in_modes, out_modes, strict=True)
    ]


def _contract(t: Tensor, cores: Sequence[nn.Parameter], in_modes: Sequence[int]) -> Tensor:
    """Contract ``t`` of shape ``(B, i_1, I_rest, 1, r_0, P)`` with the channel cores -> ``(B, O, P)``."""
    batch, positions = t.shape[0], t.shape[-1]
    for index, core in enumerate(cores):
        t = torch.einsum("biIOrp,rios->bIOosp", t, core)
        rest, outputs = t.shape[1], t.shape[2] * t.shape[3]
        if index + 1 < len(cores):
            following = in_modes[index + 1]
            t = t.reshape(batch, following, rest // following, outputs, t.shape[4], positions)
        else:
            t = t.reshape(batch, outputs, positions)
    return t


class TTLinear(FactorizedLayer, _LinearShape):
    """TT-matrix linear layer: ``W[(o_1..o_d), (i_1..i_d)] = G_1[i_1, o_1] ... G_d[i_d, o_d]``.

    The input is reshaped to ``(B, i_1, ..., i_d)`` and contracted core by core with ``einsum``; the dense
    matrix is never formed in ``forward``. ``ranks`` are the ``d - 1`` bond ranks. Parameters:
    ``sum_k r_{k-1} i_k o_k r_k`` (``r_0 = r_d = 1``) + bias.

    Args:
        in_features: input features (``= prod(in_modes)``).
        out_features: output features (``= prod(out_modes)``).
        in_modes: factorization of ``in_features``.
        out_modes: factorization of ``out_features`` (same length).
        rank: the ``d - 1`` bond ranks.
        bias: whether the layer has a bias.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TTLinear
        >>> dense = torch.nn.Linear(64, 32)
        >>> layer = TTLinear.from_dense(dense, rank=(32,), in_modes=(8, 8), out_modes=(8, 4))
        >>> x = torch.randn(3, 64)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4)
        True
    """

    method = "tt"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: Sequence[int],
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.has_bias = int(in_features), int(out_features), bool(bias)
        self.in_modes, self.out_modes = tuple(int(m) for m in in_modes), tuple(int(m) for m in out_modes)
        check_modes(self.in_features, self.out_features, self.in_modes, self.out_modes)
        bonds = [1, *(int(r) for r in rank), 1]
        if len(bonds) != len(self.in_modes) + 1:
            raise ValueError(
                f"`rank` of a TTLinear with {len(self.in_modes)} modes needs {len(self.in_modes) - 1} bond ranks, "
                f"got {tuple(rank)}."
            )
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(bonds[k], m, n, bonds[k + 1]) / math.sqrt(bonds[k] * m))
            for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes, strict=True))
        )
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if self.has_bias else None

    @classmethod
    def from_dense(
        cls,
        layer: nn.Linear,
        rank: Sequence[int],
        in_modes: Sequence[int],
        out_modes: Sequence[int],
    ) -> TTLinear:
        """TT-SVD of ``layer.weight`` viewed as a TT-matrix with the given modes and bond ranks."""
        check_modes(layer.in_features, layer.out_features, in_modes, out_modes)
        check_ranks("TTLinear", rank, tt_bounds_linear(in_modes, out_modes))
        module = cls(layer.in_features, layer.out_features, in_modes, out_modes, rank, bias=layer.bias is not None)
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        d = len(in_modes)
        weight = layer.weight.detach().float().reshape(*out_modes, *in_modes)
        order = [axis for k in range(d) for axis in (d + k, k)]  # (i_1, o_1, i_2, o_2, ...)
        tensor = weight.permute(order).reshape(tt_linear_dims(in_modes, out_modes))
        cores = _channel_cores(tt_svd(tensor, ranks=list(rank)), in_modes, out_modes)
        with torch.no_grad():
            for parameter, core in zip(module.cores, cores, strict=True):
                parameter.copy_(core)
            if layer.bias is not None:
                module.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(core.shape[-1]) for core in self.cores[:-1])

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_modes": list(self.in_modes),
            "out_modes": list(self.out_modes),
            "rank": list(self.ranks),
            "bias": self.has_bias,
        }

    def forward(self, x: Tensor) -> Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        t = flat.reshape(flat.shape[0], self.in_modes[0], -1, 1, 1, 1)
        out = _contract(t, list(self.cores), self.in_modes).reshape(*leading, self.out_features)
        return out + self.bias if self.bias is not None else out

    def dense_weight(self) -> Tensor:
        d = len(self.in_modes)
        merged = [core.reshape(core.shape[0], -1, core.shape[-1]) for core in self.cores]
        tensor = tt_to_tensor(merged).reshape([size for pair in zip(self.in_modes, self.out_modes, strict=True) for size in pair])
        order = [2 * k + 1 for k in range(d)] + [2 * k for k in range(d)]
        return tensor.permute(order).reshape(self.out_features, self.in_features)

    def dense_bias(self) -> Tensor | None:
        return self.bias

    def to_dense(self) -> nn.Linear:
        return self._dense_linear()


class TTConv2d(FactorizedLayer, _ConvShape):
    """Garipov TT-conv: a spatial core then channel cores contracted with the feature map.

    ``W[(o), (i), h, w] = S[(h, w), r_0] G_1[r_0, i_1, o_1, r_1] ... G_d[r_{d-1}, i_d, o_d]``. Forward: one
    small conv applies the ``r_0`` spatial filters to every input channel (stride, padding, dilation and
    padding mode of the dense conv), then ``einsum`` contracts the channel cores; no dense kernel is rebuilt.
    ``ranks`` is ``(r_0, ..., r_{d-1})``. Parameters: ``kh kw r_0 + sum_k r_{k-1} i_k o_k r_k`` (+ bias).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias: the dense
            conv's geometry (``groups`` must be 1).
        in_modes: factorization of ``in_channels``.
        out_modes: factorization of ``out_channels`` (same length ``d``).
        rank: the ``d`` bond ranks.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TTConv2d
        >>> dense = torch.nn.Conv2d(16, 16, 3, padding=1)
        >>> layer = TTConv2d.from_dense(dense, rank=(9, 16), in_modes=(4, 4), out_modes=(4, 4))
        >>> x = torch.randn(2, 16, 8, 8)
        >>> bool((layer(x) - dense(x)).abs().max() < 1e-4)
        True
    """

    method = "tt"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] | list[int],
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: Sequence[int],
        stride: int | tuple[int, int] | list[int] = 1,
        padding: int | tuple[int, int] | list[int] | str = 0,
        dilation: int | tuple[int, int] | list[int] = 1,
        padding_mode: str = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self._set_conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode, bias)
        self.in_modes, self.out_modes = tuple(int(m) for m in in_modes), tuple(int(m) for m in out_modes)
        check_modes(self.in_channels, self.out_channels, self.in_modes, self.out_modes)
        bonds = [*(int(r) for r in rank), 1]
        if len(bonds) != len(self.in_modes) + 1:
            raise ValueError(
                f"`rank` of a TTConv2d with {len(self.in_modes)} channel modes needs {len(self.in_modes)} bond "
                f"ranks, got {tuple(rank)}."
            )
        self.spatial = nn.Conv2d(
            1,
            bonds[0],
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            bias=False,
        )
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(bonds[k], m, n, bonds[k + 1]) / math.sqrt(bonds[k] * m))
            for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes, strict=True))
        )
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if self.has_bias else None

    @classmethod
    def from_dense(
        cls,
        layer: nn.Conv2d,
        rank: Sequence[int],
        in_modes: Sequence[int],
        out_modes: Sequence[int],
    ) -> TTConv2d:
        """TT-SVD of the kernel reshaped to ``(kh kw, i_1 o_1, ..., i_d o_d)`` with the given bond ranks."""
        check_modes(layer.in_channels, layer.out_channels, in_modes, out_modes)
        check_ranks("TTConv2d", rank, tt_bounds_conv(layer.kernel_size, in_modes, out_modes))
        module = cls(in_modes=in_modes, out_modes=out_modes, rank=rank, **conv_geometry(layer))
        module.to(device=layer.weight.device, dtype=layer.weight.dtype)
        d = len(in_modes)
        weight = layer.weight.detach().float()
        spatial_size = weight.shape[2] * weight.shape[3]
        tensor = weight.reshape(*out_modes, *in_modes, spatial_size)
        order = [2 * d] + [axis for k in range(d) for axis in (d + k, k)]  # (hw, i_1, o_1, ...)
        tensor = tensor.permute(order).reshape(tt_conv_dims(module.kernel_size, in_modes, out_modes))
        cores = tt_svd(tensor, ranks=list(rank))
        with torch.no_grad():
            first = cores[0].reshape(spatial_size, -1)  # (kh kw, r_0)
            module.spatial.weight.copy_(first.T.reshape(-1, 1, *module.kernel_size))
            for parameter, core in zip(module.cores, _channel_cores(cores[1:], in_modes, out_modes), strict=True):
                parameter.copy_(core)
            if layer.bias is not None:
                module.bias.copy_(layer.bias)
        module.rel_error = relative_error(module.dense_weight(), layer.weight)
        return module

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.spatial.out_channels, *(int(core.shape[-1]) for core in self.cores[:-1]))

    def _spec_kwargs(self) -> dict[str, Any]:
        return {
            **self._conv_kwargs(),
            "in_modes": list(self.in_modes),
            "out_modes": list(self.out_modes),
            "rank": list(self.ranks),
        }

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        z = self.spatial(x.reshape(batch * channels, 1, height, width))  # (B C, r_0, H', W')
        out_height, out_width = z.shape[-2:]
        t = z.reshape(batch, self.in_modes[0], -1, 1, z.shape[1], out_height * out_width)
        out = _contract(t, list(self.cores), self.in_modes).reshape(batch, self.out_channels, out_height, out_width)
        return out + self.bias[:, None, None] if self.bias is not None else out

    def dense_weight(self) -> Tensor:
        d = len(self.in_modes)
        spatial_size = self.kernel_size[0] * self.kernel_size[1]
        first = self.spatial.weight.reshape(-1, spatial_size).T[None]  # (1, kh kw, r_0)
        merged = [first, *(core.reshape(core.shape[0], -1, core.shape[-1]) for core in self.cores)]
        sizes = [size for pair in zip(self.in_modes, self.out_modes, strict=True) for size in pair]
        tensor = tt_to_tensor(merged).reshape(spatial_size, *sizes)
        order = [2 + 2 * k for k in range(d)] + [1 + 2 * k for k in range(d)] + [0]
        return tensor.permute(order).reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def dense_bias(self) -> Tensor | None:
        return self.bias

    def to_dense(self) -> nn.Conv2d:
        return self._dense_conv()


def tt_bounds_linear(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Maximum bond ranks of a TT-matrix."""
    return tt_rank_bounds(tt_linear_dims(in_modes, out_modes))


def tt_bounds_conv(kernel_size: Sequence[int], in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """Maximum bond ranks of a TT-conv."""
    return tt_rank_bounds(tt_conv_dims(kernel_size, in_modes, out_modes))


def bond_ranks(ranks: RankArg, bounds: Sequence[int], owner: str) -> list[int]:
    """Bond ranks from one int or one int per bond, capped at each bond's maximum ``bounds``.

    Raises:
        TypeError: for ranks that are neither an int nor a sequence of ints.
        ValueError: for the wrong number of ranks or a rank < 1.

    Example:
        >>> bond_ranks(8, [4, 16], "TTLinear")
        [4, 8]
    """
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
        >>> _ = torch.manual_seed(0)
        >>> cores = [torch.empty(1, 512, 8), torch.empty(8, 512, 1)]
        >>> khrulkov_init_(cores, [8], variance=0.5)
        >>> round(float((cores[0][0] @ cores[1][:, :, 0]).var()), 1)
        0.5
    """
    std = (variance / math.prod(int(r) for r in ranks)) ** (1.0 / (2 * len(factors)))
    with torch.no_grad():
        for factor in factors:
            factor.normal_(0.0, std)
