"""A tiny BoringModel-like LightningModule for callback tests.

The task is learnable and fully deterministic: the inputs are fixed Gaussian images drawn from a seeded generator
whose channel means depend on the label, so a small conv net fits it in a few epochs on a CPU.
``configure_optimizers`` returns SGD with momentum and a per-epoch cosine LR schedule, which is what the
structural callbacks must rebuild after they rewrite the model.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_dataset(
    num_samples: int = 256,
    image_size: int = 8,
    num_classes: int = 4,
    seed: int = 0,
) -> TensorDataset:
    """Builds a fixed, learnable classification data set of small images.

    Args:
        num_samples: number of examples.
        image_size: height and width of the 3-channel images.
        num_classes: number of classes.
        seed: seed of the generator that draws inputs and labels.

    Returns:
        A ``TensorDataset`` of ``(x, y)`` with ``x`` of shape ``(num_samples, 3, image_size, image_size)``.

    Example:
        >>> ds = make_dataset(num_samples=8)
        >>> tuple(ds.tensors[0].shape), int(ds.tensors[1].max()) < 4
        ((8, 3, 8, 8), True)
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    # Each class shifts the channel means of Gaussian noise by its own random prototype: a conv net with global
    # average pooling learns it in a few epochs, and its loss keeps falling after a compression shock.
    prototypes = torch.randn(num_classes, 3, generator=generator)
    noise = torch.randn(num_samples, 3, image_size, image_size, generator=generator)
    inputs = noise + 2.0 * prototypes[labels][:, :, None, None]
    return TensorDataset(inputs, labels)


class BoringConvNet(nn.Module):
    """A small conv net: a 3-channel stem, two wider 3x3 convs, a 1x1 conv and a linear head.

    Args:
        width: channels of the stem; the inner convs use ``2 * width``.
        num_classes: outputs of the head.

    Example:
        >>> net = BoringConvNet(width=8)
        >>> net(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, width: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        wide = 2 * width
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, wide, 3, padding=1)
        self.conv2 = nn.Conv2d(wide, wide, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(wide, wide, 1)
        self.head = nn.Linear(wide, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


class BoringConvModule(pl.LightningModule):
    """A LightningModule around :class:`BoringConvNet` with SGD + cosine LR and fixed synthetic data.

    Args:
        width: stem channels of the net.
        lr: initial learning rate of SGD.
        max_epochs_schedule: ``T_max`` of the cosine schedule (epochs).
        batch_size: batch size of the train/val loaders.
        num_samples: size of the synthetic data set.
        seed: seed of the data set.

    Example:
        >>> module = BoringConvModule(width=8)
        >>> x, y = next(iter(module.train_dataloader()))
        >>> module(x).shape
        torch.Size([32, 4])
    """

    def __init__(
        self,
        width: int = 16,
        lr: float = 0.02,
        max_epochs_schedule: int = 10,
        batch_size: int = 32,
        num_samples: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = BoringConvNet(width=width)
        self.example_input_array = torch.zeros(1, 3, 8, 8)
        self.epoch_losses: dict[int, list[float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.epoch_losses.setdefault(self.current_epoch, []).append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def mean_epoch_loss(self, epoch: int) -> float:
        """Mean training loss of one epoch (as recorded on this process)."""
        losses = self.epoch_losses[epoch]
        return sum(losses) / len(losses)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.hparams.max_epochs_schedule
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _loader(self, shuffle: bool) -> DataLoader:
        dataset = make_dataset(num_samples=self.hparams.num_samples, seed=self.hparams.seed)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
