"""The NAS-Bench-201 / NATS-Bench cell networks in plain PyTorch.

Macro structure (NAS-Bench-201 ``TinyNetwork``; NATS-Bench ``DynamicShapeTinyNet`` for the size space): a stem
(conv 3x3 + BN), three stages of ``N`` cells joined by two residual reduction blocks (``ResNetBasicblock`` with
stride 2), then BN-ReLU, global average pooling and a linear classifier. The layer channels are

* topology space (tss): ``[C] * N + [2C] + [2C] * N + [4C] + [4C] * N`` with ``C=16, N=5`` in the benchmark;
* size space (sss): the 5 channel counts of the size string ``"c0:c1:c2:c3:c4"`` (``N = 1``: cell, reduction,
  cell, reduction, cell; the stem has ``c0`` channels), every cell being the fixed topology
  :data:`SSS_GENOTYPE` (``arch_index`` 9930 of tss, the best cell on CIFAR-100 validation).

A cell has 4 nodes; node ``j`` is the sum of the ops on the edges ``i -> j`` (``i < j``), the output is node 3.
Ops: ``none`` (zeros), ``skip_connect`` (identity, or 1x1 conv + BN when the channels change),
``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU-Conv-BN), ``avg_pool_3x3`` (3x3 average pooling without padded zeros,
preceded by a 1x1 ReLU-Conv-BN when the channels change). Edges leaving node 0 map the cell's input channels
to its output channels; all other edges keep the output channels. Parameter counts equal the benchmark's
(``params`` = all parameters incl. BN affine ones): e.g. 73,306 for the all-``none`` cell and 1,531,546 for
the all-``nor_conv_3x3`` cell on CIFAR-10.

:class:`NATSNetwork` takes resolved ops and channels; turning an architecture (string, index, params dict) into
them is the spaces' job (:func:`~tetra_lightning.nas.spaces.build_nats_network`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tetra_lightning.nas.objective import EDGES, NB201_OPS, arch_str_to_ops

__all__ = [
    "SSS_GENOTYPE",
    "InferCell",
    "NATSNetwork",
    "ReLUConvBN",
    "ResNetBasicblock",
    "nats_layer_channels",
]

SSS_GENOTYPE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# source node of each edge, order of EDGES ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")
_EDGE_SOURCES: tuple[tuple[int, int], ...] = tuple((int(e[0]), int(e[-1])) for e in EDGES)


class ReLUConvBN(nn.Sequential):
    """ReLU, bias-free convolution, batch norm (the benchmark's conv op and residual-block layer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      bias=not affine),
            nn.BatchNorm2d(out_channels, affine=affine, track_running_stats=track_running_stats),
        )


class _Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (contributes nothing to the node sum)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        shape[1] = self.out_channels
        return x.new_zeros(shape)


class _Skip(nn.Module):
    """``skip_connect``: identity, or a 1x1 conv + BN (no ReLU) when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, affine: bool, track_running_stats: bool) -> None:
        super().__init__()
        self.proj: nn.Module | None = None
        if in_channels != out_channels:
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=not affine),
                nn.BatchNorm2d(out_channels, affine=affine, track_running_stats=track_running_stats),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


class _AvgPool(nn.Module):
    """``avg_pool_3x3``, with a 1x1 ReLU-Conv-BN first when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, affine: bool, track_running_stats: bool) -> None:
        super().__init__()
        self.preprocess: nn.Module | None = None
        if in_channels != out_channels:
            self.preprocess = ReLUConvBN(in_channels, out_channels, 1, 1, affine, track_running_stats)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x if self.preprocess is None else self.preprocess(x))


def _make_op(op: str, in_channels: int, out_channels: int, affine: bool, track_running_stats: bool) -> nn.Module:
    if op == "none":
        return _Zero(out_channels)
    if op == "skip_connect":
        return _Skip(in_channels, out_channels, affine, track_running_stats)
    if op == "nor_conv_1x1":
        return ReLUConvBN(in_channels, out_channels, 1, 1, affine, track_running_stats)
    if op == "nor_conv_3x3":
        return ReLUConvBN(in_channels, out_channels, 3, 1, affine, track_running_stats)
    if op == "avg_pool_3x3":
        return _AvgPool(in_channels, out_channels, affine, track_running_stats)
    raise ValueError(f"unknown op {op!r}; the NAS-Bench-201 ops are {list(NB201_OPS)}.")


