"""What each decomposition method does, in one table keyed by config class (as torchao keys its handlers).

A :class:`Factorization` knows, for one method, the largest ranks a layer allows, the exact parameter count at
given ranks, which ranks keep a fraction of the parameters or of the singular-value energy, and how to build the
factorized layer. :func:`factorization` finds it from a config, a config class or the user-facing method name
(``"svd"``, ``"tucker"``, ``"cp"``, ``"tt"``), which is mapped to its config class once, here. A new method is a
config class, a layer class and one :class:`Factorization` registered with :func:`register_factorization`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from tetra_lightning.decompose._linalg import energy_rank, squared_singular_values, tt_svd, unfold
from tetra_lightning.decompose.base import FactorizedLayer, group_blocks
from tetra_lightning.decompose.configs import (
    CPConfig,
    DecompositionConfig,
    SVDConfig,
    TTConfig,
    TuckerConfig,
)
from tetra_lightning.decompose.conv1d import FactorizedConv1d, conv1d_as_conv2d
from tetra_lightning.decompose.cp import CPConv2d
from tetra_lightning.decompose.svd import CPLinear, SVDConv2d, SVDLinear
from tetra_lightning.decompose.tt import (
    TTConv2d,
    TTLinear,
    auto_modes,
    check_modes,
    tt_bounds_conv,
    tt_bounds_linear,
    tt_conv_dims,
    tt_linear_dims,
)
from tetra_lightning.decompose.tucker import TuckerConv2d, TuckerLinear

__all__ = [
    "DENSE_LAYERS",
    "Factorization",
    "LayerShape",
    "build_layer",
    "factorization",
    "layer_shape",
    "register_factorization",
    "tt_modes",
]

#: The dense layers a factorization replaces.
DENSE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

MethodSpec = str | DecompositionConfig | type[DecompositionConfig]


@dataclass(frozen=True)
class LayerShape:
    """Geometry of the dense layer behind an ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or ``FactorizedLayer``.

    A ``Conv1d`` of kernel ``k`` has ``kernel_size == (1, k)``. A grouped conv is factorized per group: every
    group is a ``(out_size / groups, in_size / groups, kh, kw)`` kernel.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose.ranks import layer_shape
        >>> shape = layer_shape(torch.nn.Conv2d(8, 16, 3, bias=False))
        >>> shape.kind, shape.dense_params
        ('conv', 1152)
        >>> layer_shape(torch.nn.Conv2d(8, 16, 3, groups=4, bias=False)).dense_params
        288
    """

    kind: str  # "linear" | "conv"
    out_size: int
    in_size: int
    kernel_size: tuple[int, int]
    has_bias: bool
    groups: int = 1

    @property
    def group_out(self) -> int:
        """Output channels of one group."""
        return self.out_size // self.groups

    @property
    def group_in(self) -> int:
        """Input channels of one group."""
        return self.in_size // self.groups

    @property
    def dense_params(self) -> int:
        return self.out_size * self.group_in * self.kernel_size[0] * self.kernel_size[1] + (
            self.out_size if self.has_bias else 0
        )


def layer_shape(layer: nn.Module) -> LayerShape:
    """The dense geometry of ``layer``.

    Raises:
        TypeError: for a module that is not ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or a ``FactorizedLayer``.

    Example:
        >>> layer_shape(nn.Linear(4, 2)).dense_params
        10
        >>> layer_shape(nn.Conv1d(4, 8, 3)).kernel_size
        (1, 3)
    """
    if isinstance(layer, FactorizedLayer):
        if hasattr(layer, "in_features"):
            return LayerShape("linear", layer.out_features, layer.in_features, (1, 1), layer.has_bias)
        return LayerShape(
            "conv", layer.out_channels, layer.in_channels, tuple(layer.kernel_size), layer.has_bias,
            getattr(layer, "groups", 1),
        )
    if isinstance(layer, nn.Linear):
        return LayerShape("linear", layer.out_features, layer.in_features, (1, 1), layer.bias is not None)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        kernel = (1, layer.kernel_size[0]) if isinstance(layer, nn.Conv1d) else tuple(layer.kernel_size)
        return LayerShape(
            "conv", layer.out_channels, layer.in_channels, kernel, layer.bias is not None, layer.groups
        )
    raise TypeError(
        f"`layer` must be an nn.Linear, an nn.Conv2d or a FactorizedLayer, got {type(layer).__name__} (an "
        "nn.Conv1d is accepted too). Only these layers can be decomposed; compress_ converts nn.MultiheadAttention, "
        "nn.LSTM and nn.GRU into such layers first. Exclude others with `filter_fn`."
    )


def _blocks(weight: Tensor, shape: LayerShape) -> list[Tensor]:
    """The per-group 4-D kernels of a dense weight (a Linear's weight is one ``(out, in, 1, 1)`` kernel)."""
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    elif weight.dim() == 3:
        weight = weight[:, :, None, :]
    return group_blocks(weight, shape.groups)


def build_layer(
    layer: nn.Module, ranks: tuple[int, ...], config: DecompositionConfig
) -> FactorizedLayer:
    """The factorized layer of the dense ``layer`` (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) under ``config``.

    An ``nn.Conv1d`` is factorized as the ``(1, k)`` ``nn.Conv2d`` it equals and wrapped in
    :class:`~tetra_lightning.decompose.conv1d.FactorizedConv1d`.

    Example:
        >>> from tetra_lightning.decompose import TuckerConfig
        >>> type(build_layer(nn.Conv1d(8, 8, 3), (4, 4), TuckerConfig(rank=(4, 4)))).__name__
        'FactorizedConv1d'
    """
    handler = factorization(config)
    if isinstance(layer, nn.Conv1d):
        return FactorizedConv1d(handler.build(conv1d_as_conv2d(layer), ranks, config))
    return handler.build(layer, ranks, config)  # type: ignore[arg-type]


def tt_modes(shape: LayerShape, config: DecompositionConfig | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The TT modes used for ``shape``: from ``TTConfig(in_modes, out_modes)`` or automatic.

    Example:
        >>> tt_modes(layer_shape(nn.Linear(64, 64)), None)
        ((8, 8), (8, 8))
    """
    if isinstance(config, TTConfig) and config.in_modes is not None and config.out_modes is not None:
        check_modes(shape.in_size, shape.out_size, config.in_modes, config.out_modes)
        return tuple(config.in_modes), tuple(config.out_modes)
    return auto_modes(shape.in_size, shape.out_size)


class Factorization:
    """The behaviour of one decomposition method; subclasses override what differs from the one-rank default.

    The default describes a method with one rank ``R`` whose parameter count grows linearly in ``R`` (SVD, CP).

    Attributes:
        config_class: the config class this method is registered under.
        factorizes_linear: whether it applies to ``nn.Linear`` (every method applies to ``nn.Conv2d``).
        factorizes_groups: whether it applies to grouped convs (per group).

    Example:
        >>> svd = factorization("svd")
        >>> svd.rank_bounds(layer_shape(nn.Linear(64, 32)), None), svd.param_count(layer_shape(nn.Linear(64, 32)), (8,))
        ((32,), 800)
    """

    config_class: ClassVar[type[DecompositionConfig]] = DecompositionConfig
    factorizes_linear: ClassVar[bool] = False
    factorizes_groups: ClassVar[bool] = True

    @property
    def method(self) -> str:
        """The user-facing name, ``config_class.method``."""
        return self.config_class.method

    def check_applies(self, shape: LayerShape) -> None:
        """Raises ``TypeError`` when the method does not apply to a layer of this kind."""
        if shape.kind == "linear" and not self.factorizes_linear:
            linear = tuple(m for m, item in _BY_METHOD.items() if item.factorizes_linear)
            raise TypeError(
                f"method {self.method!r} factorizes nn.Conv2d kernels only; an nn.Linear supports {linear}. "
                "Use SVDConfig or TTConfig for linear layers."
            )
        if shape.groups > 1 and not self.factorizes_groups:
            grouped = tuple(m for m, item in _BY_METHOD.items() if item.factorizes_groups)
            raise TypeError(
                f"method {self.method!r} has no grouped form (groups={shape.groups}); a grouped conv supports "
                f"{grouped}, factorized per group. Use one of those for this layer."
            )

    def rank_bounds(self, shape: LayerShape, config: DecompositionConfig | None) -> tuple[int, ...]:
        """The largest allowed rank of every mode (rank order as in the layer's ``ranks``)."""
        raise NotImplementedError

    def param_count(
        self, shape: LayerShape, ranks: Sequence[int], config: DecompositionConfig | None = None
    ) -> int:
        """Exact parameter count, bias included, of the factorized layer at ``ranks``."""
        raise NotImplementedError

    def fraction_ranks(
        self, shape: LayerShape, target: float, bounds: Sequence[int], config: DecompositionConfig
    ) -> tuple[int, ...]:
        """Ranks whose parameter count is closest to ``target`` (same rank scaling as TensorLy's float ranks)."""

        def count(rank: int) -> int:
            return self.param_count(shape, [rank], config)

        per_rank = count(2) - count(1)
        base = count(1) - per_rank
        estimate = (target - base) / per_rank
        candidates = {max(1, min(bounds[0], int(math.floor(estimate)) + delta)) for delta in (0, 1)}
        return (min(candidates, key=lambda r: (abs(count(r) - target), r)),)

    def energy_ranks(
        self, weight: Tensor, shape: LayerShape, energy: float, config: DecompositionConfig
    ) -> tuple[int, ...]:
        """The smallest ranks whose singular values hold ``energy`` of the relevant unfoldings' energy."""
        raise NotImplementedError

    def build(
        self, layer: nn.Linear | nn.Conv2d, ranks: tuple[int, ...], config: DecompositionConfig
    ) -> FactorizedLayer:
        """The factorized layer of the dense ``layer`` at ``ranks``."""
        raise NotImplementedError


def _mode_energy_ranks(weight: Tensor, energy: float) -> tuple[int, int]:
    rank_out = energy_rank(squared_singular_values(unfold(weight, 0)), energy)
    rank_in = energy_rank(squared_singular_values(unfold(weight, 1)), energy)
    return rank_out, rank_in


class _SVD(Factorization):
    config_class = SVDConfig
    factorizes_linear = True

    def rank_bounds(self, shape: LayerShape, config: DecompositionConfig | None) -> tuple[int, ...]:
        kh, kw = shape.kernel_size
        return (min(shape.group_out, shape.group_in * kh * kw),)

    def param_count(
        self, shape: LayerShape, ranks: Sequence[int], config: DecompositionConfig | None = None
    ) -> int:
        kh, kw = shape.kernel_size
        per_group = ranks[0] * (shape.group_in * kh * kw + shape.group_out)
        return shape.groups * per_group + (shape.out_size if shape.has_bias else 0)

    def energy_ranks(
        self, weight: Tensor, shape: LayerShape, energy: float, config: DecompositionConfig
    ) -> tuple[int, ...]:
        return (
            max(
                energy_rank(squared_singular_values(block.reshape(block.shape[0], -1)), energy)
                for block in _blocks(weight, shape)
            ),
        )

    def build(
        self, layer: nn.Linear | nn.Conv2d, ranks: tuple[int, ...], config: DecompositionConfig
    ) -> FactorizedLayer:
        if isinstance(layer, nn.Linear):
            return SVDLinear.from_dense(layer, ranks[0])
        return SVDConv2d.from_dense(layer, ranks[0])


class _Tucker(Factorization):
    config_class = TuckerConfig
    factorizes_linear = True

    def rank_bounds(self, shape: LayerShape, config: DecompositionConfig | None) -> tuple[int, ...]:
        return (shape.group_out, shape.group_in)

    def param_count(
        self, shape: LayerShape, ranks: Sequence[int], config: DecompositionConfig | None = None
    ) -> int:
        kh, kw = shape.kernel_size
        rank_out, rank_in = ranks
        bias = shape.out_size if shape.has_bias else 0
        per_group = shape.group_in * rank_in + rank_in * rank_out * kh * kw + rank_out * shape.group_out
        return shape.groups * per_group + bias

    def fraction_ranks(
        self, shape: LayerShape, target: float, bounds: Sequence[int], config: DecompositionConfig
    ) -> tuple[int, ...]:
        out_bound, in_bound = bounds
        if shape.kind == "linear":
            # A matrix's best Tucker-2 has equal ranks (its truncated SVD); unequal ones waste parameters.
            equal = [(r, r) for r in range(1, min(out_bound, in_bound) + 1)]
            return min(equal, key=lambda ranks: (abs(self.param_count(shape, ranks) - target), ranks))
        candidates = set()
        for rank_out in range(1, out_bound + 1):
            candidates.add((rank_out, max(1, min(in_bound, round(rank_out * in_bound / out_bound)))))
        for rank_in in range(1, in_bound + 1):
            candidates.add((max(1, min(out_bound, round(rank_in * out_bound / in_bound))), rank_in))
        return min(candidates, key=lambda ranks: (abs(self.param_count(shape, ranks) - target), ranks))

    def energy_ranks(
        self, weight: Tensor, shape: LayerShape, energy: float, config: DecompositionConfig
    ) -> tuple[int, ...]:
        found = [_mode_energy_ranks(block, energy) for block in _blocks(weight, shape)]
        return (max(r[0] for r in found), max(r[1] for r in found))

    def build(
        self, layer: nn.Linear | nn.Conv2d, ranks: tuple[int, ...], config: DecompositionConfig
    ) -> FactorizedLayer:
        assert isinstance(config, TuckerConfig)
        if isinstance(layer, nn.Linear):
            return TuckerLinear.from_dense(layer, (ranks[0], ranks[1]), n_iter_max=config.n_iter_max)
        return TuckerConv2d.from_dense(layer, (ranks[0], ranks[1]), n_iter_max=config.n_iter_max)


class _CP(Factorization):
    config_class = CPConfig
    factorizes_linear = True

    def rank_bounds(self, shape: LayerShape, config: DecompositionConfig | None) -> tuple[int, ...]:
        if shape.kind == "linear":
            return (min(shape.out_size, shape.in_size),)  # a matrix's CP rank is its rank
        dims = (shape.group_out, shape.group_in, *shape.kernel_size)
        return (math.prod(dims) // max(dims),)  # generic upper bound of the CP rank

    def param_count(
        self, shape: LayerShape, ranks: Sequence[int], config: DecompositionConfig | None = None
    ) -> int:
        bias = shape.out_size if shape.has_bias else 0
        if shape.kind == "linear":
            return ranks[0] * (shape.in_size + shape.out_size) + bias
        kh, kw = shape.kernel_size
        return shape.groups * ranks[0] * (shape.group_in + kh + kw + shape.group_out) + bias

    def energy_ranks(
        self, weight: Tensor, shape: LayerShape, energy: float, config: DecompositionConfig
    ) -> tuple[int, ...]:
        return (max(max(_mode_energy_ranks(block, energy)) for block in _blocks(weight, shape)),)

    def build(
        self, layer: nn.Linear | nn.Conv2d, ranks: tuple[int, ...], config: DecompositionConfig
    ) -> FactorizedLayer:
        assert isinstance(config, CPConfig)
        if isinstance(layer, nn.Linear):
            return CPLinear.from_dense(layer, ranks[0])  # the CP of a matrix is its truncated SVD
        return CPConv2d.from_dense(
            layer, ranks[0], n_iter_max=config.n_iter_max, l2_reg=config.l2_reg, tol=config.tol, init=config.init
        )


class _TT(Factorization):
    config_class = TTConfig
    factorizes_linear = True
    factorizes_groups = False

    @staticmethod
    def _dims(shape: LayerShape, config: DecompositionConfig | None) -> list[int]:
        in_modes, out_modes = tt_modes(shape, config)
        if shape.kind == "linear":
            return tt_linear_dims(in_modes, out_modes)
        return tt_conv_dims(shape.kernel_size, in_modes, out_modes)

    def rank_bounds(self, shape: LayerShape, config: DecompositionConfig | None) -> tuple[int, ...]:
        in_modes, out_modes = tt_modes(shape, config)
        if shape.kind == "linear":
            return tuple(tt_bounds_linear(in_modes, out_modes))
        return tuple(tt_bounds_conv(shape.kernel_size, in_modes, out_modes))

    def param_count(
        self, shape: LayerShape, ranks: Sequence[int], config: DecompositionConfig | None = None
    ) -> int:
        dims, bonds = self._dims(shape, config), [1, *ranks, 1]
        bias = shape.out_size if shape.has_bias else 0
        return sum(bonds[k] * dims[k] * bonds[k + 1] for k in range(len(dims))) + bias

    def fraction_ranks(
        self, shape: LayerShape, target: float, bounds: Sequence[int], config: DecompositionConfig
    ) -> tuple[int, ...]:
        # One uniform rank capped at every bond's maximum.
        def count(ranks: Sequence[int]) -> int:
            return self.param_count(shape, ranks, config)

        best: tuple[int, ...] = tuple(1 for _ in bounds)
        for uniform in range(1, max(bounds) + 1):
            ranks = tuple(min(uniform, bound) for bound in bounds)
            if abs(count(ranks) - target) < abs(count(best) - target):
                best = ranks
            if count(ranks) > target:
                break
        return best

    def tensor(self, weight: Tensor, shape: LayerShape, config: DecompositionConfig | None) -> Tensor:
        """The dense weight as the TT tensor of mode sizes ``(i_1 o_1, ..., i_d o_d)`` (convs: ``kh kw`` first)."""
        in_modes, out_modes = tt_modes(shape, config)
        d = len(in_modes)
        if shape.kind == "linear":
            tensor = weight.reshape(*out_modes, *in_modes).permute([a for k in range(d) for a in (d + k, k)])
        else:
            spatial = shape.kernel_size[0] * shape.kernel_size[1]
            tensor = weight.reshape(*out_modes, *in_modes, spatial).permute(
                [2 * d] + [a for k in range(d) for a in (d + k, k)]
            )
        return tensor.reshape(self._dims(shape, config))

    def energy_ranks(
        self, weight: Tensor, shape: LayerShape, energy: float, config: DecompositionConfig
    ) -> tuple[int, ...]:
        cores = tt_svd(self.tensor(weight, shape, config), energy=energy)
        return tuple(int(core.shape[-1]) for core in cores[:-1])

    def build(
        self, layer: nn.Linear | nn.Conv2d, ranks: tuple[int, ...], config: DecompositionConfig
    ) -> FactorizedLayer:
        in_modes, out_modes = tt_modes(layer_shape(layer), config)
        if isinstance(layer, nn.Linear):
            return TTLinear.from_dense(layer, ranks, in_modes, out_modes)
        return TTConv2d.from_dense(layer, ranks, in_modes, out_modes)


_FACTORIZATIONS: dict[type[DecompositionConfig], Factorization] = {}
_BY_METHOD: dict[str, Factorization] = {}


def register_factorization(handler: Factorization) -> Factorization:
    """Adds a method to the table, under ``handler.config_class`` (and its ``method`` name).

    Returns:
        ``handler``.

    Raises:
        TypeError: if ``handler.config_class`` is not a ``DecompositionConfig`` subclass with a ``method``.

    Example:
        >>> register_factorization(factorization("svd")).method
        'svd'
    """
    cls = handler.config_class
    if not (isinstance(cls, type) and issubclass(cls, DecompositionConfig) and cls.method):
        raise TypeError(
            f"`handler.config_class` must be a DecompositionConfig subclass with a `method` name, got {cls!r}."
        )
    _FACTORIZATIONS[cls] = handler
    _BY_METHOD[cls.method] = handler
    return handler


for _handler in (_SVD(), _Tucker(), _CP(), _TT()):
    register_factorization(_handler)


def factorization(method: MethodSpec) -> Factorization:
    """The :class:`Factorization` of a config, a config class or a method name.

    Raises:
        ValueError: for a method name no factorization is registered under.
        TypeError: for anything else.

    Example:
        >>> from tetra_lightning.decompose import TuckerConfig
        >>> factorization(TuckerConfig(rank=4)) is factorization("tucker") is factorization(TuckerConfig)
        True
    """
    if isinstance(method, str):
        if method not in _BY_METHOD:
            raise ValueError(f"`method` must be one of {tuple(_BY_METHOD)}, got {method!r}.")
        return _BY_METHOD[method]
    cls = type(method) if isinstance(method, DecompositionConfig) else method
    if isinstance(cls, type):
        for base in cls.__mro__:
            if base in _FACTORIZATIONS:
                return _FACTORIZATIONS[base]
    raise TypeError(
        f"`method` must be a method name {tuple(_BY_METHOD)}, a DecompositionConfig or its class, got {method!r}."
    )

