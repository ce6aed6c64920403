"""Paths of the shared data the tests read (``$TETRA_DATA_DIR``, else ``../shared/data`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("TETRA_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
CIFAR_DIR = SHARED_DATA / "cifar10"
CIFAR_SUBSET = CIFAR_DIR / "cifar10_subset_uint8.npz"
CIFAR_PACKED = CIFAR_DIR / "cifar10_jpeg_packed.npz"
