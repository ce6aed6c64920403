"""The flow shared by the callbacks that rewrite a model's structure in stages during ``fit``.

:class:`StagedRewriteCallback` is to :class:`~tetra_lightning.callbacks.TensorCompressionCallback`,
:class:`~tetra_lightning.callbacks.PruningCallback` and :class:`~tetra_lightning.callbacks.LowRankCallback` what
Lightning's ``BaseFinetuning`` is to its fine-tuning callbacks: it owns the hooks and the sequence, a subclass
only says what to change now (:meth:`~StagedRewriteCallback.decide_stage`). Every stage, at the start of an epoch
of its :class:`StageSchedule` (never during the sanity check), goes:

1. rank 0 (or the only process) measures the model (:func:`tetra_lightning.report.model_report`), lets the
   subclass rewrite it, records the history entries on the module and measures again;
2. the entries, per-layer rows and summary are broadcast; the other ranks replay the entries
   (:func:`tetra_lightning.checkpoint.replay_history`);
3. every rank moves the module to its device, takes rank 0's weights, re-wraps DDP and rebuilds the optimizers
   (:func:`~tetra_lightning.callbacks._surgery.after_rewrite`);
4. the callback keeps the history, the rows and the summary (its state, resumable) and logs the numbers on rank
   zero (``<metric_prefix>/params_before``, ..., a ``<metric_prefix>/layers`` table for loggers with
   ``log_table``).

The checkpoint carries the module's history (``checkpoint["tetra_lightning"]["history"]``), which is replayed
on a fresh model before its weights load (``Trainer.fit(ckpt_path=...)``, ``load_from_checkpoint`` with
:class:`~tetra_lightning.checkpoint.CompressibleMixin`, ``ddp_spawn``'s launching process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tetra_lightning.callbacks._checks import check_int, is_int
from tetra_lightning.callbacks._surgery import (
    after_rewrite,
    broadcast_object,
    check_strategy,
    first_input,
    install_restore_hook,
    is_distributed,
    is_spawned,
    remove_restore_hook,
    replay_from_trainer_ckpt,
    ship_history_with_state_dict,
)
from tetra_lightning.checkpoint import (
    CHECKPOINT_KEY,
    CompressibleMixin,
    applied_history,
    record_history,
    replay_history,
)
from tetra_lightning.report import ModelReport, compare, model_report

__all__ = ["StageChange", "StageSchedule", "StagedRewriteCallback", "check_schedule_fits", "format_summary"]

_SIZES = ("params", "bytes", "macs")


@dataclass(frozen=True)
class StageSchedule:
    """The epochs at whose start a staged callback rewrites the model.

    Either a finite, increasing tuple of ``epochs`` (stage ``k`` at ``epochs[k]``), or, with ``epochs=None``, a
    stage at the start of every epoch from ``open_from`` on. A stage that could not run at its epoch (a resume
    that starts later) runs at the next epoch start, one stage per epoch.

    Build it with :meth:`regular`, :meth:`listed` or :meth:`every_epoch`, whose errors name the arguments the
    user gave.

    Attributes:
        epochs: the stage epochs, or ``None`` for an open-ended schedule.
        open_from: first stage epoch of an open-ended schedule.
        description: how the user gave it, for messages (e.g. ``"start_epoch=1, steps=2"``).

    Raises:
        ValueError: for epochs that are not increasing ints >= 0.

    Example:
        >>> schedule = StageSchedule.regular(start_epoch=1, steps=3, epochs_between_steps=2)
        >>> schedule.epochs, schedule.due(stages_done=1, epoch=3), schedule.due(stages_done=1, epoch=2)
        ((1, 3, 5), True, False)
        >>> StageSchedule.every_epoch(1).due(stages_done=4, epoch=5), StageSchedule.listed([4, 2]).epochs
        (True, (2, 4))
    """

    epochs: tuple[int, ...] | None = (1,)
    open_from: int = 1
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.epochs is not None:
            epochs = tuple(self.epochs)
            if not all(is_int(e) and e >= 0 for e in epochs) or list(epochs) != sorted(set(epochs)):
                raise ValueError(
                    f"`epochs` must be increasing ints >= 0, got {self.epochs!r}. Pass e.g. epochs=(1, 3)."
                )
            object.__setattr__(self, "epochs", epochs)
        check_int("open_from", self.open_from, 0)
        if not self.description:
            described = f"epochs={list(self.epochs)}" if self.epochs is not None else f"every epoch from {self.open_from}"
            object.__setattr__(self, "description", described)

    @classmethod
    def regular(cls, start_epoch: int, steps: int = 1, epochs_between_steps: int = 1) -> StageSchedule:
        """``steps`` stages, the first at ``start_epoch``, one every ``epochs_between_steps`` epochs.

        Raises:
            ValueError: for ``start_epoch < 0``, ``steps < 1`` or ``epochs_between_steps < 1``.
        """
        check_int("start_epoch", start_epoch, 0, "Pass e.g. start_epoch=1 to train dense for one epoch first.")
        check_int("steps", steps, 1, "Pass steps=1 for a one-shot rewrite.")
        check_int("epochs_between_steps", epochs_between_steps, 1, "Pass e.g. 1.")
        return cls(
            epochs=tuple(start_epoch + k * epochs_between_steps for k in range(steps)),
            description=f"start_epoch={start_epoch}, steps={steps}, epochs_between_steps={epochs_between_steps}",
        )

    @classmethod
    def listed(cls, epochs: Sequence[int], argument: str = "epochs", minimum: int = 0) -> StageSchedule:
        """A stage at the start of each listed epoch (sorted, duplicates dropped).

        Raises:
            ValueError: for anything but a sequence of ints ``>= minimum``, naming ``argument``.
        """
        if isinstance(epochs, (str, bytes)) or not all(is_int(e) and e >= minimum for e in epochs):
            raise ValueError(
                f"`{argument}` must be a sequence of ints >= {minimum} (epochs at whose start to rewrite), got "
                f"{epochs!r}. Pass e.g. {argument}=[2, 4, 6]."
            )
        ordered = tuple(sorted(set(epochs)))
        return cls(epochs=ordered, description=f"{argument}={list(ordered)}")

    @classmethod
    def every_epoch(cls, start: int = 1) -> StageSchedule:
        """A stage at the start of every epoch from ``start`` on."""
        return cls(epochs=None, open_from=start, description=f"every epoch from {start}")

    @property
    def steps(self) -> int | None:
        """Number of stages (``None``: open-ended)."""
        return None if self.epochs is None else len(self.epochs)

    @property
    def last_epoch(self) -> int | None:
        """Epoch of the last stage (``None``: open-ended or empty)."""
        return self.epochs[-1] if self.epochs else None

    def stage_epoch(self, stage: int) -> int:
        """Epoch at whose start stage ``stage`` (0-based) is due."""
        return self.open_from + stage if self.epochs is None else self.epochs[stage]

    def finished(self, stages_done: int) -> bool:
        """Whether every stage has run."""
        return self.epochs is not None and stages_done >= len(self.epochs)

    def due(self, stages_done: int, epoch: int) -> bool:
        """Whether the next stage (after ``stages_done``) runs at the start of ``epoch``."""
        return not self.finished(stages_done) and epoch >= self.stage_epoch(stages_done)


def check_schedule_fits(trainer: pl.Trainer, schedule: StageSchedule, owner: str, action: str) -> None:
    """Raises ``MisconfigurationException`` when the Trainer stops before the schedule's last stage.

    Args:
        trainer: the Trainer (``max_epochs`` of ``None`` or ``-1`` never stops early).
        schedule: the stages.
        owner: the callback's name, for the message.
        action: what happens at a stage, e.g. ``"prune"``.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> check_schedule_fits(trainer, StageSchedule.regular(2), "PruningCallback", "prune")
        Traceback (most recent call last):
        ...
        lightning.fabric.utilities.exceptions.MisconfigurationException: PruningCallback would prune at epoch 2 ...
    """
    max_epochs, last = trainer.max_epochs, schedule.last_epoch
    if max_epochs is not None and max_epochs >= 0 and last is not None and last >= max_epochs:
        raise MisconfigurationException(
            f"{owner} would {action} at epoch {last} ({schedule.description}) but the Trainer stops after "
            f"max_epochs={max_epochs}. Start earlier or raise `max_epochs` to at least {last + 1} (better: leave "
            "epochs to fine-tune)."
        )


@dataclass
class StageChange:
    """What :meth:`StagedRewriteCallback.decide_stage` changed in the module, on this process.

    Attributes:
        entries: the history entries of the rewrites just applied (JSON-safe; replayed on the other ranks).
        rows: one row per changed layer for :attr:`StagedRewriteCallback.layer_table`.
        info: extra values for the stage's summary (e.g. the allocation strategy used).
    """

    entries: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _sizes(report: ModelReport) -> dict[str, int]:
    return {key: int(getattr(report, key)) for key in _SIZES if getattr(report, key) is not None}


def _report(sizes: dict[str, int]) -> ModelReport:
    return ModelReport(
        params=sizes["params"], trainable_params=sizes["params"], bytes=sizes["bytes"], macs=sizes.get("macs")
    )


class StagedRewriteCallback(Callback):
    """Base of the callbacks that rewrite the model's structure in stages during ``fit`` (see the module doc).

    A subclass sets the class attributes and implements :meth:`decide_stage`; it may override :meth:`prepare`
    (checks and initial rewrites at ``setup("fit")``), :meth:`stage_summary` and :meth:`format_stage`, and extend
    :meth:`state_dict` / :meth:`load_state_dict` (read with ``.get``: old checkpoints still load).

    Args:
        schedule: when the stages run.
        example_input: input for measuring MACs (and tracing, where the subclass needs it); defaults to the
            module's ``example_input_array`` or the first training batch's inputs.
        verbose: print a summary on rank zero after every stage.

    Attributes:
        history: the structural history entries this callback applied, in order.
        layer_table: the per-layer rows of every stage.
        summary: the last stage's numbers (``params_before``, ``params_after``, ``params_dense``,
            ``params_ratio``, the same for ``bytes`` and ``macs``, ``stage``, and the subclass's extras).
        stages_done: how many stages have run.
        rewrite_epochs: the epochs at whose start they ran.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from tetra_lightning.decompose import SVDConfig, compress_
        >>> class HalveRanks(StagedRewriteCallback):
        ...     metric_prefix = "halve"
        ...     def decide_stage(self, trainer, pl_module, stage, example):
        ...         return StageChange(compress_(pl_module, SVDConfig(rank=0.5)))
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(32, 32)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.fc(batch[0]).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        ...     def train_dataloader(self):
        ...         return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 32)), batch_size=4)
        >>> callback = HalveRanks(StageSchedule.regular(start_epoch=1), verbose=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net())
        >>> callback.stages_done, callback.summary["params_before"], callback.summary["params_after"]
        (1, 1056, 544)
    """

    #: Prefix of the logged metrics and table.
    metric_prefix: ClassVar[str] = "staged"
    #: What a stage does, for messages ("would <action> at epoch ...").
    action: ClassVar[str] = "rewrite the model"
    #: Columns of the per-layer table sent to loggers with ``log_table``.
    table_columns: ClassVar[tuple[str, ...]] = ("stage", "name")
    #: Raise at a stage when no example input is known (for subclasses that trace the model).
    needs_example: ClassVar[bool] = False

    def __init__(self, schedule: StageSchedule, *, example_input: Any = None, verbose: bool = True) -> None:
        if not isinstance(schedule, StageSchedule):
            raise TypeError(f"`schedule` must be a StageSchedule, got {type(schedule).__name__}.")
        self.schedule = schedule
        self.example_input = example_input
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        self.layer_table: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.stages_done = 0
        self.rewrite_epochs: list[int] = []
        self._dense: dict[str, int] = {}
        self._batch_example: Any = None
        # Shape and dtype of the first training batch's inputs, kept in the state: a fit resumed at a stage epoch
        # runs the stage before it sees a batch.
        self._example_spec: dict[str, Any] | None = None
        self._mixin_hint_given = False

    @property
    def name(self) -> str:
        """The class name, for messages."""
        return type(self).__name__

    # ------------------------------------------------------------------------------------------------------
    # what subclasses implement
    # ------------------------------------------------------------------------------------------------------
    def decide_stage(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, example: Any
    ) -> StageChange:
        """Rewrites ``pl_module`` for stage ``stage`` on this process (rank 0) and returns what changed.

        Runs only on rank 0 (or the only process); the base replays the returned entries on the other ranks.
        ``example`` is the example input on the module's device, or ``None`` when none is known.
        """
        raise NotImplementedError(f"{self.name} must implement `decide_stage`.")

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks the module and applies initial rewrites, at ``setup("fit")`` after a checkpoint's history."""

    def stage_summary(self, stage: int, before: ModelReport, after: ModelReport) -> dict[str, Any]:
        """The numbers of a stage: sizes before and after, of the model before the first stage, and ratios."""
        dense = _report(self._dense)
        summary: dict[str, Any] = {"stage": stage}
        for key in _SIZES:
            if getattr(before, key) is not None and getattr(after, key) is not None:
                summary[f"{key}_before"], summary[f"{key}_after"] = getattr(before, key), getattr(after, key)
            if key in self._dense:
                summary[f"{key}_dense"] = self._dense[key]
        summary.update({key: value for key, value in compare(dense, after).items() if value is not None})
        return summary

    def format_stage(self, trainer: pl.Trainer, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
        """The text printed on rank zero after a stage when ``verbose`` (empty: print nothing)."""
        return f"{self.name}: {format_summary(summary)}"

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer, self.name)
            check_schedule_fits(trainer, self.schedule, self.name, self.action)
        install_restore_hook(pl_module)
        replay_from_trainer_ckpt(trainer, pl_module)
        if stage == "fit":
            self.prepare(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        remove_restore_hook(pl_module)
        if stage == "fit" and self.history and is_spawned(trainer):
            ship_history_with_state_dict(pl_module, applied_history(pl_module))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_example is None and self.example_input is None:
            self._batch_example = first_input(batch)
            if isinstance(self._batch_example, torch.Tensor):
                self._example_spec = {
                    "shape": list(self._batch_example.shape),
                    "dtype": str(self._batch_example.dtype).removeprefix("torch."),
                }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.schedule.due(self.stages_done, trainer.current_epoch):
            self.run_stage(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        history = applied_history(pl_module)
        checkpoint.setdefault(CHECKPOINT_KEY, {})["history"] = [dict(entry) for entry in history]
        if history and not isinstance(pl_module, CompressibleMixin) and not self._mixin_hint_given:
            self._mixin_hint_given = True
            owner = type(pl_module).__name__
            rank_zero_warn(
                f"{self.name}: the checkpoints of this run hold the rewritten structure of {owner}, which a freshly "
                f"built {owner} lacks. `{owner}.load_from_checkpoint` needs `class {owner}(CompressibleMixin, "
                f"LightningModule)` to rebuild it before the weights load; without the mixin, call "
                f"`restore_from_checkpoint({owner}(...), path)`. (`Trainer.fit(ckpt_path=...)` with this callback "
                "works either way.)"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(entry) for entry in self.history],
            "stages_done": self.stages_done,
            "rewrite_epochs": list(self.rewrite_epochs),
            "layer_table": [dict(row) for row in self.layer_table],
            "summary": dict(self.summary),
            "dense": dict(self._dense),
            "example": None if self._example_spec is None else dict(self._example_spec),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
        self.rewrite_epochs = [int(epoch) for epoch in state_dict.get("rewrite_epochs", [])]
        self.stages_done = int(state_dict.get("stages_done", len(self.rewrite_epochs)))
        self.layer_table = [dict(row) for row in state_dict.get("layer_table", [])]
        self.summary = dict(state_dict.get("summary", {}))
        self._dense = {key: int(value) for key, value in state_dict.get("dense", {}).items()}
        example = state_dict.get("example")
        self._example_spec = dict(example) if example else None

    # ------------------------------------------------------------------------------------------------------
    # the sequence
    # ------------------------------------------------------------------------------------------------------
    def run_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs the next stage of the schedule now."""
        stage = self.stages_done
        self.rewrite(trainer, pl_module, stage, self.decide_stage)
        self.stages_done = stage + 1
        self.rewrite_epochs.append(trainer.current_epoch)

    def rewrite(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: int,
        decide: Callable[[pl.Trainer, pl.LightningModule, int, Any], StageChange],
    ) -> None:
        """Rank 0 decides with ``decide``, every rank applies the same change, the Trainer follows, it is logged.

        :meth:`run_stage` passes :meth:`decide_stage`; a subclass passes its own ``decide`` for a rewrite outside
        the schedule (e.g. turning factorized layers back into dense ones), which then is not counted as a stage.
        """
        distributed = is_distributed(trainer)
        payload: dict[str, Any] | None = None
        if trainer.is_global_zero or not distributed:
            example = self.example_for(pl_module)
            before = self._measure(pl_module, example)
            if not self._dense:
                self._dense = _sizes(before)
            change = decide(trainer, pl_module, stage, example)
            record_history(pl_module, change.entries)
            after = self._measure(pl_module, example)
            payload = {
                "entries": change.entries,
                "rows": change.rows,
                "summary": {**self.stage_summary(stage, before, after), **change.info},
                "dense": dict(self._dense),
            }
        payload = broadcast_object(trainer, payload)
        assert payload is not None
        if distributed and not trainer.is_global_zero:
            replay_history(pl_module, applied_history(pl_module) + payload["entries"])
            self._dense = dict(payload["dense"])
        if payload["entries"]:
            after_rewrite(trainer, pl_module)
        self.history.extend(payload["entries"])
        self.layer_table.extend(payload["rows"])
        self.summary = payload["summary"]
        self._log(trainer, pl_module, payload["summary"], payload["rows"])

    def example_for(self, pl_module: pl.LightningModule) -> Any:
        """The example input on the module's device: ``example_input``, ``example_input_array`` or a batch's.

        Raises:
            MisconfigurationException: when none is known and :attr:`needs_example` is set.
        """
        example = self.example_input
        if example is None:
            example = getattr(pl_module, "example_input_array", None)
        if example is None:
            example = self._batch_example
        if example is None and self._example_spec is not None:
            # Resumed before any batch: an input of the recorded shape and dtype traces the same graph.
            example = torch.zeros(self._example_spec["shape"], dtype=getattr(torch, self._example_spec["dtype"]))
        if example is None:
            if self.needs_example:
                raise MisconfigurationException(
                    f"{self.name} needs an example input to trace the model: pass `example_input=` or set "
                    "`example_input_array` on the LightningModule."
                )
            return None
        device = next(pl_module.parameters()).device
        if isinstance(example, torch.Tensor):
            return example.to(device)
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in example)

    # ------------------------------------------------------------------------------------------------------
    # the errors and warnings every staged callback gives in the same words
    # ------------------------------------------------------------------------------------------------------
    def require_layers(
        self, pl_module: pl.LightningModule, found: bool, verb: str, kinds: str, *, qualifier: str = "", fix: str
    ) -> None:
        """Raises ``MisconfigurationException`` at setup when the module has nothing the callback can rewrite.

        Args:
            pl_module: the module.
            found: whether any layer to rewrite was found (nothing happens then).
            verb: what the callback does, e.g. ``"prune"``.
            kinds: the layer types it looks for, e.g. ``"nn.Linear / nn.Conv2d"``.
            qualifier: e.g. ``"accepted by `filter_fn` "`` when the user narrowed the choice.
            fix: the sentence that says what to do.
        """
        if found:
            return
        present = sorted({type(m).__name__ for m in pl_module.modules()} - {type(pl_module).__name__})
        raise MisconfigurationException(
            f"{self.name} found nothing to {verb}: no {kinds} layer {qualifier}in {type(pl_module).__name__} "
            f"(it has: {', '.join(present) or 'no submodules'}). {fix}"
        )

    def warn_unreachable(
        self, stage: int, argument: str, target: float, before: int, best: int, unit: str, fix: str
    ) -> None:
        """Warns (rank zero) that a stage cannot reach the ratio the user asked for and goes as far as it can."""
        rank_zero_warn(
            f"{self.name}: {argument}={target:.3g} is not reachable at stage {stage} ({before} -> at best {best} "
            f"{unit}); going as far as possible. {fix}"
        )

    def warn_unchanged(self, stage: int, done: str, why: str) -> None:
        """Warns (rank zero) that a stage changed nothing, e.g. ``done="pruned"``, and why."""
        rank_zero_warn(f"{self.name}: nothing was {done} at stage {stage}: {why}")

    def _measure(self, pl_module: pl.LightningModule, example: Any) -> ModelReport:
        try:
            return model_report(pl_module, example, latency=False, print_table=False)
        except Exception as error:  # MACs are informative only; a module that cannot run alone is fine
            rank_zero_warn(f"{self.name} could not count MACs ({error!r}); logging params/bytes.")
            return model_report(pl_module, None, latency=False, print_table=False)

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, summary: dict[str, Any], rows: list[dict[str, Any]]
    ) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(
                    f"{self.metric_prefix}/{key}", float(value), on_step=False, on_epoch=True, rank_zero_only=True
                )
        if not trainer.is_global_zero:
            return
        if rows:
            data = [[row.get(column) for column in self.table_columns] for row in rows]
            data = [[str(v) if isinstance(v, (list, tuple)) else v for v in row] for row in data]
            for logger in trainer.loggers:
                log_table = getattr(logger, "log_table", None)
                if callable(log_table):
                    log_table(
                        key=f"{self.metric_prefix}/layers",
                        columns=list(self.table_columns),
                        data=data,
                        step=trainer.global_step,
                    )
        if self.verbose:
            text = self.format_stage(trainer, summary, rows)
            if text:
                rank_zero_info(text)


def format_summary(summary: dict[str, Any], ratio_key: str = "params_ratio") -> str:
    """One line: the stage, each size before -> after, and the ratio to the model before the first stage.

    Example:
        >>> format_summary({"stage": 0, "params_before": 4000, "params_after": 1000, "params_ratio": 4.0})
        'stage 0, params 4,000 -> 1,000, params ratio 4.00x'
    """
    parts = [f"stage {summary.get('stage')}"]
    for key in _SIZES:
        if f"{key}_before" in summary:
            parts.append(f"{key} {summary[f'{key}_before']:,} -> {summary[f'{key}_after']:,}")
    label = "ratio" if ratio_key == "ratio" else ratio_key.replace("_", " ")
    parts.append(f"{label} {summary.get(ratio_key, math.nan):.2f}x")
    return ", ".join(parts)
