"""Base class of the factorized layers and helpers shared by them."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

_REGISTRY: dict[str, type[FactorizedLayer]] = {}


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _padding(value: Any) -> tuple[int, int] | str:
    return value if isinstance(value, str) else _pair(value)


class FactorizedLayer(nn.Module, ABC):
    """A dense ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` replaced by a sequence of small layers.

    Subclasses hold plain ``nn.Linear`` / ``nn.Conv2d`` submodules (TT layers: ``nn.Parameter`` cores) and
    never rebuild the dense weight in ``forward``. Every subclass is registered by class name so that
    :meth:`from_spec` can rebuild any of them from a JSON-safe :meth:`spec`.

    A factorized layer stands in for the dense one wherever that one could be used: code that reads
    ``layer.weight`` (and ``layer.bias``) directly instead of calling the layer, such as
    ``F.linear(x, self.qkv.weight)`` in torchvision's Swin or the fast path of ``nn.TransformerEncoderLayer``,
    gets the dense weight rebuilt from the factors on access (differentiable, so training still updates the
    factors); only the parameter count drops there, not the compute.

    Attributes:
        method: ``"svd"``, ``"tucker"``, ``"cp"`` or ``"tt"``.
        rel_error: relative Frobenius error ``||W_hat - W|| / ||W||`` of the factorized weight against the
            dense weight it was built from (``nan`` when built from a spec).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import FactorizedLayer, SVDConfig, decompose_layer
        >>> layer = decompose_layer(torch.nn.Linear(16, 8), SVDConfig(rank=8))
        >>> clone = FactorizedLayer.from_spec(layer.spec())
        >>> _ = clone.load_state_dict(layer.state_dict())
        >>> x = torch.randn(2, 16)
        >>> torch.allclose(clone(x), layer(x))
        True
    """

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        super().__init__()
        self.rel_error: float = math.nan

    # -- interface implemented by subclasses ---------------------------------------------------------
    @property
    @abstractmethod
    def ranks(self) -> tuple[int, ...]:
        """The ranks of the factorization (order documented by each subclass)."""

    @abstractmethod
    def _spec_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-safe) that rebuild this layer's structure."""

    @abstractmethod
    def dense_weight(self) -> Tensor:
        """The equivalent dense weight (``(out, in)`` or ``(C_out, C_in, kh, kw)``), rebuilt from the factors."""

    @abstractmethod
    def dense_bias(self) -> Tensor | None:
        """The bias of the layer (``None`` when it has none)."""

    @abstractmethod
    def to_dense(self) -> nn.Linear | nn.Conv2d:
        """A dense ``nn.Linear`` / ``nn.Conv2d`` computing the same function (same device, dtype and bias)."""

    # -- shared ----------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """JSON-safe description of the structure: ``{"class": name, **constructor kwargs}``."""
        return {"class": type(self).__name__, **self._spec_kwargs()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FactorizedLayer:
        """Build a layer of the right class and shapes from :meth:`spec` (weights are freshly initialised).

        Raises:
            ValueError: if ``spec["class"]`` is not a known factorized layer, the spec lacks one of its
                constructor's arguments or has a ``rank`` that is not positive.
        """
        name = spec.get("class")
        if name not in _REGISTRY:
            raise ValueError(
                f"Unknown factorized layer class {name!r} in `spec['class']`; known: {sorted(_REGISTRY)}. "
                "Pass a spec produced by `FactorizedLayer.spec()`."
            )
        target = _REGISTRY[name]
        if cls is not FactorizedLayer and not issubclass(target, cls):
            raise ValueError(f"`spec` describes a {name}, not a {cls.__name__}. Call FactorizedLayer.from_spec.")
        kwargs = {key: value for key, value in spec.items() if key != "class"}
        _check_spec(name, target, kwargs)
        return target(**kwargs)

    @property
    def weight(self) -> Tensor:
        """The dense weight, rebuilt from the factors on every access (for code that reads ``.weight``)."""
        return self.dense_weight()

    def extra_repr(self) -> str:
        return f"method={self.method!r}, ranks={self.ranks}, rel_error={self.rel_error:.4g}"

    def _reference(self) -> Tensor:
        return next(self.parameters())


def _check_spec(name: str, target: type[FactorizedLayer], kwargs: dict[str, Any]) -> None:
    """Raises ``ValueError`` for a spec that lacks a constructor argument or holds a rank that is not positive."""
    parameters = inspect.signature(target).parameters
    missing = [
        key
        for key, parameter in parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and key not in kwargs
    ]
    if missing:
        raise ValueError(f"the spec of {name} lacks {', '.join(map(repr, missing))} (it has {sorted(kwargs)}).")
    if "rank" in kwargs:
        rank = kwargs["rank"]
        ranks = list(rank) if isinstance(rank, (list, tuple)) else [rank]
        if not ranks or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
            raise ValueError(
                f"`rank` must be a positive int or a list of positive ints, got {rank!r} in the spec of {name}."
            )


class _BiasOnAccess:
    """Mixin for layers whose bias lives in their last factor: ``layer.bias`` is that bias (or None)."""

    @property
    def bias(self: Any) -> Tensor | None:
        return self.dense_bias()


class _LinearShape:
    """Mixin storing the dense ``nn.Linear`` geometry."""

    in_features: int
    out_features: int
    has_bias: bool

    def _dense_linear(self: Any) -> nn.Linear:
        reference = self._reference()
        layer = nn.Linear(
            self.in_features, self.out_features, bias=self.has_bias, device=reference.device, dtype=reference.dtype
        )
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
            if self.has_bias:
                layer.bias.copy_(self.dense_bias())
        return layer


class _ConvShape:
    """Mixin storing the dense ``nn.Conv2d`` geometry (JSON-safe in :meth:`_conv_kwargs`)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    padding_mode: str
    has_bias: bool
    groups: int

    def _set_conv_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        padding_mode: str,
        bias: bool,
        groups: int = 1,
    ) -> None:
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _padding(padding)
        self.dilation = _pair(dilation)
        self.padding_mode = padding_mode
        self.has_bias = bool(bias)
        self.groups = int(groups)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"`groups`={groups} must divide in_channels={in_channels} and out_channels={out_channels}."
            )

    def _conv_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "padding_mode": self.padding_mode,
            "bias": self.has_bias,
        }
        if self.groups != 1:
            kwargs["groups"] = self.groups
        return kwargs

    def _dense_conv(self: Any) -> nn.Conv2d:
        reference = self._reference()
        layer = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            groups=self.groups,
            bias=self.has_bias,
            device=reference.device,
            dtype=reference.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
            if self.has_bias:
                layer.bias.copy_(self.dense_bias())
        return layer


def conv_geometry(layer: nn.Conv2d) -> dict[str, Any]:
    """Constructor kwargs of a factorized conv that keeps ``layer``'s geometry."""
    geometry = {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "padding_mode": layer.padding_mode,
        "bias": layer.bias is not None,
    }
    if layer.groups != 1:
        geometry["groups"] = layer.groups
    return geometry


def group_blocks(weight: Tensor, groups: int) -> list[Tensor]:
    """The ``groups`` kernels ``(C_out / g, C_in / g, kh, kw)`` of a grouped conv weight, in group order."""
    return list(weight.chunk(groups, dim=0)) if groups > 1 else [weight]


def check_ranks(owner: str, ranks: Any, bounds: Any) -> None:
    """Raise ``ValueError`` unless ``1 <= ranks[k] <= bounds[k]`` for every mode."""
    ranks, bounds = tuple(int(r) for r in ranks), tuple(int(b) for b in bounds)
    if len(ranks) != len(bounds) or any(not 1 <= r <= b for r, b in zip(ranks, bounds, strict=True)):
        raise ValueError(
            f"`rank`={ranks} is invalid for {owner}: each rank must be between 1 and the full rank {bounds}. "
            "Pass smaller ranks, or a float fraction through a config and `decompose_layer`."
        )


def relative_error(approximation: Tensor, reference: Tensor) -> float:
    """``||approximation - reference|| / ||reference||`` as a Python float (0 for a zero reference)."""
    denominator = float(reference.detach().float().norm())
    numerator = float((approximation.detach().float() - reference.detach().float()).norm())
    return numerator / denominator if denominator > 0 else numerator
