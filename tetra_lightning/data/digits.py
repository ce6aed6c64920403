"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes) as a tiny in-memory DataModule.

The data ships inside scikit-learn, so demos and tests run without any download. :class:`HeldOutDigitsDataModule`
adds a test split that no tuning choice sees.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from tetra_lightning.data.loader import InMemoryBatchLoader

__all__ = ["DigitsDataModule", "HeldOutDigitsDataModule", "load_digits_tensors"]


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1797 digits as float images in ``[0, 1]`` and int64 labels.

    Returns:
        ``(images, labels)`` with shapes ``(1797, 1, 8, 8)`` and ``(1797,)``.

    Raises:
        ImportError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DigitsDataModule needs scikit-learn: `pip install scikit-learn` (or `tetra-lightning[dev]`)."
        ) from err
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(LightningDataModule):
    """The 8x8 digits, split once with a seed into train and validation (the validation split doubles as test).

    Images are standardised with the training split's mean and std. Batches come from an in-memory loader on the
    Trainer's device (CPU without a Trainer).

    Args:
        batch_size: training batch size.
        val_fraction: fraction of the 1797 images held out, in (0, 1).
        flatten: yield ``(B, 64)`` vectors instead of ``(B, 1, 8, 8)`` images.
        seed: seed of the split and the shuffling.
        drop_last: drop the last incomplete training batch.

    Raises:
        ValueError: for a non-positive ``batch_size`` or ``val_fraction`` outside (0, 1).

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.shape, dm.num_train, dm.num_val
        (torch.Size([32, 1, 8, 8]), torch.Size([32]), 1438, 359)
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        flatten: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}. Pass e.g. `batch_size=64`.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}. Pass e.g. `val_fraction=0.2`.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.flatten = flatten
        self.seed = seed
        self.drop_last = drop_last
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one input."""
        return (64,) if self.flatten else (1, 8, 8)

    @property
    def num_train(self) -> int:
        """Training images (after :meth:`setup`)."""
        return self._splits["train"][0].shape[0]

    @property
    def num_val(self) -> int:
        """Validation images (after :meth:`setup`)."""
        return self._splits["val"][0].shape[0]

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and split them (once)."""
        if self._splits:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
        num_val = round(self.val_fraction * images.shape[0])
        val_index, train_index = order[:num_val], order[num_val:]
        mean, std = images[train_index].mean(), images[train_index].std()
        images = (images - mean) / std
        if self.flatten:
            images = images.flatten(1)
        self._splits = {
            "train": (images[train_index], labels[train_index]),
            "val": (images[val_index], labels[val_index]),
        }

    def train_dataloader(self) -> InMemoryBatchLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> InMemoryBatchLoader:
        """Validation batches in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryBatchLoader:
        """The validation split, in order (the digits have no separate test split)."""
        return self._loader("val", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> InMemoryBatchLoader:
        self.setup()
        x, y = self._splits[split]
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        loader = InMemoryBatchLoader(
            x.to(device), y.to(device), self.batch_size, shuffle=shuffle, drop_last=self.drop_last and shuffle,
            seed=self.seed, rank=rank, world_size=world_size,
        )
        if shuffle and trainer is not None:
            loader.epoch = trainer.current_epoch
        return loader


class HeldOutDigitsDataModule(DigitsDataModule):
    """The digits split three ways: train, validation (tuning and monitoring) and a held-out test split.

    :class:`~tetra_lightning.data.DigitsDataModule` validates and tests on the same split; the demo selects the
    best trial on the validation split, so its test accuracy must come from images that no choice saw. The test
    split is drawn first with ``seed``, so it is the same for every batch size and validation fraction.

    Args:
        batch_size: training batch size.
        val_fraction: fraction of the images left after the test split that are held out for validation.
        test_fraction: fraction of all 1797 images held out for testing, in (0, 1).
        seed: seed of the split and the shuffling.

    Raises:
        ValueError: for a non-positive ``batch_size`` or a fraction outside (0, 1).

    Example:
        >>> dm = HeldOutDigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> dm.num_train, dm.num_val, dm.num_test
        (1150, 288, 359)
    """

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(
                f"`test_fraction` must be in (0, 1), got {test_fraction!r}. Pass e.g. `test_fraction=0.2`."
            )
        self.test_fraction = test_fraction

    @property
    def num_test(self) -> int:
        """Test images (after :meth:`setup`)."""
        return self._splits["test"][0].shape[0]

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and split them into train, validation and test (once)."""
        if self._splits:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
        num_test = round(self.test_fraction * images.shape[0])
        num_val = round(self.val_fraction * (images.shape[0] - num_test))
        test_index = order[:num_test]
        val_index = order[num_test : num_test + num_val]
        train_index = order[num_test + num_val :]
        mean, std = images[train_index].mean(), images[train_index].std()
        images = (images - mean) / std
        self._splits = {
            "train": (images[train_index], labels[train_index]),
            "val": (images[val_index], labels[val_index]),
            "test": (images[test_index], labels[test_index]),
        }

    def test_dataloader(self) -> InMemoryBatchLoader:
        """The held-out test split, in order."""
        return self._loader("test", shuffle=False)
