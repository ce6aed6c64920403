"""Datasets held in memory on the training device: CIFAR-10 from local files and scikit-learn's digits."""

from __future__ import annotations

from tetra_lightning.data.augment import crop_flip, normalize_images, random_crop_flip, sample_crop_flip
from tetra_lightning.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10Arrays,
    CIFAR10DataModule,
    decode_jpeg_packed,
    default_cache_dir,
    find_cifar10,
    load_cifar10,
    load_cifar10_packed,
    load_cifar10_subset,
    load_cifar10_torchvision,
)
from tetra_lightning.data.digits import DigitsDataModule, HeldOutDigitsDataModule, load_digits_tensors
from tetra_lightning.data.loader import InMemoryBatchLoader

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10Arrays",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "HeldOutDigitsDataModule",
    "InMemoryBatchLoader",
    "crop_flip",
    "decode_jpeg_packed",
    "default_cache_dir",
    "find_cifar10",
    "load_cifar10",
    "load_cifar10_packed",
    "load_cifar10_subset",
    "load_cifar10_torchvision",
    "load_digits_tensors",
    "normalize_images",
    "random_crop_flip",
    "sample_crop_flip",
]
