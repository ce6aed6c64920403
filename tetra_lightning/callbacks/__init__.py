"""Lightning callbacks: thin wrappers over the functional cores (one public callback per file)."""

from __future__ import annotations

from tetra_lightning.callbacks.compression import TensorCompressionCallback
from tetra_lightning.callbacks.distillation import DistillationCallback
from tetra_lightning.callbacks.lowrank import LowRankCallback
from tetra_lightning.callbacks.pruning import PruningCallback
from tetra_lightning.callbacks.quantization import QuantizationCallback
from tetra_lightning.callbacks.rewarm import LRRewarmCallback

__all__ = [
    "DistillationCallback",
    "LRRewarmCallback",
    "LowRankCallback",
    "PruningCallback",
    "QuantizationCallback",
    "TensorCompressionCallback",
]
