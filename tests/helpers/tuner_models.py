"""Tiny real models and data for the tuner tests (no tests here): an MLP on scikit-learn's digits."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@lru_cache(maxsize=1)
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:1600], y[1200:1600]


class DigitsData(LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        x, y, _, _ = digits_tensors()
        generator = torch.Generator().manual_seed(1)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        _, _, x, y = digits_tensors()
        return DataLoader(TensorDataset(x, y), batch_size=200)


class TinyMLP(LightningModule):
    """An MLP whose accuracy after a few dozen steps depends strongly on ``lr`` and ``width``."""

    def __init__(
        self, lr: float = 1e-2, width: int = 32, depth: int = 1, fail: bool = False, nan: bool = False
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        size = 64
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, 10))
        self.net = nn.Sequential(*layers)
        self.lr, self.fail, self.nan = lr, fail, nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.fail:
            raise RuntimeError("this config always crashes")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.nan:
            loss = loss * math.nan
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


FAST_TRAINER = {
    "max_epochs": 2,
    "limit_train_batches": 8,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "logger": False,
    "enable_checkpointing": False,
    "accelerator": "cpu",
    "devices": 1,
}
