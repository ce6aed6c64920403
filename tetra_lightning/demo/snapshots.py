"""The networks of the demo's stages: copies taken before each rewrite, and the int8 graph as a module."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

__all__ = ["Int8Network", "StageSnapshots"]


class StageSnapshots(Callback):
    """Keeps a copy of the network at the start of given epochs, before that epoch's rewrites.

    Lightning calls callbacks in list order, so list this one before the structural callbacks whose rewrites it
    should precede; a snapshot taken at the epoch where :class:`~tetra_lightning.callbacks.TensorCompressionCallback`
    starts is the dense network as it was trained so far. Copies are on the training device, in eval mode.

    Args:
        epochs: ``{stage_name: epoch}``; each stage is copied at the start of its epoch (never during the sanity
            check).
        submodule: attribute name of the network inside the LightningModule.

    Raises:
        ValueError: for an epoch that is not an int >= 0.

    Example:
        >>> import lightning.pytorch as pl
        >>> from tetra_lightning.data import DigitsDataModule
        >>> from tetra_lightning.models import DigitsCNN
        >>> snapshots = StageSnapshots({"after_one_epoch": 1})
        >>> trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[snapshots],
        ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(DigitsCNN(width=4), datamodule=DigitsDataModule())
        >>> snapshots.epochs_taken
        {'after_one_epoch': 1}
        >>> sum(p.numel() for p in snapshots.models["after_one_epoch"].parameters())
        4038
    """

    def __init__(self, epochs: Mapping[str, int], submodule: str = "net") -> None:
        for name, epoch in epochs.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(
                    f"`epochs[{name!r}]` must be an int >= 0 (the epoch at whose start to copy the network), "
                    f"got {epoch!r}."
                )
        self.epochs = dict(epochs)
        self.submodule = submodule
        self.models: dict[str, nn.Module] = {}
        self.epochs_taken: dict[str, int] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, epoch in self.epochs.items():
            if epoch == trainer.current_epoch and name not in self.models:
                self.models[name] = copy.deepcopy(pl_module.get_submodule(self.submodule)).eval()
                self.epochs_taken[name] = epoch


class Int8Network(nn.Module):
    """Holds a converted PT2E graph; ``train()``/``eval()`` are no-ops (exported graphs refuse them, and
    :func:`~tetra_lightning.report.model_report` switches modes)."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, x: Tensor) -> Tensor:
        return self.graph_module(x)

    def train(self, mode: bool = True) -> Int8Network:
        return self
