"""Rank selection without decomposing: rank specs -> concrete ranks, and exact parameter counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from tetra_lightning.decompose._linalg import energy_rank, squared_singular_values, tt_svd, unfold
from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import DecompositionConfig, TTConfig
from tetra_lightning.decompose.tt import (
    auto_modes,
    check_modes,
    tt_bounds_conv,
    tt_bounds_linear,
    tt_conv_dims,
    tt_linear_dims,
)

METHODS = ("svd", "tucker", "cp", "tt")
_LINEAR_METHODS = ("svd", "tt")


@dataclass(frozen=True)
class LayerShape:
    """Geometry of the dense layer behind an ``nn.Linear``, ``nn.Conv2d`` or ``FactorizedLayer``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose.ranks import layer_shape
        >>> shape = layer_shape(torch.nn.Conv2d(8, 16, 3, bias=False))
        >>> shape.kind, shape.dense_params
        ('conv', 1152)
    """

    kind: str  # "linear" | "conv"
    out_size: int
    in_size: int
    kernel_size: tuple[int, int]
    has_bias: bool

    @property
    def dense_params(self) -> int:
        return self.out_size * self.in_size * self.kernel_size[0] * self.kernel_size[1] + (
            self.out_size if self.has_bias else 0
        )


def layer_shape(layer: nn.Module) -> LayerShape:
    """The dense geometry of ``layer``.

    Raises:
        TypeError: for a module that is not ``nn.Linear``, ``nn.Conv2d`` or a ``FactorizedLayer``.
        ValueError: for a grouped conv.
    """
    if isinstance(layer, FactorizedLayer):
        if hasattr(layer, "in_features"):
            return LayerShape("linear", layer.out_features, layer.in_features, (1, 1), layer.has_bias)
        return LayerShape("conv", layer.out_channels, layer.in_channels, layer.kernel_size, layer.has_bias)
    if isinstance(layer, nn.Linear):
        return LayerShape("linear", layer.out_features, layer.in_features, (1, 1), layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(
                f"`layer` is a grouped nn.Conv2d (groups={layer.groups}); only groups=1 can be factorized. "
                "Exclude it with `filter_fn` (compress_ skips it with a warning)."
            )
        return LayerShape(
            "conv", layer.out_channels, layer.in_channels, tuple(layer.kernel_size), layer.bias is not None
        )
    raise TypeError(
        f"`layer` must be an nn.Linear, an nn.Conv2d or a FactorizedLayer, got {type(layer).__name__}. "
        "Only these layers can be decomposed; exclude others with `filter_fn`."
    )


def check_method(shape: LayerShape, method: str) -> None:
    """Raise ``ValueError``/``TypeError`` if ``method`` does not apply to a layer of this kind."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if shape.kind == "linear" and method not in _LINEAR_METHODS:
        raise TypeError(
            f"method {method!r} factorizes nn.Conv2d kernels only; an nn.Linear supports {_LINEAR_METHODS}. "
            "Use SVDConfig or TTConfig for linear layers."
        )


