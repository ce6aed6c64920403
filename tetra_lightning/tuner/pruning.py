"""A Lightning callback that reports a monitored metric to an Optuna trial and stops hopeless trials."""

from __future__ import annotations

import math
from typing import Any

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer


class TrialPruningCallback(Callback):
    """Reports ``monitor`` to an Optuna trial after each validation epoch and stops the run when pruned.

    With the tuner's default pruner (``optuna.pruners.MedianPruner``) a trial stops when its value at
    an epoch is worse than the median of the earlier trials at the same epoch. The sanity-check
    validation is skipped, so it never reports a value from an untrained model. Instead of raising
    inside ``Trainer.fit`` (which would skip the loggers' teardown) the callback sets
    ``trainer.should_stop``; call :meth:`check_pruned` after ``fit`` to raise ``optuna.TrialPruned``.

    Args:
        trial: the running ``optuna.trial.Trial``.
        monitor: key of ``trainer.callback_metrics`` to report, e.g. ``"val_acc"``.

    Raises:
        ValueError: for an empty ``monitor``.
        TypeError: when ``trial`` is not an Optuna trial.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(direction="maximize")
        >>> callback = TrialPruningCallback(study.ask(), monitor="val_acc")
        >>> callback.pruned
        False
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a non-empty metric name such as 'val_acc', got {monitor!r}.")
        if not isinstance(trial, optuna.trial.BaseTrial):
            raise TypeError(f"`trial` must be an optuna trial, got {type(trial).__name__}.")
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.pruned_epoch: int | None = None
        self.last_value: float | None = None
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        current = trainer.callback_metrics.get(self.monitor)
        if current is None:
            # The tuner fails the trial with the list of available keys after fit; reporting nothing
            # here keeps the callback usable for metrics that only appear in later epochs.
            return
        value = float(current)
        epoch = int(trainer.current_epoch)
        self.last_value = value
        if epoch in self.reported or not math.isfinite(value):
            return  # several validations per epoch: Optuna keeps only the first report of a step
        self.reported[epoch] = value
        self.trial.report(value, step=epoch)
        should_prune = self.trial.should_prune()
        # Under DDP every rank must stop together: rank zero decides.
        should_prune = bool(trainer.strategy.broadcast(should_prune))
        if should_prune:
            self.pruned = True
            self.pruned_epoch = epoch
            trainer.should_stop = True

    def check_pruned(self) -> None:
        """Raises ``optuna.TrialPruned`` when the trial was stopped by the pruner."""
        if self.pruned:
            raise optuna.TrialPruned(
                f"Trial {self.trial.number} pruned at epoch {self.pruned_epoch} with {self.monitor}={self.last_value}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "pruned": self.pruned,
            "pruned_epoch": self.pruned_epoch,
            "last_value": self.last_value,
            "reported": dict(self.reported),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", False))
        self.pruned_epoch = state_dict.get("pruned_epoch")
        self.last_value = state_dict.get("last_value")
        self.reported = {int(k): float(v) for k, v in state_dict.get("reported", {}).items()}
