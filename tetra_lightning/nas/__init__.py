"""Architecture search: the NATS-Bench topology (tss) and size (sss) spaces, their cell networks, objectives."""

from __future__ import annotations

from tetra_lightning.nas.api import NATSBenchObjective, TimeBudgetExhausted
from tetra_lightning.nas.networks import SSS_GENOTYPE, NATSNetwork, nats_layer_channels
from tetra_lightning.nas.objective import (
    DATASETS,
    EDGES,
    NB201_OPS,
    TABLE_ENV_VAR,
    NASBench201Objective,
    arch_str_to_ops,
    ops_to_arch_str,
)
from tetra_lightning.nas.spaces import (
    NATS_SPACES,
    SSS_CHANNELS,
    NATSSizeSpace,
    NATSTopologySpace,
    build_nats_network,
    get_nats_space,
)

__all__ = [
    "DATASETS",
    "EDGES",
    "NB201_OPS",
    "TABLE_ENV_VAR",
    "NASBench201Objective",
    "arch_str_to_ops",
    "ops_to_arch_str",
    # NATS-Bench spaces, networks, API objective; NATSLightningModule is in tetra_lightning.nas.lightning
    # (imported lazily below so that the spaces do not import Lightning)
    "NATS_SPACES",
    "SSS_CHANNELS",
    "SSS_GENOTYPE",
    "NATSBenchObjective",
    "NATSLightningModule",
    "NATSNetwork",
    "NATSSizeSpace",
    "NATSTopologySpace",
    "TimeBudgetExhausted",
    "build_nats_network",
    "get_nats_space",
    "nats_layer_channels",
]


def __getattr__(name: str) -> object:
    if name == "NATSLightningModule":
        from tetra_lightning.nas.lightning import NATSLightningModule

        return NATSLightningModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
