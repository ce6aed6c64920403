"""What the demo runs: the training recipe of each data set and its search space, model and data."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule

from tetra_lightning.data import CIFAR10DataModule, HeldOutDigitsDataModule, load_cifar10
from tetra_lightning.models import CIFARResNet18, DigitsCNN
from tetra_lightning.optim import Categorical, Float

__all__ = ["DATASETS", "STAGES", "Recipe", "Task", "check_data", "make_task"]

STAGES = ("dense", "compressed", "pruned", "int8")
DATASETS = ("digits", "cifar10")


@dataclass(frozen=True)
class Recipe:
    """How much the demo trains: trials, epochs and the epochs of the rewrites.

    Attributes:
        trials: tuning trials (COMPLETE + PRUNED) the study should hold.
        trial_epochs: epochs of each trial.
        epochs: epochs of the final fit.
        compress_epoch: epoch at whose start the network is factorized.
        prune_epoch: epoch at whose start channels are pruned.
        target_ratio: dense / compressed parameters after factorizing.
        pruning_ratio: fraction of the channels removed by pruning.
        limit_train_batches: training batches per epoch (Lightning's ``limit_train_batches``).
        limit_val_batches: validation batches per epoch.
        test_stride: the report evaluates every ``test_stride``-th test image (1: all; CIFAR-10's test set is
            sorted by class, so a stride keeps the classes balanced where the first images would not).
        latency_repeats: timed forward passes per latency median.

    Example:
        >>> Recipe.for_data("digits").trials
        16
        >>> Recipe.for_data("digits", quick=True).epochs
        3
    """

    trials: int
    trial_epochs: int
    epochs: int
    compress_epoch: int
    prune_epoch: int
    target_ratio: float = 4.0
    pruning_ratio: float = 0.3
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    test_stride: int = 1
    latency_repeats: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.compress_epoch < self.prune_epoch < self.epochs:
            raise ValueError(
                "The recipe needs 0 < compress_epoch < prune_epoch < epochs, got "
                f"compress_epoch={self.compress_epoch}, prune_epoch={self.prune_epoch}, epochs={self.epochs}. "
                "Leave at least one epoch of training before each rewrite and after pruning."
            )
        if self.trials < 1 or self.trial_epochs < 1:
            raise ValueError(f"`trials` and `trial_epochs` must be >= 1, got {self.trials} and {self.trial_epochs}.")
        if self.test_stride < 1:
            raise ValueError(f"`test_stride` must be >= 1, got {self.test_stride}. Pass 1 to test on every image.")

    @classmethod
    def for_data(cls, data: str, quick: bool = False) -> Recipe:
        """The default recipe of a data set.

        Args:
            data: ``"digits"`` or ``"cifar10"``.
            quick: a run of seconds on a CPU (for tests), instead of the full demo.

        Returns:
            The recipe.

        Raises:
            ValueError: for an unknown ``data``.
        """
        check_data(data)
        if data == "digits":
            if quick:
                return cls(trials=3, trial_epochs=1, epochs=3, compress_epoch=1, prune_epoch=2, target_ratio=3.0,
                           latency_repeats=5)
            return cls(trials=16, trial_epochs=3, epochs=12, compress_epoch=4, prune_epoch=8)
        if quick:
            return cls(trials=2, trial_epochs=1, epochs=3, compress_epoch=1, prune_epoch=2, target_ratio=3.0,
                       limit_train_batches=20, limit_val_batches=4, test_stride=20, latency_repeats=3)
        return cls(trials=16, trial_epochs=3, epochs=15, compress_epoch=5, prune_epoch=10, latency_repeats=20)


def check_data(data: str) -> None:
    if data not in DATASETS:
        raise ValueError(
            f"`data` must be one of {', '.join(map(repr, DATASETS))}, got {data!r}. Pass data='digits' for the "
            "bundled digits or data='cifar10' with `data_dir` pointing at CIFAR-10."
        )


@dataclass
class Task:
    """Everything the pipeline needs to know about one data set."""

    search_space: dict[str, Any]
    model_fn: Callable[[dict[str, Any]], LightningModule]
    datamodule_fn: Callable[[dict[str, Any]], LightningDataModule]
    input_shape: tuple[int, ...]
    accelerator: str


def make_task(data: str, data_dir: str | os.PathLike[str] | None, quick: bool, seed: int) -> Task:
    if data == "digits":
        return Task(
            search_space={
                "width": Categorical([8, 16, 32, 48]),
                "lr": Float(0.01, 0.5, log=True, grid=8),
                "weight_decay": Float(1e-5, 1e-2, log=True, grid=4),
                "batch_size": Categorical([32, 64, 128]),
            },
            model_fn=_seeded(seed, DigitsCNN),
            datamodule_fn=lambda cfg: HeldOutDigitsDataModule(batch_size=cfg["batch_size"], seed=seed),
            input_shape=(1, 1, 8, 8),
            accelerator="cpu",  # a GPU only adds launch overhead to an 8x8 CNN
        )
    arrays = load_cifar10(data_dir)  # decoded once, shared by every trial and the final fit
    val_size = 1000 if quick else 5000
    accelerator = "cpu" if quick else "auto"
    # channels_last speeds up GPUs; on the CPU (torch 2.14) the backward of a stride-2 1x1 conv with 2-4 input
    # channels in channels_last aborts the process, and factorized downsampling layers can have such small ranks.
    channels_last = not quick and torch.cuda.is_available()
    return Task(
        search_space={
            "width": Categorical([0.125, 0.1875] if quick else [0.125, 0.25, 0.5]),
            "lr": Float(0.02, 0.5, log=True, grid=8),
            "weight_decay": Float(1e-5, 1e-3, log=True, grid=4),
            "batch_size": Categorical([64, 128] if quick else [128, 256]),
        },
        model_fn=_seeded(seed, CIFARResNet18),
        datamodule_fn=lambda cfg: CIFAR10DataModule(
            arrays, batch_size=cfg["batch_size"], val_size=val_size, seed=seed, channels_last=channels_last
        ),
        input_shape=(1, 3, 32, 32),
        accelerator=accelerator,
    )


def _seeded(seed: int, model_class: Callable[..., LightningModule]) -> Callable[[dict[str, Any]], LightningModule]:
    # Every trial starts from the same initialisation (the datamodule already seeds the batches), so trials differ
    # only by their config and the demo picks the same config on every run.
    def build(config: dict[str, Any]) -> LightningModule:
        torch.manual_seed(seed)
        return model_class(width=config["width"], lr=config["lr"], weight_decay=config["weight_decay"])

    return build
