"""``nn.Conv1d`` factorized as the ``nn.Conv2d`` of height one it is: every conv factorization applies unchanged.

An ``nn.Conv1d`` with kernel ``k`` computes what an ``nn.Conv2d`` with kernel ``(1, k)`` computes on the input with a
height axis of size one. :func:`conv1d_as_conv2d` builds that conv, any factorized conv is built from it, and
:class:`FactorizedConv1d` runs it on ``x.unsqueeze(-2)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tetra_lightning.decompose.base import FactorizedLayer

__all__ = ["FactorizedConv1d", "conv1d_as_conv2d"]


def _as_pair(value: Any, first: int) -> Any:
    if isinstance(value, str):
        return value
    return (first, int(value[0] if isinstance(value, (tuple, list)) else value))


def conv1d_as_conv2d(layer: nn.Conv1d) -> nn.Conv2d:
    """The ``nn.Conv2d`` with kernel ``(1, k)`` that computes ``layer`` on ``x.unsqueeze(-2)`` (weights shared).

    Example:
        >>> conv = nn.Conv1d(4, 6, 3, padding=1)
        >>> x = torch.randn(2, 4, 10)
        >>> bool(torch.allclose(conv1d_as_conv2d(conv)(x.unsqueeze(-2)).squeeze(-2), conv(x), atol=1e-6))
        True
    """
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        _as_pair(layer.kernel_size, 1),
        stride=_as_pair(layer.stride, 1),
        padding=_as_pair(layer.padding, 0),
        dilation=_as_pair(layer.dilation, 1),
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight.unsqueeze(2))
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    conv.train(layer.training)
    return conv


class FactorizedConv1d(FactorizedLayer):
    """A factorized ``nn.Conv1d``: a factorized conv of kernel ``(1, k)`` applied to ``x.unsqueeze(-2)``.

    ``method``, ``ranks`` and the geometry are those of :attr:`inner`; :meth:`dense_weight` is
    ``(C_out, C_in / groups, k)`` and :meth:`to_dense` gives back an ``nn.Conv1d``.

    Args:
        inner: the factorized ``(1, k)`` conv, or its :meth:`~FactorizedLayer.spec`.

    Example:
        >>> from tetra_lightning.decompose import SVDConfig, decompose_layer
        >>> dense = nn.Conv1d(8, 16, 5, padding=2)
        >>> layer = decompose_layer(dense, SVDConfig(rank=16))
        >>> x = torch.randn(2, 8, 20)
        >>> type(layer).__name__, layer.ranks, bool((layer(x) - dense(x)).abs().max() < 1e-4)
        ('FactorizedConv1d', (16,), True)
    """

    def __init__(self, inner: FactorizedLayer | dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner if isinstance(inner, FactorizedLayer) else FactorizedLayer.from_spec(dict(inner))
        self.rel_error = self.inner.rel_error

    @property
    def method(self) -> str:  # type: ignore[override]
        return self.inner.method

    def __getattr__(self, name: str) -> Any:
        # The dense geometry (in_channels, out_channels, kernel_size, groups, has_bias, ...) is the inner conv's.
        if name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                    "padding_mode", "has_bias"):
            return getattr(self._modules["inner"], name)
        return super().__getattr__(name)

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.inner.ranks

    def _spec_kwargs(self) -> dict[str, Any]:
        return {"inner": self.inner.spec()}

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.unsqueeze(-2)).squeeze(-2)

    def dense_weight(self) -> Tensor:
        return self.inner.dense_weight()[:, :, 0, :]

    def dense_bias(self) -> Tensor | None:
        return self.inner.dense_bias()

    @property
    def bias(self) -> Tensor | None:
        return self.dense_bias()

    def to_dense(self) -> nn.Conv1d:
        inner = self.inner
        padding = inner.padding if isinstance(inner.padding, str) else inner.padding[1]
        reference = self._reference()
        layer = nn.Conv1d(
            inner.in_channels,
            inner.out_channels,
            inner.kernel_size[1],
            stride=inner.stride[1],
            padding=padding,
            dilation=inner.dilation[1],
            groups=getattr(inner, "groups", 1),
            bias=inner.has_bias,
            padding_mode=inner.padding_mode,
            device=reference.device,
            dtype=reference.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(self.dense_weight())
            if inner.has_bias:
                layer.bias.copy_(self.dense_bias())
        return layer
