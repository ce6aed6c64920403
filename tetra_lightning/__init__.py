"""tetra-lightning: tensor-network AutoML for PyTorch Lightning."""

from __future__ import annotations

from tetra_lightning.__about__ import __version__

__all__ = ["__version__"]
