"""A quiet CPU Trainer for callback tests, and a callback that saves each DDP rank's final state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from tetra_lightning.callbacks._surgery import optimizer_parameters


def quiet_trainer(tmp_path: Path, callbacks: list[Callback], max_epochs: int, **kwargs: Any) -> pl.Trainer:
    """A 1-device CPU Trainer without logger, checkpoints, progress bar or validation; ``kwargs`` override."""
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "callbacks": callbacks,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


class SaveStatePerRank(Callback):
    """Saves ``rank<i>.pt`` at the end of training: weights, optimizer/DDP parameter counts and ``extra(...)``."""

    def __init__(
        self, directory: str | Path, extra: Callable[[pl.Trainer, pl.LightningModule], dict[str, Any]] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.extra = extra

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            "state_dict": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "in_optimizer": len(optimizer_parameters(trainer)),
            "params": len(list(pl_module.parameters())),
            "ddp_params": len(list(trainer.strategy.model.parameters())),
        }
        if self.extra is not None:
            state.update(self.extra(trainer, pl_module))
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


def load_rank_states(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads what :class:`SaveStatePerRank` wrote for ranks 0 and 1 and checks they hold identical weights."""
    rank0, rank1 = (torch.load(Path(directory) / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert rank0["state_dict"].keys() == rank1["state_dict"].keys()
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key
    for state in (rank0, rank1):
        assert state["in_optimizer"] == state["params"] == state["ddp_params"]
    return rank0, rank1
