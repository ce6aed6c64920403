"""Rank selection without decomposing: rank specs -> concrete ranks, and exact parameter counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import DecompositionConfig
from tetra_lightning.decompose.methods import LayerShape, MethodSpec, factorization, layer_shape, tt_modes

__all__ = [
    "METHODS",
    "LayerShape",
    "check_method",
    "factorized_param_count",
    "layer_shape",
    "rank_bounds",
    "resolve_ranks",
    "tt_modes",
]

#: The method names, in the order of the factorization table.
METHODS = ("svd", "tucker", "cp", "tt")


def check_method(shape: LayerShape, method: MethodSpec) -> None:
    """Raise ``ValueError``/``TypeError`` if ``method`` does not apply to a layer of this kind."""
    factorization(method).check_applies(shape)


def rank_bounds(
    shape: LayerShape, method: MethodSpec, config: DecompositionConfig | None = None
) -> tuple[int, ...]:
    """The largest allowed rank of every mode (rank order as in the layer's ``ranks``).

    Example:
        >>> import torch
        >>> rank_bounds(layer_shape(torch.nn.Conv2d(16, 32, 3)), "tucker")
        (32, 16)
    """
    return factorization(method).rank_bounds(shape, config)


def factorized_param_count(
    layer: nn.Module, method: MethodSpec, ranks: Sequence[int], config: DecompositionConfig | None = None
) -> int:
    """Exact parameter count (bias included) of ``layer`` factorized by ``method`` at ``ranks``.

    Args:
        layer: ``nn.Linear``, ``nn.Conv2d`` or ``FactorizedLayer`` (its dense geometry is used).
        method: ``"svd"``, ``"tucker"``, ``"cp"`` or ``"tt"`` (or a config, or a config class).
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
    handler = factorization(method)
    handler.check_applies(shape)
    return handler.param_count(shape, [int(r) for r in ranks], config)


def _weight(layer: nn.Module) -> Tensor:
    if isinstance(layer, FactorizedLayer):
        return layer.dense_weight().detach().float()
    return layer.weight.detach().float()


def _current_params(layer: nn.Module) -> int:
    return sum(parameter.numel() for parameter in layer.parameters())


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
    handler = factorization(config)
    handler.check_applies(shape)
    bounds = handler.rank_bounds(shape, config)
    if config.energy is not None:
        ranks = handler.energy_ranks(_weight(layer), shape, config.energy, config)
        return tuple(max(1, min(r, bound)) for r, bound in zip(ranks, bounds, strict=True))
    rank: Any = config.rank
    if isinstance(rank, float):
        return handler.fraction_ranks(shape, rank * _current_params(layer), bounds, config)
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
