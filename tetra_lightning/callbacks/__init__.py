"""Lightning callbacks: thin wrappers over the functional cores (one public callback per file)."""

from __future__ import annotations

from tetra_lightning.callbacks.compression import TensorCompressionCallback

__all__ = ["TensorCompressionCallback"]
