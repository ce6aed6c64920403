"""LRRewarmCallback: ramp the learning rate up again after every structural rewrite of the model."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.hooks import RemovableHandle

from tetra_lightning.callbacks._checks import check_int, check_number
from tetra_lightning.checkpoint import applied_history

__all__ = ["LRRewarmCallback"]


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    return optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


class LRRewarmCallback(Callback):
    """After each structural rewrite, the next ``steps`` optimizer steps use a linearly rising fraction of the LR.

    A rewrite replaces layers by new ones whose optimizer state starts empty (no momentum, no Adam moments), in
    the middle of a schedule whose learning rate may still be high. A short warm-up, as at the start of training,
    lets the new factors settle before they take full steps. Step ``k`` (0-based) after the rewrite uses
    ``lr * (start_factor + (1 - start_factor) * k / steps)``, where ``lr`` is what the user's schedule says.

    **When.** A rewrite is any growth of the module's structural history
    (:func:`~tetra_lightning.checkpoint.applied_history`), which every structural callback of this package records
    (:class:`~tetra_lightning.callbacks.TensorCompressionCallback`, :class:`~tetra_lightning.callbacks.PruningCallback`,
    :class:`~tetra_lightning.callbacks.LowRankCallback`); it is checked at every training batch start, so the
    callbacks' order does not matter. :meth:`start_warmup` begins a warm-up by hand, after a rewrite of your own.

    **How.** The scaling goes through PyTorch's optimizer step hooks (``register_step_pre_hook`` /
    ``register_step_post_hook``) on the optimizers Lightning rebuilt: the pre-hook scales each param group's ``lr``,
    the post-hook puts the schedule's value back. The LR schedulers never see the scaled values, so chainable
    schedulers (``CosineAnnealingLR``, ``StepLR``) and closed-form ones (``OneCycleLR``, ``LambdaLR``) continue
    exactly where the rewrite left them, and the optimizers' ``lr`` read between steps (``LearningRateMonitor``)
    is the schedule's; inside ``optimizer.step`` (which runs Lightning's closure: ``training_step``, backward,
    ``on_before_optimizer_step``) it is the scaled one. The position inside a warm-up is part of the callback state: a resumed run finishes it.

    Args:
        steps: optimizer steps of each warm-up, >= 1 (e.g. a fraction of an epoch's steps).
        start_factor: fraction of the scheduled LR at the first step after a rewrite, in [0, 1).
        verbose: print a line on rank zero when a warm-up starts.

    Attributes:
        rewarms: how many warm-ups have started.

    Raises:
        ValueError: for ``steps < 1`` or ``start_factor`` outside [0, 1).

    Example:
        >>> import lightning.pytorch as pl
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from tetra_lightning.callbacks import TensorCompressionCallback
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))
        ...     def training_step(self, batch, batch_idx):
        ...         return nn.functional.cross_entropy(self.body(batch[0]), batch[1])
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(32, 64), torch.randint(0, 4, (32,))), batch_size=8)
        >>> compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
        >>> rewarm = LRRewarmCallback(steps=2, start_factor=0.5)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[compression, rewarm], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net())
        >>> rewarm.rewarms, rewarm.factors_used
        (1, [0.5, 0.75])
        >>> trainer.optimizers[0].param_groups[0]["lr"]  # the schedule's value, never the scaled one
        0.1
    """

    def __init__(self, steps: int, start_factor: float = 0.1, *, verbose: bool = False) -> None:
        check_int("steps", steps, 1, "Pass e.g. steps=100 (optimizer steps of each warm-up).")
        check_number("start_factor", start_factor, 0.0, 1.0, low_open=False, hint="Pass e.g. start_factor=0.1.")
        self.steps = steps
        self.start_factor = float(start_factor)
        self.verbose = verbose
        self.rewarms = 0
        #: The factors applied in the current (or last) warm-up, one per optimizer step, for inspection.
        self.factors_used: list[float] = []
        self._history_len: int | None = None
        self._done: int | None = None  # steps of the current warm-up already taken; None: not warming up
        self._handles: list[RemovableHandle] = []
        self._saved: list[tuple[dict[str, Any], Any]] = []

    def factor(self, step: int) -> float:
        """LR multiplier at optimizer step ``step`` (0-based) of a warm-up (1.0 once it is over).

        Example:
            >>> [LRRewarmCallback(steps=4, start_factor=0.2).factor(k) for k in range(5)]
            [0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        """
        if step >= self.steps:
            return 1.0
        return self.start_factor + (1.0 - self.start_factor) * step / self.steps

    @property
    def warming_up(self) -> bool:
        """Whether a warm-up is in progress."""
        return self._done is not None

    def start_warmup(self, trainer: pl.Trainer) -> None:
        """Begins a warm-up now, on the Trainer's current optimizers (e.g. after a rewrite of your own)."""
        self._done = 0
        self.rewarms += 1
        self.factors_used = []
        self._attach(trainer)
        if self.verbose:
            rank_zero_info(
                f"LRRewarmCallback: warm-up {self.rewarms} over {self.steps} steps from {self.start_factor:g} x LR "
                f"(epoch {trainer.current_epoch})."
            )

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint's structure and this callback's state are restored, before any epoch starts.
        if self._history_len is None:
            self._history_len = len(applied_history(pl_module))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._done is not None:  # resumed in the middle of a warm-up
            self._attach(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        length = len(applied_history(pl_module))
        if length != self._history_len:
            self._history_len = length
            self.start_warmup(trainer)
        elif self._done is None and self._handles:
            self._detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    def state_dict(self) -> dict[str, Any]:
        return {"history_len": self._history_len, "done": self._done, "rewarms": self.rewarms}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history_len, done = state_dict.get("history_len"), state_dict.get("done")
        self._history_len = None if history_len is None else int(history_len)
        self._done = None if done is None else int(done)
        self.rewarms = int(state_dict.get("rewarms", 0))

    # ------------------------------------------------------------------------------------------------------
    # the optimizer hooks
    # ------------------------------------------------------------------------------------------------------
    def _attach(self, trainer: pl.Trainer) -> None:
        self._detach()
        optimizers = [_raw(optimizer) for optimizer in trainer.optimizers]
        for index, optimizer in enumerate(optimizers):
            self._handles.append(optimizer.register_step_pre_hook(self._scale))
            # the first optimizer's steps count the warm-up (automatic optimization has only one)
            self._handles.append(optimizer.register_step_post_hook(self._restore if index else self._restore_and_count))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _scale(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._done is None:
            return
        factor = self.factor(self._done)
        for group in optimizer.param_groups:
            self._saved.append((group, group["lr"]))
            group["lr"] = group["lr"] * factor

    def _restore(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in self._saved:
            group["lr"] = lr
        self._saved = []

    def _restore_and_count(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._restore(optimizer, args, kwargs)
        if self._done is None:
            return
        self.factors_used.append(self.factor(self._done))
        self._done += 1
        if self._done >= self.steps:
            self._done = None  # the hooks stay attached, idle, until the next batch (torch iterates over them now)
