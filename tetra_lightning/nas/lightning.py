"""NATSLightningModule: train a NATS-Bench cell network with the benchmark's recipe (SGD + cosine)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from tetra_lightning.nas.spaces import build_nats_network

__all__ = ["NATSLightningModule"]


class NATSLightningModule(LightningModule):
    """A NATS-Bench network (topology or size space) trained by cross-entropy with SGD and a cosine schedule.

    The defaults are the NAS-Bench-201 recipe: Nesterov SGD, lr 0.1, momentum 0.9, weight decay 5e-4, cosine
    decay to 0 over the whole run (stepped per batch here, so short runs with ``limit_train_batches`` decay too).
    Logs ``train_loss``, ``train_acc``, ``val_loss`` and ``val_acc`` (accuracy as a fraction); the number of
    parameters is in :attr:`num_parameters`.

    Args:
        arch: an architecture of either space (see :func:`~tetra_lightning.nas.build_nats_network`): an official
            tss string, a size string ``"64:32:48:16:64"``, or a params dict / index with ``space``.
        num_classes: classifier outputs.
        C: first-stage channels (tss).
        N: cells per stage (tss).
        space: ``"tss"`` or ``"sss"`` when ``arch`` is a params dict or an index.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        nesterov: Nesterov momentum.
        min_lr: final learning rate of the cosine schedule.
        label_smoothing: cross-entropy label smoothing.

    Raises:
        ValueError: for a non-positive ``lr``, a negative ``weight_decay``/``min_lr``, a ``momentum`` outside
            [0, 1), or an architecture of neither space.

    Example:
        >>> module = NATSLightningModule("8:8:8:8:8", lr=0.05)
        >>> module(torch.zeros(2, 3, 32, 32)).shape, module.num_parameters
        (torch.Size([2, 10]), 11714)
    """

    def __init__(self, arch: Any, num_classes: int = 10, C: int = 16, N: int = 5, space: str | None = None,
                 lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = True,
                 min_lr: float = 0.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"`lr` must be positive, got {lr!r}. The NAS-Bench-201 recipe uses lr=0.1.")
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}. Pass e.g. momentum=0.9.")
        if weight_decay < 0 or min_lr < 0:
            raise ValueError(f"`weight_decay` and `min_lr` must be >= 0, got weight_decay={weight_decay!r}, "
                             f"min_lr={min_lr!r}.")
        if isinstance(arch, dict):
            arch = dict(arch)
        self.save_hyperparameters()
        self.net = build_nats_network(arch, num_classes, C, N, space=space)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    @property
    def num_parameters(self) -> int:
        """Parameters of the network (the benchmark's ``params`` x 1e6)."""
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay, nesterov=hp.nesterov and hp.momentum > 0)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
