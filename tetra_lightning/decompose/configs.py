"""Decomposition configs: one small validated dataclass per method, serialisable to plain dicts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RankSpec = int | tuple[int, ...] | float

_RANK_HINT = "Pass e.g. `rank=0.25` to keep a quarter of the parameters, `rank=16`, or `energy=0.9`."


def _validate_rank(rank: Any) -> RankSpec | None:
    """Validate a rank spec and normalise lists to tuples (so dict round trips compare equal)."""
    if rank is None:
        return None
    if isinstance(rank, bool):
        raise TypeError(f"`rank` must be an int, a tuple of ints or a float in (0, 1], got the bool {rank}. {_RANK_HINT}")
    if isinstance(rank, int):
        if rank <= 0:
            raise ValueError(
                f"`rank` must be a positive int or a float in (0, 1], got {rank}. {_RANK_HINT}"
            )
        return rank
    if isinstance(rank, float):
        if not math.isfinite(rank) or not 0.0 < rank <= 1.0:
            raise ValueError(
                f"`rank` as a float is the fraction of the layer's parameters to keep and must be in (0, 1], "
                f"got {rank}. {_RANK_HINT}"
            )
        return rank
    if isinstance(rank, (tuple, list)):
        if len(rank) == 0 or not all(isinstance(r, int) and not isinstance(r, bool) for r in rank):
            raise TypeError(f"`rank` as a sequence must hold positive ints, got {rank!r}. {_RANK_HINT}")
        if any(r <= 0 for r in rank):
            raise ValueError(f"`rank` entries must be positive ints, got {tuple(rank)}. {_RANK_HINT}")
        return tuple(rank)
    raise TypeError(
        f"`rank` must be an int, a tuple of ints or a float in (0, 1], got {type(rank).__name__} {rank!r}. "
        f"{_RANK_HINT}"
    )


def _validate_modes(name: str, modes: Any) -> tuple[int, ...] | None:
    if modes is None:
        return None
    if (
        not isinstance(modes, (tuple, list))
        or len(modes) < 2
        or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in modes)
    ):
        raise ValueError(
            f"`{name}` must be a tuple of at least two positive ints whose product is the layer's size, "
            f"got {modes!r}. Pass e.g. `{name}=(8, 8, 8)` for 512 features, or leave it None to factorize "
            "automatically."
        )
    return tuple(modes)


@dataclass
class DecompositionConfig:
    """Base of all decomposition configs: a rank spec (``rank=`` or ``energy=``).

    Args:
        rank: int (same rank on every mode, capped at each mode's size), tuple of ints (one per mode, see the
            method's layer for the order), or float in ``(0, 1]``: the fraction of the layer's parameters to
            keep. Default ``0.25`` when neither ``rank`` nor ``energy`` is given.
        energy: alternative to ``rank``: keep the smallest rank whose singular values hold this fraction of
            the squared-singular-value energy, in ``(0, 1]``.

    Raises:
        ValueError: for a non-positive rank, a float rank outside ``(0, 1]``, an energy outside ``(0, 1]`` or
            both ``rank`` and ``energy`` given.
        TypeError: for a rank of the wrong type.

    Example:
        >>> from tetra_lightning.decompose import SVDConfig, config_from_dict
        >>> config = SVDConfig(rank=0.5)
        >>> config.to_dict()
        {'method': 'svd', 'rank': 0.5, 'energy': None}
        >>> config_from_dict(config.to_dict()) == config
        True
    """

    method: ClassVar[str] = ""

    rank: RankSpec | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.energy is not None:
            raise ValueError(
                f"Give either `rank` or `energy`, not both (got rank={self.rank!r}, energy={self.energy!r}). "
                "Drop one of them."
            )
        if self.energy is not None:
            if isinstance(self.energy, bool) or not isinstance(self.energy, (int, float)):
                raise TypeError(f"`energy` must be a float in (0, 1], got {self.energy!r}. Pass e.g. `energy=0.9`.")
            if not math.isfinite(self.energy) or not 0.0 < float(self.energy) <= 1.0:
                raise ValueError(
                    f"`energy` must be a float in (0, 1] (fraction of singular-value energy kept), got "
                    f"{self.energy}. Pass e.g. `energy=0.9`."
                )
            self.energy = float(self.energy)
        else:
            self.rank = _validate_rank(0.25 if self.rank is None else self.rank)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict including ``"method"``; invert with :func:`config_from_dict`."""
        data: dict[str, Any] = {"method": self.method}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass
class SVDConfig(DecompositionConfig):
    """Truncated SVD: ``nn.Linear`` -> two Linears, ``nn.Conv2d`` -> ``k x k`` conv to ``R`` channels + ``1x1``.

    Rank spec: one rank ``R`` (see :class:`DecompositionConfig`).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Linear(64, 32), SVDConfig(rank=8))
        >>> layer.ranks
        (8,)
    """

    method: ClassVar[str] = "svd"


@dataclass
class TuckerConfig(DecompositionConfig):
    """Tucker-2 of a conv kernel: ``1x1`` -> ``k x k`` core -> ``1x1`` (``nn.Conv2d`` only).

    Rank spec: ``(R_out, R_in)``; an int is used on both channel modes (capped at each); a float fraction
    scales both proportionally to the channel counts.

    Args:
        rank: see :class:`DecompositionConfig`.
        energy: see :class:`DecompositionConfig` (applied to each mode's unfolding).
        n_iter_max: HOOI iterations after the HOSVD (``0``: plain truncated HOSVD, the fastest; ``> 0``:
            TensorLy ``partial_tucker`` with the pytorch backend).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TuckerConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Conv2d(16, 32, 3), TuckerConfig(rank=(8, 4)))
        >>> layer.ranks
        (8, 4)
    """

    method: ClassVar[str] = "tucker"

    n_iter_max: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_iter_max, bool) or not isinstance(self.n_iter_max, int) or self.n_iter_max < 0:
            raise ValueError(
                f"`n_iter_max` must be an int >= 0 (HOOI iterations), got {self.n_iter_max!r}. Pass e.g. 0 or 5."
            )


