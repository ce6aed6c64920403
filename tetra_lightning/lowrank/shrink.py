"""Remove rank components whose scale fell below a threshold, for real: the layers get smaller.

An ``SVDLinear`` / ``SVDConv2d`` of rank ``R`` becomes one of rank ``R' < R`` (fewer channels between its two
parts); a TT layer loses slices of a bond (the two cores sharing it get smaller). The rewrite is recorded as
history entries (``method="shrink"``) with the layer's new :meth:`~FactorizedLayer.spec`, which
:func:`~tetra_lightning.decompose.restore_structure` replays on a fresh model before its weights load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose.base import FactorizedLayer, relative_error
from tetra_lightning.decompose.svd import SVDConv2d, SVDLinear
from tetra_lightning.decompose.tt import TTConv2d
from tetra_lightning.lowrank.priors import component_scales, shrinkable_layers

__all__ = ["kept_components", "layer_ranks", "shrink_", "shrink_layer"]

FilterFn = Callable[[nn.Module, str], bool]


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(
            f"`threshold` must be a float in [0, 1) (component scale relative to the layer's largest), got "
            f"{threshold!r}. Pass e.g. threshold=1e-2."
        )


def kept_components(layer: nn.Module, threshold: float, min_rank: int = 1) -> list[Tensor]:
    """Indices of the components kept at each bond: scale ``> threshold * max scale`` (at least ``min_rank``).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> layer = SVDLinear(4, 4, rank=3)
        >>> with torch.no_grad():
        ...     layer.first.weight[1] = 0.0
        >>> kept_components(layer, 1e-3)[0].tolist()
        [0, 2]
    """
    _check_threshold(threshold)
    kept = []
    with torch.no_grad():
        for scales in component_scales(layer):
            largest = float(scales.max())
            keep = torch.nonzero(scales > threshold * largest).flatten() if largest > 0 else scales.new_zeros(0)
            if keep.numel() < min(min_rank, scales.numel()):
                keep = scales.argsort(descending=True)[: min(min_rank, scales.numel())].sort().values
            kept.append(keep.long())
    return kept


def layer_ranks(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, list[int]]:
    """The ranks of every SVD/TT layer of ``model``: ``{fqn: [r, ...]}``."""
    return {name: [int(r) for r in layer.ranks] for name, layer in shrinkable_layers(model, filter_fn)}


def _slice_svd(layer: SVDLinear | SVDConv2d, keep: Tensor) -> FactorizedLayer:
    spec = dict(layer.spec(), rank=int(keep.numel()))
    new = FactorizedLayer.from_spec(spec)
    new.to(device=layer.first.weight.device, dtype=layer.first.weight.dtype)
    with torch.no_grad():
        new.first.weight.copy_(layer.first.weight[keep])
        new.second.weight.copy_(layer.second.weight[:, keep])
        if layer.second.bias is not None:
            new.second.bias.copy_(layer.second.bias)
    return new


def _slice_tt(layer: FactorizedLayer, kept: list[Tensor]) -> FactorizedLayer:
    spatial = isinstance(layer, TTConv2d)
    new = FactorizedLayer.from_spec(dict(layer.spec(), rank=[int(keep.numel()) for keep in kept]))
    reference = next(layer.parameters())
    new.to(device=reference.device, dtype=reference.dtype)
    cores = list(layer.cores)  # type: ignore[attr-defined]
    # Bond k sits between factor k and factor k + 1; for TT-conv factor 0 is the spatial conv.
    factors: list[Tensor] = [layer.spatial.weight.detach()] if spatial else []  # type: ignore[attr-defined]
    factors += [core.detach() for core in cores]
    for bond, keep in enumerate(kept):
        left, right = factors[bond], factors[bond + 1]
        if spatial and bond == 0:
            factors[bond] = left[keep]  # (r_0, 1, kh, kw)
        else:
            factors[bond] = left.index_select(left.dim() - 1, keep)
        factors[bond + 1] = right.index_select(0, keep)
    with torch.no_grad():
        if spatial:
            new.spatial.weight.copy_(factors[0])  # type: ignore[attr-defined]
            factors = factors[1:]
        for parameter, value in zip(new.cores, factors, strict=True):  # type: ignore[attr-defined]
            parameter.copy_(value)
        for name, parameter in layer.named_parameters():
            if name == "bias":
                new.get_parameter(name).copy_(parameter)
    return new


def shrink_layer(layer: FactorizedLayer, threshold: float, min_rank: int = 1) -> FactorizedLayer | None:
    """A smaller copy of ``layer`` without the components whose scale is ``<= threshold`` times the largest.

    Args:
        layer: an SVD or TT layer (also :class:`~tetra_lightning.lowrank.TTEmbedding`).
        threshold: relative scale in ``[0, 1)``.
        min_rank: components kept at least, per bond.

    Returns:
        The new layer (same device, dtype, training mode and ``requires_grad``), or ``None`` when nothing falls
        below the threshold.

    Raises:
        ValueError: for a threshold outside ``[0, 1)``.
        TypeError: for a layer without rank components.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> layer = SVDLinear.from_dense(torch.nn.Linear(8, 8), rank=8)
        >>> with torch.no_grad():
        ...     layer.first.weight[5:] = 0.0
        >>> shrink_layer(layer, 1e-3).ranks
        (5,)
    """
    kept = kept_components(layer, threshold, min_rank)
    current = [int(r) for r in layer.ranks]
    if all(int(keep.numel()) == rank for keep, rank in zip(kept, current, strict=True)):
        return None
    new = _slice_svd(layer, kept[0]) if isinstance(layer, (SVDLinear, SVDConv2d)) else _slice_tt(layer, kept)
    new.train(layer.training)
    new.requires_grad_(any(parameter.requires_grad for parameter in layer.parameters()))
    with torch.no_grad():
        new.rel_error = relative_error(new.dense_weight(), layer.dense_weight())
    return new


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def shrink_(
    model: nn.Module, threshold: float = 1e-2, filter_fn: FilterFn | None = None, min_rank: int = 1
) -> list[dict[str, Any]]:
    """Shrink every SVD/TT layer of ``model`` in place (see :func:`shrink_layer`).

    Args:
        model: the model, modified in place.
        threshold: relative component scale in ``[0, 1)`` below which a component is removed.
        filter_fn: optional ``(module, fqn) -> bool`` selecting the layers.
        min_rank: components kept at least, per bond (>= 1).

    Returns:
        History entries ``{"name", "method": "shrink", "spec", "ranks", "ranks_before", "params_before",
        "params_after", "rel_error"}`` for the layers that changed; replay with
        :func:`~tetra_lightning.decompose.restore_structure`.

    Raises:
        ValueError: for a bad ``threshold`` or ``min_rank``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> model = torch.nn.Sequential(SVDLinear(8, 8, rank=8))
        >>> with torch.no_grad():
        ...     model[0].second.weight[:, 3:] = 0.0
        >>> [entry["ranks"] for entry in shrink_(model, 1e-3)]
        [[3]]
    """
    _check_threshold(threshold)
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise ValueError(f"`min_rank` must be an int >= 1, got {min_rank!r}. Pass e.g. min_rank=1.")
    history: list[dict[str, Any]] = []
    for name, layer in list(shrinkable_layers(model, filter_fn)):
        if not name:
            continue
        new = shrink_layer(layer, threshold, min_rank)  # type: ignore[arg-type]
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        history.append(
            {
                "name": name,
                "method": "shrink",
                "spec": new.spec(),
                "ranks": list(new.ranks),
                "ranks_before": list(layer.ranks),
                "params_before": _count(layer),
                "params_after": _count(new),
                "rel_error": float(new.rel_error) if math.isfinite(new.rel_error) else 0.0,
            }
        )
    return history
