"""Structural channel pruning (torch-pruning DependencyGraph) with a replayable, JSON-safe history."""

from __future__ import annotations

from tetra_lightning.prune.config import IMPORTANCES, PruneConfig, check_prune_arguments
from tetra_lightning.prune.core import (
    output_layers,
    prune_,
    pruned_shapes,
    restore_pruned_structure,
)
from tetra_lightning.prune.replay import (
    PrunableMixin,
    entry_key,
    is_prune_entry,
    replay_history,
    restore_from_checkpoint,
)

__all__ = [
    "IMPORTANCES",
    "PrunableMixin",
    "PruneConfig",
    "check_prune_arguments",
    "entry_key",
    "is_prune_entry",
    "output_layers",
    "prune_",
    "pruned_shapes",
    "replay_history",
    "restore_from_checkpoint",
    "restore_pruned_structure",
]
