"""An ordinary Lightning script, plus the few lines that make its model smaller: factorize, prune, quantize.

Everything here is plain PyTorch Lightning (a LightningModule, a LightningDataModule over scikit-learn's bundled
digits, a Trainer) except the six lines marked ``# added``: one import, three callbacks, passing them
to the Trainer, and exporting the int8 model. ``examples/add_callbacks.diff`` is exactly that change, as a diff
against the plain script. Nothing in the model or the data changes, and the checkpoint the script saves still
loads: ``tetra_lightning.restore_from_checkpoint(LitCNN(), path)`` rebuilds the factorized, pruned
structure before the weights load.

    python examples/add_callbacks.py             # 12 epochs, about a minute on a CPU
    python examples/add_callbacks.py --quick     # 4 epochs, seconds

What the callbacks do, in one ``fit``: ``TensorCompressionCallback`` replaces the conv / linear layers by
factorized ones with 4x fewer parameters in total at the start of epoch 4 (``--quick``: 1), ``PruningCallback``
removes 30% of the channels at the start of epoch 8 (``--quick``: 2), the model fine-tunes after each step, and
``QuantizationCallback`` converts the trained network to int8 when ``fit`` ends. Each prints what it changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from tetra_lightning import PruningCallback, QuantizationCallback, TensorCompressionCallback  # added


class LitCNN(pl.LightningModule):
    """A small CNN for 8x8 images; ``self.net`` is the network (the part that gets compressed and quantized)."""

    def __init__(self, width: int = 32, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train")
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return [optimizer], [scheduler]


class DigitsData(pl.LightningDataModule):
    """scikit-learn's 1797 digits, split 1150 / 288 / 359 into train, validation and test."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        data = TensorDataset((x - x.mean()) / x.std(), torch.tensor(digits.target))
        self.train, self.val, self.test = random_split(data, [1150, 288, 359], torch.Generator().manual_seed(0))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=256)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="4 epochs (seconds)")
    parser.add_argument("--out", default="add_callbacks_out", help="folder for the checkpoint")
    args = parser.parse_args(argv)
    epochs = 4 if args.quick else args.epochs

    pl.seed_everything(0)
    model = LitCNN()
    data = DigitsData()
    compression = TensorCompressionCallback(target_ratio=4.0, start_epoch=epochs // 3)  # added
    pruning = PruningCallback(pruning_ratio=0.3, start_epoch=2 * epochs // 3)  # added
    quantization = QuantizationCallback(mode="int8")  # added
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        callbacks=[compression, pruning, quantization],  # added
    )
    trainer.fit(model, datamodule=data)
    (result,) = trainer.test(model, datamodule=data)
    trainer.save_checkpoint(Path(args.out) / "digits.ckpt")
    print(f"test accuracy {result['test_acc']:.4f}, checkpoint in {args.out}")
    print("int8 model:", quantization.export(Path(args.out) / "digits_int8.pt2"))  # added
    return {"trainer": trainer, "model": model, "datamodule": data, "test_acc": result["test_acc"]}


if __name__ == "__main__":
    main()
