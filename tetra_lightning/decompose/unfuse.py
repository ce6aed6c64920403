"""Splitting fused modules (``nn.MultiheadAttention``, ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) into callable layers.

The fused modules keep several weight matrices in flat parameters that a fused kernel reads, so none of them can be
factorized in place. :func:`unfuse_` replaces each by the equivalent module built from ``nn.Linear`` layers
(:class:`~tetra_lightning.decompose.attention.FactorizedMultiheadAttention`,
:class:`~tetra_lightning.decompose.recurrent.FactorizedRNN`): the model computes the same function, and every
projection or gate map is then an ordinary candidate of :func:`~tetra_lightning.decompose.compress_` and of the
rank allocation. Each split is a history entry of its own kind (``"attention"``, ``"recurrent"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from tetra_lightning.decompose.attention import ATTENTION_KIND, attention_unsupported, split_attention
from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.recurrent import RECURRENT_KIND, recurrent_unsupported, split_recurrent

__all__ = ["FUSED_MODULES", "unfuse_"]

FilterFn = Callable[[nn.Module, str], bool]

#: The fused module types :func:`unfuse_` splits.
FUSED_MODULES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.RNNBase)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unfuse_(
    model: nn.Module, filter_fn: FilterFn | None = None, names: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Splits every fused attention / recurrent module of ``model`` into callable ``nn.Linear`` layers, in place.

    The result computes the same function (up to float rounding); the parameter count is unchanged.

    Args:
        model: the model, modified in place.
        filter_fn: ``filter_fn(module, fqn) -> bool`` deciding which fused modules are split.
        names: only split these modules (fully qualified names).

    Returns:
        History entries ``{"kind": "attention" | "recurrent", "name", "spec", "params"}`` (replayed by
        :func:`~tetra_lightning.checkpoint.replay_history`), and ``{"kind", "name", "skipped": reason}`` for the
        modules that stay fused (``add_bias_kv``, ``proj_size``).

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 8), nn.LSTM(8, 8))
        >>> [(entry["kind"], entry["name"]) for entry in unfuse_(model)]
        [('recurrent', '1')]
        >>> type(model[1]).__name__
        'FactorizedRNN'
    """
    wanted = set(names) if names is not None else None
    entries: list[dict[str, Any]] = []
    factorized: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in factorized):
            continue
        if isinstance(module, FactorizedLayer):
            factorized.append(name)
            continue
        if not isinstance(module, FUSED_MODULES) or (wanted is not None and name not in wanted):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        if isinstance(module, nn.MultiheadAttention):
            kind, reason, split = ATTENTION_KIND, attention_unsupported(module), split_attention
        else:
            kind, reason, split = RECURRENT_KIND, recurrent_unsupported(module), split_recurrent
        if reason is not None:
            entries.append({"kind": kind, "name": name, "skipped": reason, "params_before": _count(module)})
            continue
        new = split(module)  # type: ignore[operator]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        entries.append({"kind": kind, "name": name, "spec": new.spec(), "params": _count(new)})
    return entries
