"""PruningCallback: structural channel pruning mid-training (torch-pruning), iterative, with fine-tuning between."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tetra_lightning.callbacks._checks import check_filter_fn
from tetra_lightning.callbacks._staged import StageChange, StagedRewriteCallback, StageSchedule
from tetra_lightning.prune import PruneConfig, prune_
from tetra_lightning.report import count_parameters

__all__ = ["PruningCallback"]

FilterFn = Callable[[nn.Module, str], bool]


class PruningCallback(StagedRewriteCallback):
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

    The pruning arguments make one :class:`~tetra_lightning.prune.PruneConfig` (:attr:`config`), validated here
    and passed to ``prune_`` at every stage with the stage's ratio; pass ``config=`` to give it directly.

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
        config: a :class:`~tetra_lightning.prune.PruneConfig` instead of the pruning arguments above (which must
            then keep their defaults).

    Raises:
        ValueError: for a ratio outside (0, 1), an unknown importance, bad epochs or steps.
        TypeError: for a ``config`` that is not a PruneConfig, or one given together with pruning arguments.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3),
        ...                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         return nn.functional.cross_entropy(self(batch[0]), batch[1])
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        ...     def train_dataloader(self):
        ...         data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)))
        ...         return DataLoader(data, batch_size=8)
        >>> model, callback = Net(), PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model)
        >>> model.net[0].out_channels, model.net[2].out_channels, model.net[6].out_features
        (8, 8, 4)
    """

    metric_prefix = "pruning"
    action = "prune"
    table_columns = ("stage", "name", "out_removed", "in_removed")
    needs_example = True

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
        config: PruneConfig | None = None,
    ) -> None:
        given = PruneConfig(
            pruning_ratio=pruning_ratio,
            importance=importance,
            global_pruning=global_pruning,
            ignored_layers=tuple(ignored_layers or ()),
            round_to=round_to,
            target_params_ratio=target_params_ratio,
            max_pruning_ratio=max_pruning_ratio,
            keep_outputs=keep_outputs,
        )
        if config is not None:
            if not isinstance(config, PruneConfig):
                raise TypeError(f"`config` must be a PruneConfig, got {type(config).__name__} {config!r}.")
            if given != PruneConfig():
                raise TypeError(
                    "Pass either `config` or the pruning arguments (pruning_ratio, importance, ...), not both. "
                    "Use config.replace(...) to change a field."
                )
            given = config
        schedule = StageSchedule.regular(start_epoch, steps, epochs_between_steps)
        if given.importance == "taylor" and start_epoch < 1:
            raise ValueError(
                "`importance='taylor'` uses the gradients of the last training step, so `start_epoch` must be "
                f">= 1, got {start_epoch}. Pass start_epoch=1 or another importance."
            )
        check_filter_fn(filter_fn)
        super().__init__(schedule, example_input=example_input, verbose=verbose)
        self.config = given
        self.start_epoch = start_epoch
        self.steps = steps
        self.epochs_between_steps = epochs_between_steps
        self.filter_fn = filter_fn

    @property
    def pruning_ratio(self) -> float:
        """Fraction of the channels removed after the last stage (``config.pruning_ratio``)."""
        return self.config.pruning_ratio

    @property
    def stage_epochs(self) -> list[int]:
        """Epochs at whose start each pruning stage runs."""
        return list(self.schedule.epochs or ())

    @property
    def step_ratio(self) -> float:
        """Fraction of the remaining channels removed at each stage."""
        return 1.0 - (1.0 - self.pruning_ratio) ** (1.0 / self.steps)

    # ------------------------------------------------------------------------------------------------------
    # what differs from the other staged callbacks
    # ------------------------------------------------------------------------------------------------------
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = dict(pl_module.named_modules())
        missing = [name for name in self.config.ignored_layers if name not in modules]
        if missing:
            raise MisconfigurationException(
                f"PruningCallback: `ignored_layers` names {missing}, which {type(pl_module).__name__} does not "
                f"have. Its conv / linear layers: "
                f"{[n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))][:20]}."
            )
        # The layer types torch-pruning starts a group of coupled channels from.
        prunable = [
            name
            for name, module in modules.items()
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            and name not in self.config.ignored_layers
            and (self.filter_fn is None or self.filter_fn(module, name))
        ]
        narrowed = []
        if self.filter_fn is not None:
            narrowed.append("accepted by `filter_fn`")
        if self.config.ignored_layers:
            narrowed.append("outside `ignored_layers`")
        self.require_layers(
            pl_module,
            bool(prunable),
            "prune",
            "nn.Linear / conv",
            qualifier=" and ".join(narrowed) + " " if narrowed else "",
            fix="Check `filter_fn` and `ignored_layers`, or remove the callback.",
        )

    def decide_stage(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, example: Any
    ) -> StageChange:
        """Prunes the stage's fraction of the remaining channels (or of the parameters, with a target ratio)."""
        config = self.config.replace(pruning_ratio=self.step_ratio)
        if self.config.target_params_ratio is not None:
            stage_target = self._dense["params"] / self.config.target_params_ratio ** ((stage + 1) / self.steps)
            config = config.replace(target_params_ratio=max(count_parameters(pl_module) / stage_target, 1.0 + 1e-6))
        params_before = count_parameters(pl_module)
        entries = prune_(pl_module, example, config, filter_fn=self.filter_fn)
        for entry in entries:
            entry["stage"] = stage
        params_after = count_parameters(pl_module)
        if self.config.target_params_ratio is not None:
            target = self.config.target_params_ratio ** ((stage + 1) / self.steps)
            if self._dense["params"] / params_after < 0.99 * target:
                self.warn_unreachable(
                    stage, "target_params_ratio", target, params_before, params_after, "params",
                    f"No layer loses more than max_pruning_ratio={self.config.max_pruning_ratio:g} of its channels "
                    "and the layers producing the output keep theirs: lower `target_params_ratio`, raise "
                    "`max_pruning_ratio` or add steps.",
                )
        if not any(entry.get("ops") for entry in entries):
            self.warn_unchanged(
                stage,
                "pruned",
                f"no group of coupled channels of {type(pl_module).__name__} could lose channels (the layers "
                "producing the output keep theirs with keep_outputs=True; `ignored_layers`, `filter_fn` and tied "
                "weights keep channels too).",
            )
        return StageChange(entries, _layer_rows(entries, stage))


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
