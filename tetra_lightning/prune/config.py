"""``PruneConfig``: what :func:`~tetra_lightning.prune.prune_` removes, one validated, serialisable dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IMPORTANCES", "PruneConfig", "check_prune_arguments"]

#: Channel-importance criteria accepted by :func:`~tetra_lightning.prune.prune_`.
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"`{name}` must be a float in (0, 1), got {type(value).__name__} {value!r}.")
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"`{name}` must be in (0, 1) (the fraction of channels removed), got {value}. "
            f"Pass e.g. {name}=0.5 to remove half of the channels of every prunable layer."
        )
    return float(value)


@dataclass(frozen=True)
class PruneConfig:
    """How :func:`~tetra_lightning.prune.prune_` ranks and removes channels (shared with ``PruningCallback``).

    Args:
        pruning_ratio: fraction of channels removed from each group (uniform) or in total (``global_pruning``),
            in (0, 1). Ignored when ``target_params_ratio`` is given.
        importance: ``"l1"``, ``"l2"`` (weight magnitude), ``"bn_scale"`` (|gamma| of the BatchNorm) or
            ``"taylor"`` (|weight * grad|, needs gradients).
        global_pruning: rank channels across all layers instead of per layer.
        ignored_layers: names of the modules whose output channels are never pruned.
        round_to: keep channel counts multiples of this number (e.g. 8, for fast kernels).
        target_params_ratio: dense params / pruned params to reach, > 1; the channel ratio is then found by
            bisection.
        max_pruning_ratio: no layer loses more than this fraction of its channels, in (0, 1].
        keep_outputs: keep the output channels of the layers that produce the model's output.

    Raises:
        ValueError: for a ratio outside its range, an unknown ``importance``, ``round_to < 1`` or
            ``target_params_ratio <= 1``.
        TypeError: for arguments of the wrong type.

    Example:
        >>> config = PruneConfig(pruning_ratio=0.3, ignored_layers=["fc"])
        >>> config.to_dict()["ignored_layers"], PruneConfig.from_dict(config.to_dict()) == config
        (['fc'], True)
    """

    pruning_ratio: float = 0.5
    importance: str = "l1"
    global_pruning: bool = False
    ignored_layers: tuple[str, ...] = ()
    round_to: int | None = None
    target_params_ratio: float | None = None
    max_pruning_ratio: float = 0.9
    keep_outputs: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pruning_ratio", _check_ratio("pruning_ratio", self.pruning_ratio))
        if self.importance not in IMPORTANCES:
            raise ValueError(
                f"`importance` must be one of {', '.join(map(repr, IMPORTANCES))}, got {self.importance!r}. "
                "Pass e.g. importance='l1' to rank channels by the L1 norm of their weights."
            )
        round_to = self.round_to
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"`round_to` must be None or an int >= 1, got {round_to!r}. Pass e.g. round_to=8.")
        target = self.target_params_ratio
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, (int, float)):
                raise TypeError(f"`target_params_ratio` must be a number > 1, got {target!r}.")
            if not math.isfinite(target) or target <= 1:
                raise ValueError(
                    f"`target_params_ratio` must be > 1 (dense params / pruned params), got {target}. "
                    "Pass e.g. target_params_ratio=4.5."
                )
            object.__setattr__(self, "target_params_ratio", float(target))
        ceiling = self.max_pruning_ratio
        if isinstance(ceiling, bool) or not (isinstance(ceiling, (int, float)) and 0.0 < ceiling <= 1.0):
            raise ValueError(f"`max_pruning_ratio` must be in (0, 1], got {ceiling!r}. Pass e.g. 0.9.")
        object.__setattr__(self, "max_pruning_ratio", float(ceiling))
        ignored = self.ignored_layers
        if isinstance(ignored, str) or not all(isinstance(name, str) for name in ignored):
            raise TypeError(
                f"`ignored_layers` must be a sequence of module names, got {ignored!r}. Pass e.g. "
                "ignored_layers=['fc'] (prune_ also takes the modules themselves and turns them into names)."
            )
        object.__setattr__(self, "ignored_layers", tuple(ignored))
        for name in ("global_pruning", "keep_outputs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with some fields changed (validated again).

        Example:
            >>> PruneConfig().replace(pruning_ratio=0.25).pruning_ratio
            0.25
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict of every field; invert with :meth:`from_dict`."""
        data = dataclasses.asdict(self)
        data["ignored_layers"] = list(self.ignored_layers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        """The config written by :meth:`to_dict`.

        Raises:
            ValueError: for a key that is not a field.

        Example:
            >>> PruneConfig.from_dict({"pruning_ratio": 0.2}).pruning_ratio
            0.2
        """
        allowed = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"Unknown PruneConfig field(s) {unknown}; allowed: {sorted(allowed)}. Remove them.")
        return cls(**dict(data))


def check_prune_arguments(
    pruning_ratio: float,
    importance: str,
    round_to: int | None = None,
    target_params_ratio: float | None = None,
) -> None:
    """Validates pruning arguments the way :class:`PruneConfig` does (kept for code written before it).

    Raises:
        ValueError: for a ratio outside (0, 1), an unknown importance, ``round_to < 1`` or
            ``target_params_ratio <= 1``.
        TypeError: for arguments of the wrong type.

    Example:
        >>> check_prune_arguments(0.5, "l1")
        >>> check_prune_arguments(1.5, "l1")
        Traceback (most recent call last):
        ...
        ValueError: `pruning_ratio` must be in (0, 1) (the fraction of channels removed), got 1.5. ...
    """
    PruneConfig(
        pruning_ratio=pruning_ratio, importance=importance, round_to=round_to, target_params_ratio=target_params_ratio
    )