class InferCell(nn.Module):
    """A 4-node cell with one op per edge (6 ops in the order of :data:`~tetra_lightning.nas.EDGES`).

    Args:
        ops: the 6 edge ops, or an official architecture string.
        in_channels: channels of node 0 (the cell input).
        out_channels: channels of nodes 1-3.
        affine: learnable BN scale/shift (convs then have no bias).
        track_running_stats: BN running statistics.
    """

    def __init__(self, ops: Sequence[str] | str, in_channels: int, out_channels: int, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.ops = arch_str_to_ops(ops) if isinstance(ops, str) else tuple(ops)
        if len(self.ops) != len(EDGES):
            raise ValueError(f"a cell needs {len(EDGES)} edge ops (order {list(EDGES)}), got {list(self.ops)}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.edges = nn.ModuleList(
            _make_op(op, in_channels if src == 0 else out_channels, out_channels, affine, track_running_stats)
            for op, (_, src) in zip(self.ops, _EDGE_SOURCES, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in (1, 2, 3):
            nodes.append(sum(  # type: ignore[arg-type]
                edge(nodes[src]) for edge, (dst, src) in zip(self.edges, _EDGE_SOURCES, strict=True) if dst == target
            ))
        return nodes[3]


class ResNetBasicblock(nn.Module):
    """Residual reduction block between stages: two ReLU-Conv-BN 3x3 (the first with ``stride``) plus a shortcut
    (2x2 average pooling + bias-free 1x1 conv when ``stride=2``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"`stride` of ResNetBasicblock must be 1 or 2, got {stride}.")
        self.conv_a = ReLUConvBN(in_channels, out_channels, 3, stride, affine, track_running_stats)
        self.conv_b = ReLUConvBN(out_channels, out_channels, 3, 1, affine, track_running_stats)
        self.downsample: nn.Module | None
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2),
                                            nn.Conv2d(in_channels, out_channels, 1, bias=False))
        elif in_channels != out_channels:
            self.downsample = ReLUConvBN(in_channels, out_channels, 1, 1, affine, track_running_stats)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


class NATSNetwork(nn.Module):
    """Stem, ``3N + 2`` layers (cells and two reduction blocks), BN-ReLU, global pooling, classifier.

    Args:
        ops: the 6 edge ops of every cell.
        channels: output channels of the ``3N + 2`` layers; the stem has ``channels[0]``; layers ``N`` and
            ``2N + 1`` are the stride-2 reduction blocks.
        num_classes: classifier outputs.
        in_channels: image channels.
        affine: learnable BN scale/shift.
        track_running_stats: BN running statistics.

    Raises:
        ValueError: if ``len(channels)`` is not ``3N + 2`` or a channel count is not positive.
    """

    def __init__(self, ops: Sequence[str], channels: Sequence[int], num_classes: int = 10, in_channels: int = 3,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) % 3 != 2 or min(channels, default=0) < 1:
            raise ValueError(f"`channels` must hold 3N + 2 positive layer widths (5 for the size space), got "
                             f"{channels}.")
        self.ops = tuple(ops)
        self.channels = tuple(channels)
        self.num_cells = len(channels) // 3
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]))
        self.cells = nn.ModuleList()
        previous = channels[0]
        for layer, width in enumerate(channels):
            if layer in (self.num_cells, 2 * self.num_cells + 1):
                self.cells.append(ResNetBasicblock(previous, width, 2, affine, track_running_stats))
            else:
                self.cells.append(InferCell(self.ops, previous, width, affine, track_running_stats))
            previous = width
        self.lastact = nn.Sequential(nn.BatchNorm2d(previous), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)


def nats_layer_channels(C: int = 16, N: int = 5) -> list[int]:
    """Layer widths of the topology-space network: ``[C]*N + [2C] + [2C]*N + [4C] + [4C]*N``.

    Example:
        >>> nats_layer_channels(16, 1)
        [16, 32, 32, 64, 64]
    """
    for name, value in (("C", C), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}. The benchmark uses C=16, N=5.")
    return [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
