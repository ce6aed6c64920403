"""Replaying pruning histories: the shared implementation lives in :mod:`tetra_lightning.checkpoint`.

A history may mix decomposition entries (:func:`~tetra_lightning.decompose.compress_`) and pruning entries
(:func:`~tetra_lightning.prune.prune_`, ``{"kind": "prune", ...}``); one replay path handles both, in order.
``PrunableMixin`` is :class:`~tetra_lightning.checkpoint.CompressibleMixin` under the name pruning users look for.
"""

from __future__ import annotations

from tetra_lightning.checkpoint import (
    HISTORY_STATE_KEY,
    CompressibleMixin,
    entry_key,
    history_to_tensor,
    is_prune_entry,
    replay_history,
    restore_from_checkpoint,
)

PrunableMixin = CompressibleMixin

__all__ = [
    "HISTORY_STATE_KEY",
    "PrunableMixin",
    "entry_key",
    "history_to_tensor",
    "is_prune_entry",
    "replay_history",
    "restore_from_checkpoint",
]