def tt_modes(shape: LayerShape, config: DecompositionConfig | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The TT modes used for ``shape``: from ``TTConfig(in_modes, out_modes)`` or automatic."""
    if isinstance(config, TTConfig) and config.in_modes is not None and config.out_modes is not None:
        check_modes(shape.in_size, shape.out_size, config.in_modes, config.out_modes)
        return tuple(config.in_modes), tuple(config.out_modes)
    return auto_modes(shape.in_size, shape.out_size)


def rank_bounds(shape: LayerShape, method: str, config: DecompositionConfig | None = None) -> tuple[int, ...]:
    """The largest allowed rank of every mode (rank order as in the layer's ``ranks``)."""
    kh, kw = shape.kernel_size
    if method == "svd":
        return (min(shape.out_size, shape.in_size * kh * kw),)
    if method == "tucker":
        return (shape.out_size, shape.in_size)
    if method == "cp":
        dims = (shape.out_size, shape.in_size, kh, kw)
        return (math.prod(dims) // max(dims),)  # generic upper bound of the CP rank
    in_modes, out_modes = tt_modes(shape, config)
    if shape.kind == "linear":
        return tuple(tt_bounds_linear(in_modes, out_modes))
    return tuple(tt_bounds_conv(shape.kernel_size, in_modes, out_modes))


def _param_count(shape: LayerShape, method: str, ranks: Sequence[int], config: DecompositionConfig | None) -> int:
    bias = shape.out_size if shape.has_bias else 0
    kh, kw = shape.kernel_size
    if method == "svd":
        return ranks[0] * (shape.in_size * kh * kw + shape.out_size) + bias
    if method == "tucker":
        rank_out, rank_in = ranks
        return shape.in_size * rank_in + rank_in * rank_out * kh * kw + rank_out * shape.out_size + bias
    if method == "cp":
        return ranks[0] * (shape.in_size + kh + kw + shape.out_size) + bias
    in_modes, out_modes = tt_modes(shape, config)
    if shape.kind == "linear":
        dims, bonds = tt_linear_dims(in_modes, out_modes), [1, *ranks, 1]
    else:
        dims, bonds = tt_conv_dims(shape.kernel_size, in_modes, out_modes), [1, *ranks, 1]
    return sum(bonds[k] * dims[k] * bonds[k + 1] for k in range(len(dims))) + bias


def factorized_param_count(
    layer: nn.Module, method: str, ranks: Sequence[int], config: DecompositionConfig | None = None
) -> int:
    """Exact parameter count (bias included) of ``layer`` factorized by ``method`` at ``ranks``.

    Args:
        layer: ``nn.Linear``, ``nn.Conv2d`` or ``FactorizedLayer`` (its dense geometry is used).
        method: ``"svd"``, ``"tucker"``, ``"cp"`` or ``"tt"``.
        ranks: ranks in the order of the layer's ``ranks`` property.
        config: only read for TT: a ``TTConfig`` with explicit ``in_modes``/``out_modes``.

    Returns:
        The number of parameters of the factorized layer.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import factorized_param_count
        >>> factorized_param_count(torch.nn.Conv2d(64, 128, 3, bias=False), "tucker", (32, 16))
        9728
    """
    shape = layer_shape(layer)
    check_method(shape, method)
    return _param_count(shape, method, [int(r) for r in ranks], config)


def _weight(layer: nn.Module) -> Tensor:
    if isinstance(layer, FactorizedLayer):
        return layer.dense_weight().detach().float()
    return layer.weight.detach().float()


def _current_params(layer: nn.Module) -> int:
    return sum(parameter.numel() for parameter in layer.parameters())


def _fraction_ranks(
    shape: LayerShape, method: str, target: float, bounds: Sequence[int], config: DecompositionConfig
) -> tuple[int, ...]:
    """Ranks whose parameter count is closest to ``target`` (same rank scaling as TensorLy's float ranks)."""

    def count(ranks: Sequence[int]) -> int:
        return _param_count(shape, method, ranks, config)

    if method in ("svd", "cp"):
        per_rank = count([2]) - count([1])
        base = count([1]) - per_rank
        estimate = (target - base) / per_rank
        candidates = {max(1, min(bounds[0], int(math.floor(estimate)) + delta)) for delta in (0, 1)}
        return (min(candidates, key=lambda r: (abs(count([r]) - target), r)),)
    if method == "tucker":
        out_bound, in_bound = bounds
        candidates = set()
        for rank_out in range(1, out_bound + 1):
            candidates.add((rank_out, max(1, min(in_bound, round(rank_out * in_bound / out_bound)))))
        for rank_in in range(1, in_bound + 1):
            candidates.add((max(1, min(out_bound, round(rank_in * out_bound / in_bound))), rank_in))
        return min(candidates, key=lambda ranks: (abs(count(ranks) - target), ranks))
    # TT: one uniform rank capped at every bond's maximum.
    best: tuple[int, ...] = tuple(1 for _ in bounds)
    for uniform in range(1, max(bounds) + 1):
        ranks = tuple(min(uniform, bound) for bound in bounds)
        if abs(count(ranks) - target) < abs(count(best) - target):
            best = ranks
        if count(ranks) > target:
            break
    return best


def _energy_ranks(
    layer: nn.Module, shape: LayerShape, method: str, energy: float, config: DecompositionConfig
) -> tuple[int, ...]:
    weight = _weight(layer)
    if method == "svd":
        return (energy_rank(squared_singular_values(weight.reshape(weight.shape[0], -1)), energy),)
    if method in ("tucker", "cp"):
        rank_out = energy_rank(squared_singular_values(unfold(weight, 0)), energy)
        rank_in = energy_rank(squared_singular_values(unfold(weight, 1)), energy)
        return (rank_out, rank_in) if method == "tucker" else (max(rank_out, rank_in),)
    in_modes, out_modes = tt_modes(shape, config)
    d = len(in_modes)
    if shape.kind == "linear":
        tensor = weight.reshape(*out_modes, *in_modes).permute([a for k in range(d) for a in (d + k, k)])
        tensor = tensor.reshape(tt_linear_dims(in_modes, out_modes))
    else:
        spatial = shape.kernel_size[0] * shape.kernel_size[1]
        tensor = weight.reshape(*out_modes, *in_modes, spatial).permute(
            [2 * d] + [a for k in range(d) for a in (d + k, k)]
        )
        tensor = tensor.reshape(tt_conv_dims(shape.kernel_size, in_modes, out_modes))
    cores = tt_svd(tensor, energy=energy)
    return tuple(int(core.shape[-1]) for core in cores[:-1])


def _rank_error(layer: nn.Module, config: DecompositionConfig, detail: str, fix: str) -> ValueError:
    return ValueError(
        f"`rank`={config.rank!r} is invalid for {type(layer).__name__} with method {config.method!r}: {detail}. {fix}"
    )


def resolve_ranks(layer: nn.Module, config: DecompositionConfig) -> tuple[int, ...]:
    """Concrete ranks of ``layer`` under ``config`` (no decomposition, except for ``energy=`` specs).

    Rules: an int is used on every mode and capped at each mode's size, and must not exceed the largest
    one; a tuple must have one entry per mode, each at most that mode's size; a float ``f`` picks the ranks
    whose factorized parameter count is closest to ``f`` times the parameters of ``layer`` (for a
    ``FactorizedLayer``: its current parameters, so repeated compression compounds); ``energy=`` keeps the
    smallest ranks holding that fraction of the singular-value energy of the relevant unfoldings.

    Args:
        layer: ``nn.Linear``, ``nn.Conv2d`` or ``FactorizedLayer``.
        config: the decomposition config.

    Returns:
        The ranks, in the order of the factorized layer's ``ranks`` property.

    Raises:
        TypeError: unsupported layer, or a method that does not apply to it.
        ValueError: a rank above the full rank, a tuple of the wrong length, a grouped conv.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDConfig, resolve_ranks
        >>> resolve_ranks(torch.nn.Linear(100, 50, bias=False), SVDConfig(rank=0.3))
        (10,)
    """
    if not isinstance(config, DecompositionConfig):
        raise TypeError(
            f"`config` must be a DecompositionConfig (SVDConfig, TuckerConfig, CPConfig, TTConfig), got "
            f"{type(config).__name__}."
        )
    shape = layer_shape(layer)
    check_method(shape, config.method)
    bounds = rank_bounds(shape, config.method, config)
    if config.energy is not None:
        ranks = _energy_ranks(layer, shape, config.method, config.energy, config)
        return tuple(max(1, min(r, bound)) for r, bound in zip(ranks, bounds, strict=True))
    rank: Any = config.rank
    if isinstance(rank, float):
        return _fraction_ranks(shape, config.method, rank * _current_params(layer), bounds, config)
    if isinstance(rank, int):
        if rank > max(bounds):
            raise _rank_error(
                layer, config, f"it is above the full rank {max(bounds)} (mode sizes {bounds})",
                f"Pass an int <= {max(bounds)} or a float fraction such as rank=0.25.",
            )
        return tuple(min(rank, bound) for bound in bounds)
    ranks = tuple(rank)
    if len(ranks) != len(bounds):
        raise _rank_error(
            layer, config, f"{len(ranks)} ranks given but this factorization has {len(bounds)} modes",
            f"Pass a tuple of {len(bounds)} ints (maximum {bounds}) or a single int.",
        )
    too_big = [(r, b) for r, b in zip(ranks, bounds, strict=True) if r > b]
    if too_big:
        raise _rank_error(
            layer, config, f"ranks {ranks} exceed the full ranks {bounds}",
            f"Pass ranks <= {bounds} elementwise.",
        )
    return ranks
