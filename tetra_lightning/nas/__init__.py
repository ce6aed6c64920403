"""Architecture search spaces: the NAS-Bench-201 / NATS-Bench topology space as a black-box objective."""

from __future__ import annotations

from tetra_lightning.nas.objective import (
    DATASETS,
    EDGES,
    NB201_OPS,
    TABLE_ENV_VAR,
    NASBench201Objective,
    arch_str_to_ops,
    ops_to_arch_str,
)

__all__ = [
    "DATASETS",
    "EDGES",
    "NB201_OPS",
    "TABLE_ENV_VAR",
    "NASBench201Objective",
    "arch_str_to_ops",
    "ops_to_arch_str",
]