@dataclass
class CPConfig(DecompositionConfig):
    """CP of a conv kernel: ``1x1`` -> depthwise ``kx1`` -> depthwise ``1xk`` -> ``1x1`` (Lebedev et al.).

    Rank spec: one CP rank ``R``. With ``energy=`` the rank is the larger of the two Tucker-2 energy ranks.

    Args:
        rank: see :class:`DecompositionConfig`.
        energy: see :class:`DecompositionConfig`.
        n_iter_max: ALS sweeps (each costs about two ``C_out x C_in x k^2 x R`` products; the default 5 keeps a
            whole ResNet-18 under 10 s on one CPU core, more sweeps lower the error slowly).
        l2_reg: proximal (Tikhonov) regularisation of each ALS step, relative to the Gram diagonal; it damps
            degenerate, diverging components.
        tol: stop when the relative error changes by less than this fraction between sweeps.
        init: ``"auto"``, ``"taps"`` or ``"svd"`` (see ``cp_als``).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import CPConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Conv2d(16, 32, 3), CPConfig(rank=12))
        >>> layer.ranks
        (12,)
    """

    method: ClassVar[str] = "cp"

    n_iter_max: int = 5
    l2_reg: float = 1e-3
    tol: float = 1e-4
    init: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_iter_max, bool) or not isinstance(self.n_iter_max, int) or self.n_iter_max < 1:
            raise ValueError(f"`n_iter_max` must be an int >= 1, got {self.n_iter_max!r}. Pass e.g. 5.")
        if not isinstance(self.l2_reg, (int, float)) or not 0.0 <= float(self.l2_reg) < 1.0:
            raise ValueError(f"`l2_reg` must be a float in [0, 1), got {self.l2_reg!r}. Pass e.g. 1e-3.")
        if not isinstance(self.tol, (int, float)) or float(self.tol) < 0.0:
            raise ValueError(f"`tol` must be a float >= 0, got {self.tol!r}. Pass e.g. 1e-4.")
        if self.init not in ("auto", "taps", "svd"):
            raise ValueError(f"`init` must be one of 'auto', 'taps', 'svd', got {self.init!r}.")
        self.l2_reg = float(self.l2_reg)
        self.tol = float(self.tol)


@dataclass
class TTConfig(DecompositionConfig):
    """Tensor train: TT-matrix for ``nn.Linear``, Garipov TT-conv for ``nn.Conv2d``.

    Rank spec: the TT bond ranks. Linear with ``d`` modes: ``d - 1`` ranks; conv with ``d`` channel modes:
    ``d`` ranks, the first between the spatial core and the first channel core. An int is used on every bond
    (capped at each bond's maximum); a float fraction picks one uniform rank.

    Args:
        rank: see :class:`DecompositionConfig`.
        energy: see :class:`DecompositionConfig` (applied to each TT-SVD unfolding).
        in_modes: factorization of the input features/channels (product must match), None = automatic.
        out_modes: factorization of the output features/channels, same length as ``in_modes``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import TTConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Linear(64, 64), TTConfig(rank=4, in_modes=(8, 8), out_modes=(8, 8)))
        >>> layer.ranks
        (4,)
    """

    method: ClassVar[str] = "tt"

    in_modes: tuple[int, ...] | None = field(default=None)
    out_modes: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_modes = _validate_modes("in_modes", self.in_modes)
        self.out_modes = _validate_modes("out_modes", self.out_modes)
        if (self.in_modes is None) != (self.out_modes is None) or (
            self.in_modes is not None and self.out_modes is not None and len(self.in_modes) != len(self.out_modes)
        ):
            raise ValueError(
                f"`in_modes` and `out_modes` must be given together and have the same length, got "
                f"in_modes={self.in_modes}, out_modes={self.out_modes}. Pass e.g. in_modes=(8, 8), out_modes=(4, 4)."
            )


CONFIG_CLASSES: dict[str, type[DecompositionConfig]] = {
    cls.method: cls for cls in (SVDConfig, TuckerConfig, CPConfig, TTConfig)
}


def config_from_dict(data: Mapping[str, Any]) -> DecompositionConfig:
    """Build a config from the dict written by :meth:`DecompositionConfig.to_dict`.

    Args:
        data: mapping with ``"method"`` in ``{"svd", "cp", "tucker", "tt"}`` and the config's fields.

    Returns:
        The config instance.

    Raises:
        ValueError: for a missing or unknown method, or an unknown field.

    Example:
        >>> from tetra_lightning.decompose import config_from_dict
        >>> config_from_dict({"method": "tucker", "rank": [8, 4]})
        TuckerConfig(rank=(8, 4), energy=None, n_iter_max=0)
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"`data` must be a mapping as written by `config.to_dict()`, got {type(data).__name__}.")
    fields = dict(data)
    method = fields.pop("method", None)
    if method not in CONFIG_CLASSES:
        raise ValueError(
            f"Unknown decomposition method {method!r} in `data['method']`; allowed: {sorted(CONFIG_CLASSES)}. "
            "Pass e.g. {'method': 'svd', 'rank': 0.25}."
        )
    cls = CONFIG_CLASSES[method]
    allowed = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown field(s) {unknown} for method {method!r}; allowed: {sorted(allowed)}. Remove them."
        )
    for key in ("rank", "in_modes", "out_modes"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**fields)
