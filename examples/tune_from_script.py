"""Tune a small CNN with TetraOptTuner: copy this script and swap in your own model and data.

Digits (scikit-learn's 8x8 images, bundled, no download) take a few minutes on a CPU; ``--quick`` about one.
``--data path/to/cifar10_jpeg_packed.npz`` tunes the same CNN on CIFAR-10 instead (use a GPU).

    python examples/tune_from_script.py --quick
    python examples/tune_from_script.py --budget 30 --max-epochs 5 --storage sqlite:///digits.db
    python examples/tune_from_script.py --data ../shared/data/cifar10/cifar10_jpeg_packed.npz --budget 40

Kill it at any time and run the same command again: finished trials are kept and the study continues.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from tetra_lightning.data import CIFAR10DataModule, DigitsDataModule, load_cifar10
from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner import TetraOptTuner, TuneResult


class LitCNN(LightningModule):
    """``depth`` conv blocks of ``width`` channels, global average pooling and a linear classifier."""

    def __init__(
        self, lr: float = 1e-2, width: int = 32, depth: int = 2, weight_decay: float = 5e-4,
        in_channels: int = 1, num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if block < depth - 1:
                layers.append(nn.MaxPool2d(2) if block < 2 else nn.Identity())
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True, weight_decay=self.hparams.weight_decay
        )


def main(argv: list[str] | None = None) -> TuneResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=20, help="trials to run (COMPLETE + PRUNED)")
    parser.add_argument("--max-epochs", type=int, default=4, help="epochs per trial")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute run: 6 trials of 2 short epochs")
    parser.add_argument("--data", default=None, help="CIFAR-10 file (packed .npz / subset .npz / folder)")
    parser.add_argument("--storage", default="sqlite:///tune_from_script.db", help="SQLAlchemy URL of the study")
    parser.add_argument("--study-name", default=None, help="default: digits-cnn or cifar10-cnn")
    parser.add_argument("--n-jobs", type=int, default=1, help="parallel worker processes (one GPU each)")
    parser.add_argument("--pruning", action="store_true", help="stop trials worse than the median early")
    parser.add_argument("--plot", default="tune_from_script.png", help="PNG with history and importances")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("tetra_lightning").setLevel(logging.INFO)

    budget, max_epochs, limit_batches = args.budget, args.max_epochs, 1.0
    if args.quick:
        budget, max_epochs, limit_batches = min(budget, 6), 2, 10

    search_space = {
        "lr": Float(1e-3, 0.5, log=True, grid=8),
        "width": Categorical([8, 16, 32, 64]),
        "depth": Int(1, 3),
        "batch_size": Categorical([32, 128]),
    }
    if args.data is None:
        in_channels, study_name = 1, args.study_name or "digits-cnn"

        def datamodule_fn(cfg: dict[str, Any]) -> DigitsDataModule:
            return DigitsDataModule(batch_size=cfg["batch_size"])
    else:
        in_channels, study_name = 3, args.study_name or "cifar10-cnn"
        arrays = load_cifar10(args.data)  # decoded once, shared by every trial
        search_space["batch_size"] = Categorical([128, 512])

        def datamodule_fn(cfg: dict[str, Any]) -> CIFAR10DataModule:
            return CIFAR10DataModule(arrays, batch_size=cfg["batch_size"], val_size=5000)

    def model_fn(cfg: dict[str, Any]) -> LitCNN:
        return LitCNN(lr=cfg["lr"], width=cfg["width"], depth=cfg["depth"], in_channels=in_channels)

    tuner = TetraOptTuner(
        search_space, monitor="val_acc", mode="max", budget=budget, storage=args.storage, study_name=study_name,
        objective="best", pruning=args.pruning, n_jobs=args.n_jobs,
    )
    result = tuner.fit(
        model_fn,
        datamodule_fn=datamodule_fn,
        trainer_kwargs={
            "max_epochs": max_epochs,
            "limit_train_batches": limit_batches,
            "logger": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
        },
    )
    columns = ["number", "state", "value"] + [f"params_{name}" for name in search_space]
    print(result.trials[columns].to_string(index=False))
    print(f"best val_acc {result.best_value:.4f} with {result.best_params}")
    print(f"plot: {result.plot(args.plot)}")
    return result


if __name__ == "__main__":
    main()
