"""PruningCallback: structural channel pruning mid-training (torch-pruning), iterative, with fine-tuning between."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tetra_lightning.callbacks._surgery import (
    broadcast_module_state,
    broadcast_object,
    first_input,
    install_restore_hook,
    is_distributed,
    rebuild_optimizers,
    remove_restore_hook,
    replay_from_trainer_ckpt,
    rewrap_ddp,
)
from tetra_lightning.checkpoint import (
    CHECKPOINT_KEY,
    applied_history,
    record_history,
)

__all__ = ["PruningCallback"]

FilterFn = Callable[[nn.Module, str], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PruningCallback(Callback):
    """Removes channels of the model's conv / linear layers mid-training, so that it really gets smaller.

    Thin wrapper over :func:`tetra_lightning.prune.prune_` (torch-pruning ``DependencyGraph`` + ``BasePruner``):
    coupled channels (conv -> BN -> next layer's inputs, residual adds, the Conv2d chains of factorized layers)
    are pruned together and the classifier keeps its outputs. At the start of epoch ``start_epoch`` (never during
    the sanity check) and then every ``epochs_between_steps`` epochs, ``steps`` times, each stage removes the
    fraction ``1 - (1 - pruning_ratio) ** (1 / steps)`` of the remaining channels, so ``pruning_ratio`` of the
    channels are gone after the last stage; with ``target_params_ratio`` stage ``k`` instead reaches
    ``target_params_ratio ** ((k + 1) / steps)`` fewer parameters than the dense model. The model fine-tunes
    between stages.

    After each stage the optimizers and LR schedulers are rebuilt through ``configure_optimizers`` (the state of
    untouched parameters and the schedule position carried over). Under DDP rank 0 decides, the other ranks replay
    its history, rank 0's weights are broadcast and the model is re-wrapped. The history (entries
    ``{"kind": "prune", ...}``) goes to ``checkpoint["tetra_lightning"]["history"]`` after any decomposition
    entries, so ``Trainer.fit(ckpt_path=...)`` on a fresh dense model rebuilds the pruned shapes before the
    weights load; for ``load_from_checkpoint`` use :class:`~tetra_lightning.prune.PrunableMixin` (or
    :func:`~tetra_lightning.prune.restore_from_checkpoint`).

    Logged on rank zero at each stage: ``pruning/params_before``, ``pruning/params_after``,
    ``pruning/bytes_before``, ``pruning/bytes_after``, ``pruning/macs_before``, ``pruning/macs_after``,
    ``pruning/params_ratio`` (dense / current) and ``pruning/stage``.

    Args:
        pruning_ratio: fraction of channels removed after the last stage, in (0, 1).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"`` or ``"taylor"`` (uses the gradients of the last training
            step, so it needs ``start_epoch >= 1``).
        start_epoch: epoch at whose start the first stage runs, >= 0.
        steps: number of pruning stages, >= 1.
        epochs_between_steps: epochs of fine-tuning between stages, >= 1.
        global_pruning: rank channels across layers instead of per layer.
        ignored_layers: names of modules (relative to the LightningModule) never pruned.
        round_to: keep channel counts multiples of this number.
        target_params_ratio: reach this dense / pruned parameter ratio instead of a channel ratio.
        max_pruning_ratio: no layer loses more than this fraction of its channels in one stage.
        keep_outputs: keep the output channels of the layers producing the model's output.
        filter_fn: ``filter_fn(module, fqn) -> bool``; conv / linear layers it rejects keep their outputs.
        example_input: input for tracing; defaults to ``example_input_array`` or the first training batch.
        verbose: print a one-line summary per stage on rank zero.

    Raises:
        ValueError: for a ratio outside (0, 1), an unknown importance, bad epochs or steps.

    Example:
        >>> from tests.helpers.boring import BoringConvModule  # doctest: +SKIP
        >>> trainer = pl.Trainer(max_epochs=3, callbacks=[PruningCallback(0.5, start_epoch=1)])  # doctest: +SKIP
        >>> trainer.fit(BoringConvModule())  # doctest: +SKIP
    """

    def __init__(
        self,
        pruning_ratio: float = 0.5,
        importance: str = "l1",
        start_epoch: int = 1,
        steps: int = 1,
        epochs_between_steps: int = 1,
        global_pruning: bool = False,
        ignored_layers: Sequence[str] | None = None,
        round_to: int | None = None,
        *,
        target_params_ratio: float | None = None,
        max_pruning_ratio: float = 0.9,
        keep_outputs: bool = True,
        filter_fn: FilterFn | None = None,
        example_input: Any = None,
        verbose: bool = True,
    ) -> None:
        from tetra_lightning.prune import check_prune_arguments

        check_prune_arguments(pruning_ratio, importance, round_to, target_params_ratio)
        if not _is_int(start_epoch) or start_epoch < 0:
            raise ValueError(
                f"`start_epoch` must be an int >= 0, got {start_epoch!r}. Pass e.g. start_epoch=1 to train dense "
                "for one epoch first."
            )
        if importance == "taylor" and start_epoch < 1:
            raise ValueError(
                "`importance='taylor'` uses the gradients of the last training step, so `start_epoch` must be "
                f">= 1, got {start_epoch}. Pass start_epoch=1 or another importance."
            )
        if not _is_int(steps) or steps < 1:
            raise ValueError(
                f"`steps` must be an int >= 1, got {steps!r}. Pass steps=1 for one-shot pruning."
            )
        if not _is_int(epochs_between_steps) or epochs_between_steps < 1:
            raise ValueError(f"`epochs_between_steps` must be an int >= 1, got {epochs_between_steps!r}.")
        if filter_fn is not None and not callable(filter_fn):
            raise TypeError(
                f"`filter_fn` must be callable as filter_fn(module, fqn) -> bool, got {filter_fn!r}."
            )
        self.pruning_ratio = float(pruning_ratio)
        self.importance = importance
        self.start_epoch = start_epoch
        self.steps = steps
        self.epochs_between_steps = epochs_between_steps
        self.global_pruning = global_pruning
        self.ignored_layers = list(ignored_layers or [])
        self.round_to = round_to
        self.target_params_ratio = target_params_ratio
        self.max_pruning_ratio = max_pruning_ratio
        self.keep_outputs = keep_outputs
        self.filter_fn = filter_fn
        self.example_input = example_input
        self.verbose = verbose

        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.layer_table: list[dict[str, Any]] = []
        self.stages_done = 0
        self._dense: dict[str, int] = {}
        self._batch_example: Any = None

    @property
    def stage_epochs(self) -> list[int]:
        """Epochs at whose start each pruning stage runs."""
        return [self.start_epoch + k * self.epochs_between_steps for k in range(self.steps)]

    @property
    def step_ratio(self) -> float:
        """Fraction of the remaining channels removed at each stage."""
        return 1.0 - (1.0 - self.pruning_ratio) ** (1.0 / self.steps)

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._check_trainer(trainer)
            modules = dict(pl_module.named_modules())
            missing = [name for name in self.ignored_layers if name not in modules]
            if missing:
                raise MisconfigurationException(
                    f"PruningCallback: `ignored_layers` names {missing}, which {type(pl_module).__name__} does not "
                    f"have. Its conv / linear layers: "
                    f"{[n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))][:20]}."
                )
        install_restore_hook(pl_module)
        replay_from_trainer_ckpt(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        remove_restore_hook(pl_module)
        launcher = getattr(trainer.strategy, "launcher", None)
        if stage == "fit" and self.history and getattr(launcher, "_start_method", None) is not None:
            # ddp_spawn: the launching process loads this worker's state_dict into its own dense model; ship the
            # history with it (PrunableMixin.load_state_dict replays it there).
            from tetra_lightning.prune.replay import HISTORY_STATE_KEY, history_to_tensor

            history = history_to_tensor(applied_history(pl_module))

            def add_history(module: nn.Module, state: dict[str, Any], prefix: str, local: Any) -> None:
                if not prefix:
                    state[HISTORY_STATE_KEY] = history

            pl_module._register_state_dict_hook(add_history)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_example is None and self.example_input is None:
            self._batch_example = first_input(batch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.stages_done < self.steps and trainer.current_epoch >= self.stage_epochs[self.stages_done]:
            self._prune_stage(trainer, pl_module, self.stages_done)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint.setdefault(CHECKPOINT_KEY, {})["history"] = [dict(e) for e in applied_history(pl_module)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(entry) for entry in self.history],
            "stages_done": self.stages_done,
            "summary": dict(self.summary),
            "dense": dict(self._dense),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
        self.stages_done = int(state_dict.get("stages_done", 0))
        self.summary = dict(state_dict.get("summary", {}))
        self._dense = {key: int(value) for key, value in state_dict.get("dense", {}).items()}

    # ------------------------------------------------------------------------------------------------------
    # checks and restore
    # ------------------------------------------------------------------------------------------------------
    def _check_trainer(self, trainer: pl.Trainer) -> None:
        max_epochs = trainer.max_epochs
        last_stage = self.stage_epochs[-1]
        if max_epochs is not None and max_epochs >= 0 and last_stage >= max_epochs:
            raise MisconfigurationException(
                f"PruningCallback would prune at epoch {last_stage} (start_epoch={self.start_epoch}, "
                f"steps={self.steps}, epochs_between_steps={self.epochs_between_steps}) but the Trainer stops "
                f"after max_epochs={max_epochs}. Lower `start_epoch` or raise `max_epochs` to at least "
                f"{last_stage + 1} (better: leave epochs to fine-tune)."
            )
        strategy = trainer.strategy
        if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or type(
            strategy
        ).__name__.startswith(("FSDP", "DeepSpeed")):
            raise MisconfigurationException(
                f"PruningCallback supports single-device and DDP strategies, got {type(strategy).__name__}."
            )

    # ------------------------------------------------------------------------------------------------------
    # pruning
    # ------------------------------------------------------------------------------------------------------
    def _example(self, pl_module: pl.LightningModule) -> Any:
        example = self.example_input
        if example is None:
            example = getattr(pl_module, "example_input_array", None)
        if example is None:
            example = self._batch_example
        if example is None:
            raise MisconfigurationException(
                "PruningCallback needs an example input to trace the model: pass `example_input=` or set "
                "`example_input_array` on the LightningModule."
            )
        device = next(pl_module.parameters()).device
        if isinstance(example, torch.Tensor):
            return example.to(device)
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in example)

    def _measure(self, pl_module: pl.LightningModule, example: Any) -> dict[str, int]:
        from tetra_lightning.report import count_bytes, count_macs, count_parameters

        sizes = {"params": count_parameters(pl_module), "bytes": count_bytes(pl_module)[0]}
        try:
            sizes["macs"] = count_macs(pl_module, example)
        except Exception as error:  # MACs are informative only
            rank_zero_warn(f"PruningCallback could not count MACs ({error!r}); logging params/bytes.")
        return sizes

    def _prune_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int) -> None:
        from tetra_lightning.prune import prune_, replay_history

        distributed = is_distributed(trainer)
        payload: dict[str, Any] | None = None
        if trainer.is_global_zero or not distributed:
            example = self._example(pl_module)
            before = self._measure(pl_module, example)
            if not self._dense:
                self._dense = dict(before)
            options: dict[str, Any] = {}
            if self.target_params_ratio is not None:
                stage_target = self._dense["params"] / self.target_params_ratio ** ((stage + 1) / self.steps)
                options["target_params_ratio"] = max(before["params"] / stage_target, 1.0 + 1e-6)
            entries = prune_(
                pl_module,
                example,
                pruning_ratio=self.step_ratio,
                importance=self.importance,
                global_pruning=self.global_pruning,
                ignored_layers=self.ignored_layers,
                round_to=self.round_to,
                max_pruning_ratio=self.max_pruning_ratio,
                keep_outputs=self.keep_outputs,
                filter_fn=self.filter_fn,
                **options,
            )
            for entry in entries:
                entry["stage"] = stage
            record_history(pl_module, entries)
            after = self._measure(pl_module, example)
            payload = {
                "entries": entries,
                "summary": self._summary(stage, before, after),
                "dense": self._dense,
            }
        payload = broadcast_object(trainer, payload)
        assert payload is not None
        if distributed and not trainer.is_global_zero:
            replay_history(pl_module, applied_history(pl_module) + payload["entries"])
            self._dense = dict(payload["dense"])
        pl_module.to(trainer.strategy.root_device)
        if distributed:
            broadcast_module_state(pl_module)
        rewrap_ddp(trainer)
        rebuild_optimizers(trainer)

        self.history.extend(payload["entries"])
        self.summary = payload["summary"]
        self.stages_done = stage + 1
        for key, value in self.summary.items():
            pl_module.log(f"pruning/{key}", float(value), on_step=False, on_epoch=True, rank_zero_only=True)
        rows = _layer_rows(payload["entries"], stage)
        self.layer_table.extend(rows)
        if trainer.is_global_zero and rows:
            for logger in trainer.loggers:
                log_table = getattr(logger, "log_table", None)
                if callable(log_table):
                    log_table(
                        key="pruning/layers",
                        columns=list(_TABLE_COLUMNS),
                        data=[[row[column] for column in _TABLE_COLUMNS] for row in rows],
                        step=trainer.global_step,
                    )
        if self.verbose:
            rank_zero_info("PruningCallback: " + _format_summary(self.summary))

    def _summary(self, stage: int, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        summary: dict[str, Any] = {"stage": stage}
        for key in ("params", "bytes", "macs"):
            if key in before and key in after:
                summary[f"{key}_before"] = before[key]
                summary[f"{key}_after"] = after[key]
                if key in self._dense and after[key] > 0:
                    summary[f"{key}_ratio"] = self._dense[key] / after[key]
        return summary


_TABLE_COLUMNS = ("stage", "name", "out_removed", "in_removed")


def _layer_rows(entries: list[dict[str, Any]], stage: int) -> list[dict[str, Any]]:
    """One row per pruned layer: how many output and input channels (or features) the stage removed."""
    removed: dict[str, dict[str, int]] = {}
    for entry in entries:
        for name, direction, indices in entry.get("ops", []):
            counts = removed.setdefault(name, {"out": 0, "in": 0})
            counts["out" if direction == "out" else "in"] += len(indices)
    return [
        {"stage": stage, "name": name, "out_removed": counts["out"], "in_removed": counts["in"]}
        for name, counts in removed.items()
    ]


def _format_summary(summary: dict[str, Any]) -> str:
    parts = [f"stage {summary.get('stage')}"]
    for key in ("params", "bytes", "macs"):
        if f"{key}_before" in summary:
            parts.append(f"{key} {summary[f'{key}_before']:,} -> {summary[f'{key}_after']:,}")
    parts.append(f"params ratio {summary.get('params_ratio', math.nan):.2f}x")
    return ", ".join(parts)
