"""The two NATS-Bench search spaces, with the benchmark's own architecture indexing.

* :class:`NATSTopologySpace` (tss = NAS-Bench-201): 6 edges x 5 ops, 15625 cells. The official ``arch_index``
  is the product order of the ops over the edges (first edge slowest, ops in :data:`NB201_OPS` order) shuffled
  by Python's ``random.seed(88); random.shuffle(...)`` (``generate_meta_info`` in D-X-Y/AutoDL-Projects
  ``exps/NATS-Bench/main-tss.py``, which asserts indices 0, 9 and 123). It is rebuilt here without the table
  and agrees with the table's ``arch_index`` column for all 15625 rows.
* :class:`NATSSizeSpace` (sss): 5 layers x 8 channel counts ``{8, 16, ..., 64}``, 32768 networks, string
  ``"64:32:48:16:64"``. The ``arch_index`` is the product order with the first layer slowest
  (``traverse_net`` in ``exps/NATS-Bench/main-sss.py``): ``"8:8:8:8:8"`` is 0, ``"64:64:64:64:64"`` is 32767.

Both spaces give a :class:`~tetra_lightning.optim.SearchSpace` of categorical dimensions for TetraOpt and
TetraOptTuner, and convert between params dict, architecture string, index and op / channel list.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import numpy as np

from tetra_lightning.nas.networks import SSS_GENOTYPE, NATSNetwork, nats_layer_channels
from tetra_lightning.nas.objective import EDGES, NB201_OPS, arch_str_to_ops, ops_to_arch_str
from tetra_lightning.optim.space import Categorical, SearchSpace

__all__ = [
    "NATS_SPACES",
    "SSS_CHANNELS",
    "NATSSizeSpace",
    "NATSTopologySpace",
    "build_nats_network",
    "get_nats_space",
]

SSS_CHANNELS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64)
_TSS_SHUFFLE_SEED = 88  # exps/NATS-Bench/main-tss.py: "please do not change this line for reproducibility"
_TSS_ARCHS: list[str] | None = None
_TSS_INDEX: dict[str, int] | None = None


def _tss_tables() -> tuple[list[str], dict[str, int]]:
    global _TSS_ARCHS, _TSS_INDEX
    if _TSS_ARCHS is None or _TSS_INDEX is None:
        archs = [ops_to_arch_str(ops) for ops in itertools.product(NB201_OPS, repeat=len(EDGES))]
        random.Random(_TSS_SHUFFLE_SEED).shuffle(archs)  # own generator: the global one stays untouched
        _TSS_ARCHS, _TSS_INDEX = archs, {s: i for i, s in enumerate(archs)}
    return _TSS_ARCHS, _TSS_INDEX


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class NATSTopologySpace:
    """The NATS-Bench topology space (tss): one op per edge of a 4-node cell, 15625 cells.

    An architecture may be given as a params dict (edge name of :data:`EDGES` -> op), an official string, an
    ``arch_index`` or the 6 ops.

    Example:
        >>> tss = NATSTopologySpace()
        >>> len(tss), tss.search_space().size
        (15625, 15625)
        >>> tss.arch_str(0)
        '|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|'
        >>> tss.index(tss.from_arch(6111)), tss.to_arch(tss.from_arch(6111)) == tss.arch_str(6111)
        (6111, True)
    """

    name = "tss"
    ops_choices: tuple[str, ...] = NB201_OPS
    dimensions: tuple[str, ...] = EDGES

    def __len__(self) -> int:
        return len(NB201_OPS) ** len(EDGES)

    def __repr__(self) -> str:
        return "NATSTopologySpace(6 edges x 5 ops = 15625 cells)"

    def search_space(self) -> SearchSpace:
        """One categorical dimension per edge (names :data:`EDGES`), choices :data:`NB201_OPS`."""
        return SearchSpace({edge: Categorical(NB201_OPS) for edge in EDGES})

    def ops(self, arch: Any) -> tuple[str, ...]:
        """The 6 edge ops (order of :data:`EDGES`) of an architecture.

        Raises:
            ValueError: if ``arch`` is not an architecture of this space.
        """
        if isinstance(arch, Mapping):
            missing = [e for e in EDGES if e not in arch]
            if missing:
                raise ValueError(f"params {dict(arch)!r} miss the edge(s) {missing}; the edges are {list(EDGES)}.")
            ops = tuple(arch[e] for e in EDGES)
            ops_to_arch_str(ops)  # validates
            return ops
        if isinstance(arch, str):
            return arch_str_to_ops(arch)
        if _is_index(arch):
            return arch_str_to_ops(self.arch_str(arch))
        ops = tuple(arch)
        ops_to_arch_str(ops)  # validates
        return ops

    def arch_str(self, arch: Any) -> str:
        """Official architecture string of an architecture."""
        if _is_index(arch):
            if not 0 <= int(arch) < len(self):
                raise ValueError(f"a tss arch_index must be in [0, {len(self) - 1}], got {arch}.")
            return _tss_tables()[0][int(arch)]
        return ops_to_arch_str(self.ops(arch))

    def index(self, arch: Any) -> int:
        """Official NATS-Bench / NAS-Bench-201 ``arch_index`` of an architecture."""
        if _is_index(arch):
            self.arch_str(arch)  # validates the range
            return int(arch)
        return _tss_tables()[1][self.arch_str(arch)]

    def to_arch(self, params: Mapping[str, Any]) -> str:
        """Official string of a point of :meth:`search_space` (alias of :meth:`arch_str` for params)."""
        return self.arch_str(params)

    def from_arch(self, arch: Any) -> dict[str, str]:
        """Params dict (edge -> op), a point of :meth:`search_space`, of a string, index or op list."""
        return dict(zip(EDGES, self.ops(arch), strict=True))

    def build_network(self, arch: Any, num_classes: int = 10, C: int = 16, N: int = 5, **kwargs: Any) -> NATSNetwork:
        """The cell network of ``arch`` (see :func:`~tetra_lightning.nas.build_nats_network`)."""
        return build_nats_network(self.arch_str(arch), num_classes, C, N, **kwargs)


class NATSSizeSpace:
    """The NATS-Bench size space (sss): the channel count of each of 5 layers in {8, ..., 64}, 32768 networks.

    An architecture may be given as a params dict (``layer_0`` ... ``layer_4`` -> channels), a size string
    ``"64:32:48:16:64"``, an ``arch_index`` or the 5 channel counts.

    Example:
        >>> sss = NATSSizeSpace()
        >>> len(sss), sss.index("8:8:8:8:8"), sss.index("64:64:64:64:64"), sss.arch_str(1)
        (32768, 0, 32767, '8:8:8:8:16')
        >>> sss.from_arch("64:32:48:16:64")
        {'layer_0': 64, 'layer_1': 32, 'layer_2': 48, 'layer_3': 16, 'layer_4': 64}
    """

    name = "sss"
    channel_choices: tuple[int, ...] = SSS_CHANNELS
    num_layers = 5
    dimensions: tuple[str, ...] = tuple(f"layer_{i}" for i in range(5))

    def __len__(self) -> int:
        return len(SSS_CHANNELS) ** self.num_layers

    def __repr__(self) -> str:
        return "NATSSizeSpace(5 layers x 8 channel counts = 32768 networks)"

    def search_space(self) -> SearchSpace:
        """One categorical dimension per layer (``layer_0`` ... ``layer_4``), choices :data:`SSS_CHANNELS`."""
        return SearchSpace({name: Categorical(SSS_CHANNELS) for name in self.dimensions})

    def channels(self, arch: Any) -> tuple[int, ...]:
        """The 5 channel counts of an architecture.

        Raises:
            ValueError: if ``arch`` is not an architecture of this space.
        """
        if _is_index(arch):
            index = int(arch)
            if not 0 <= index < len(self):
                raise ValueError(f"an sss arch_index must be in [0, {len(self) - 1}], got {arch}.")
            digits = [(index // len(SSS_CHANNELS) ** (self.num_layers - 1 - i)) % len(SSS_CHANNELS)
                      for i in range(self.num_layers)]
            return tuple(SSS_CHANNELS[d] for d in digits)
        if isinstance(arch, Mapping):
            missing = [d for d in self.dimensions if d not in arch]
            if missing:
                raise ValueError(f"params {dict(arch)!r} miss the layer(s) {missing}; the layers are "
                                 f"{list(self.dimensions)}.")
            values: list[Any] = [arch[d] for d in self.dimensions]
        elif isinstance(arch, str):
            values = arch.strip().split(":")
        else:
            values = list(arch)
        try:
            channels = tuple(int(v) for v in values)
            ok = len(channels) == self.num_layers and all(c in SSS_CHANNELS for c in channels)
            ok = ok and all(float(v) == int(v) for v in values)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{arch!r} is not a NATS-Bench size-space architecture; expected 5 channel counts "
                             f"from {list(SSS_CHANNELS)}, e.g. '64:32:48:16:64'.")
        return channels

    def arch_str(self, arch: Any) -> str:
        """Size string ``"c0:c1:c2:c3:c4"`` of an architecture."""
        return ":".join(str(c) for c in self.channels(arch))

    def index(self, arch: Any) -> int:
        """NATS-Bench sss ``arch_index`` (first layer slowest in the product order)."""
        index = 0
        for c in self.channels(arch):
            index = index * len(SSS_CHANNELS) + SSS_CHANNELS.index(c)
        return index

    def to_arch(self, params: Mapping[str, Any]) -> str:
        """Size string of a point of :meth:`search_space`."""
        return self.arch_str(params)

    def from_arch(self, arch: Any) -> dict[str, int]:
        """Params dict (layer -> channels), a point of :meth:`search_space`, of a string, index or list."""
        return dict(zip(self.dimensions, self.channels(arch), strict=True))

    def build_network(self, arch: Any, num_classes: int = 10, **kwargs: Any) -> NATSNetwork:
        """The size-space network of ``arch`` (fixed cell, see :func:`~tetra_lightning.nas.build_nats_network`)."""
        return build_nats_network(self.arch_str(arch), num_classes, **kwargs)


NATS_SPACES: dict[str, type[NATSTopologySpace] | type[NATSSizeSpace]] = {
    "tss": NATSTopologySpace, "topology": NATSTopologySpace, "sss": NATSSizeSpace, "size": NATSSizeSpace,
}


def get_nats_space(name: str) -> NATSTopologySpace | NATSSizeSpace:
    """The space named ``"tss"``/``"topology"`` or ``"sss"``/``"size"`` (the names ``nats_bench.create`` takes).

    Raises:
        ValueError: for another name.

    Example:
        >>> get_nats_space("sss").arch_str(32767)
        '64:64:64:64:64'
    """
    try:
        return NATS_SPACES[name]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown NATS-Bench space {name!r}; use one of {sorted(NATS_SPACES)}.") from None


def build_nats_network(arch: Any, num_classes: int = 10, C: int = 16, N: int = 5, *, space: str | None = None,
                       in_channels: int = 3, affine: bool = True, track_running_stats: bool = True) -> NATSNetwork:
    """Build the NATS-Bench network of an architecture of the topology (tss) or the size (sss) space.

    Args:
        arch: tss: an official string ``"|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"``, the 6 edge ops or a params dict
            of :class:`~tetra_lightning.nas.NATSTopologySpace`; sss: a size string ``"64:32:48:16:64"``, the 5
            channel counts or a params dict of :class:`~tetra_lightning.nas.NATSSizeSpace`; either: an
            ``arch_index`` together with ``space``.
        num_classes: classifier outputs (10 for CIFAR-10, 100 for CIFAR-100, 120 for ImageNet16-120).
        C: channels of the first stage (tss only; the benchmark uses 16).
        N: cells per stage (tss only; the benchmark uses 5).
        space: ``"tss"`` or ``"sss"``; needed only when ``arch`` is an index or a params dict.
        in_channels: image channels.
        affine: learnable BN scale/shift.
        track_running_stats: BN running statistics.

    Returns:
        A :class:`NATSNetwork` mapping ``(B, in_channels, H, W)`` images to ``(B, num_classes)`` logits.

    Raises:
        ValueError: for an architecture of neither space, an index without ``space``, or bad ``C``/``N``.

    Example:
        >>> net = build_nats_network("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
        >>> sum(p.numel() for p in net.parameters())  # the benchmark's 0.073306 MB
        73306
        >>> sum(p.numel() for p in build_nats_network("64:64:64:64:64").parameters())
        713674
    """
    if space is not None:
        resolved = get_nats_space(space)
        name, value = resolved.name, resolved.arch_str(arch)
    elif isinstance(arch, str):
        name, value = ("tss", arch) if "~" in arch else ("sss", arch)
    elif isinstance(arch, (Mapping, int)):
        raise ValueError(f"`arch` {arch!r} needs `space='tss'` or `space='sss'` to be resolved.")
    else:
        items = list(arch)
        name = "tss" if all(isinstance(x, str) for x in items) else "sss"
        value = get_nats_space(name).arch_str(items)
    if name == "tss":
        ops = get_nats_space("tss").ops(value)
        channels = nats_layer_channels(C, N)
    else:
        ops = arch_str_to_ops(SSS_GENOTYPE)
        channels = list(get_nats_space("sss").channels(value))
    return NATSNetwork(ops, channels, num_classes, in_channels, affine, track_running_stats)
