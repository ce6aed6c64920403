"""TensorCompressionCallback: decompose a model mid-training to a target compression ratio, then fine-tune."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tetra_lightning.callbacks._checks import check_filter_fn, check_int, check_number, is_int
from tetra_lightning.callbacks._staged import (
    StageChange,
    StagedRewriteCallback,
    StageSchedule,
    format_summary,
)
from tetra_lightning.decompose import FactorizedLayer, compress_, recompose_, unfuse_
from tetra_lightning.decompose.allocation import (
    ALLOCATIONS,
    allocate_ranks,
    choose_method,
    compressible_layers,
    fisher_weights,
)
from tetra_lightning.decompose.methods import DENSE_LAYERS
from tetra_lightning.decompose.unfuse import FUSED_MODULES
from tetra_lightning.report import ModelReport

__all__ = ["TensorCompressionCallback"]

_AUTO = "auto"
_METHODS = (_AUTO, "svd", "cp", "tucker", "tt")
_RATIO_METRICS = ("params", "bytes")

FilterFn = Callable[[nn.Module, str], bool]


class TensorCompressionCallback(StagedRewriteCallback):
    """Decomposes the model's layers mid-training to reach a whole-model compression ratio, then fine-tunes.

    The model trains dense for ``start_epoch`` epochs. At the start of epoch ``start_epoch`` (never during the
    sanity check) the callback splits ``nn.MultiheadAttention`` and ``nn.LSTM`` / ``nn.GRU`` modules into their
    projection layers (:func:`~tetra_lightning.decompose.unfuse_`), allocates ranks across all ``nn.Linear`` /
    ``nn.Conv1d`` / ``nn.Conv2d`` layers (grouped convs per group) so that the whole model has ``target_ratio``
    times fewer parameters (all parameters counted, including the layers left dense),
    replaces the layers by factorized ones and keeps training. With ``steps > 1`` the ratio is reached in
    geometric stages, ``target_ratio ** (k / steps)`` at stage ``k``, one every ``epochs_between_steps`` epochs,
    re-decomposing already factorized layers at lower ranks (MUSCO-style iterative compression).

    Rank allocation (:func:`~tetra_lightning.decompose.allocation.allocate_ranks`) is greedy on the increase of
    each layer's relative squared reconstruction error per parameter saved, estimated from singular values of the
    weight unfoldings; layers where factorizing cannot save parameters (the 3-channel stem, tiny layers) stay
    dense. ``method="auto"`` (the Tetra-AML combination) allocates on the SVD/Tucker-2 envelope, then fits every
    method in ``auto_methods`` (SVD, Tucker and CP by default; add ``"tt"`` to compare TT too) at each layer's
    budget and keeps the one with the lowest measured error, for every kind of layer: convs, grouped and
    depthwise convs, linear layers, attention projections and recurrent gate maps.

    After each rewrite the optimizers and LR schedulers are rebuilt through the module's own
    ``configure_optimizers``; the state of untouched parameters and the LR schedule position are carried over.
    Under DDP rank 0 decides, every rank applies the same history, rank 0's weights are broadcast and the model
    is re-wrapped. With ``recompose_epoch`` the factorized layers are turned back into dense ones for the last
    epochs.

    The structural history is stored in the callback state and in ``checkpoint["tetra_lightning"]["history"]``,
    so ``Trainer.fit(ckpt_path=...)`` on a fresh dense model resumes with the factorized structure (it is rebuilt
    before the weights load), and ``Model.load_from_checkpoint`` works for modules using
    :class:`~tetra_lightning.checkpoint.CompressibleMixin` (or call
    :func:`~tetra_lightning.checkpoint.restore_from_checkpoint`).
    With ``strategy="ddp_spawn"`` the model object in the launching process is not restructured (Lightning loads
    the worker's weights into it with ``strict=False``): use the checkpoint and ``restore_from_checkpoint`` there.

    Logged on rank zero via ``pl_module.log`` at each rewrite: ``compression/params_before``,
    ``compression/params_after``, ``compression/bytes_before``, ``compression/bytes_after``,
    ``compression/macs_before``, ``compression/macs_after`` (when an example input is known),
    ``compression/ratio`` (dense / current in ``ratio_metric``) and ``compression/stage``. The per-layer table is
    kept in :attr:`layer_table`, printed once per rewrite and sent to loggers that have ``log_table`` (W&B).

    Args:
        method: ``"auto"``, ``"svd"``, ``"cp"``, ``"tucker"`` or ``"tt"``.
        target_ratio: dense size / compressed size of the whole model, > 1.
        start_epoch: epoch at whose start the (first) decomposition happens, >= 0.
        steps: number of compression stages, >= 1.
        epochs_between_steps: epochs of fine-tuning between stages, >= 1.
        recompose_epoch: epoch at whose start the factorized layers are turned back into dense ones (None:
            never). Must come after the last stage.
        filter_fn: ``filter_fn(module, fqn) -> bool`` selecting the layers that may be factorized (names relative
            to the LightningModule).
        ratio_metric: ``"params"`` or ``"bytes"`` (parameters and buffers, by element size).
        auto_methods: methods compared per layer when ``method="auto"``.
        min_layer_params: layers with fewer parameters stay dense.
        error_weight: ``error_weight(fqn, module) -> float`` weighting each layer's relative error in the
            allocation (default: 1 for every layer).
        allocation: rank allocation strategy of :func:`~tetra_lightning.decompose.allocation.allocate_ranks`:
            ``"greedy"`` (default), ``"capped"`` (greedy within a per-layer relative error cap ``max_rel_error``
            and minimum rank ``min_rank``, relaxed only as far as the target needs), ``"fisher"`` /
            ``"fisher_capped"`` (errors weighted by a diagonal-Fisher loss estimate from the squared gradients of
            the training steps of the epoch before each stage; equal weights, with a warning, when there were
            none, e.g. when resuming exactly at a stage).
        max_rel_error: error cap of the capped strategies (relative Frobenius error, in (0, 1]).
        min_rank: minimum rank of the capped strategies.
        example_input: input used to count MACs; defaults to the module's ``example_input_array`` or the first
            training batch's inputs.
        verbose: print the per-layer table on rank zero after every rewrite.

    Raises:
        ValueError: for an unknown ``method`` / ``ratio_metric``, ``target_ratio <= 1``, a negative
            ``start_epoch``, ``steps < 1``, ``epochs_between_steps < 1`` or a ``recompose_epoch`` not after the
            last stage.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 4))
        ...     def forward(self, x):
        ...         return self.body(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(32, 64), torch.randint(0, 4, (32,))), batch_size=8)
        >>> callback = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net())
        >>> 2.7 <= callback.summary["ratio"] <= 3.3
        True
    """

    metric_prefix = "compression"
    action = "decompose"
    table_columns = ("stage", "name", "method", "ranks", "params_before", "params_after", "rel_error")

    def __init__(
        self,
        method: str = "auto",
        target_ratio: float = 4.5,
        start_epoch: int = 1,
        steps: int = 1,
        epochs_between_steps: int = 1,
        recompose_epoch: int | None = None,
        filter_fn: FilterFn | None = None,
        ratio_metric: str = "params",
        *,
        auto_methods: Sequence[str] = ("svd", "tucker", "cp"),
        min_layer_params: int = 1024,
        error_weight: Callable[[str, nn.Module], float] | None = None,
        allocation: str = "greedy",
        max_rel_error: float = 0.8,
        min_rank: int = 8,
        example_input: Any = None,
        verbose: bool = True,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(
                f"`method` must be one of {', '.join(map(repr, _METHODS))}, got {method!r}. "
                "Pass e.g. method='auto' to pick the best factorization per layer."
            )
        if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)):
            raise TypeError(
                f"`target_ratio` must be a number > 1, got {type(target_ratio).__name__} {target_ratio!r}."
            )
        if not math.isfinite(target_ratio) or target_ratio <= 1:
            raise ValueError(
                f"`target_ratio` must be > 1 (dense size / compressed size of the whole model), got {target_ratio}. "
                "Pass e.g. target_ratio=4.5 for a model 4.5 times smaller."
            )
        schedule = StageSchedule.regular(start_epoch, steps, epochs_between_steps)
        last_stage = schedule.epochs[-1]  # type: ignore[index]
        if recompose_epoch is not None and (not is_int(recompose_epoch) or recompose_epoch <= last_stage):
            raise ValueError(
                f"`recompose_epoch` must be None or an int after the last compression stage (epoch {last_stage}), "
                f"got {recompose_epoch!r}. Pass e.g. recompose_epoch={last_stage + 1}."
            )
        if ratio_metric not in _RATIO_METRICS:
            raise ValueError(
                f"`ratio_metric` must be one of {', '.join(map(repr, _RATIO_METRICS))}, got {ratio_metric!r}. "
                "Pass ratio_metric='params' or 'bytes'."
            )
        check_filter_fn(filter_fn)
        unknown = [m for m in auto_methods if m not in _METHODS or m == _AUTO]
        if not auto_methods or unknown:
            raise ValueError(
                f"`auto_methods` must be a non-empty subset of 'svd', 'cp', 'tucker', 'tt', got {tuple(auto_methods)}."
            )
        check_int("min_layer_params", min_layer_params, 0)
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"`allocation` must be one of {', '.join(map(repr, ALLOCATIONS))}, got {allocation!r}. "
                "Pass e.g. allocation='capped'."
            )
        check_number("max_rel_error", max_rel_error, 0.0, 1.0)
        check_int("min_rank", min_rank, 1)
        super().__init__(schedule, example_input=example_input, verbose=verbose)

        self.method = method
        self.target_ratio = float(target_ratio)
        self.start_epoch = start_epoch
        self.steps = steps
        self.epochs_between_steps = epochs_between_steps
        self.recompose_epoch = recompose_epoch
        self.filter_fn = filter_fn
        self.ratio_metric = ratio_metric
        self.auto_methods = tuple(auto_methods)
        self.min_layer_params = min_layer_params
        self.error_weight = error_weight
        self.allocation = allocation
        self.max_rel_error = float(max_rel_error)
        self.min_rank = min_rank
        self.recomposed = False
        self._grad_sq: dict[str, torch.Tensor] = {}
        self._grad_batches = 0

    # ------------------------------------------------------------------------------------------------------
    # schedule
    # ------------------------------------------------------------------------------------------------------
    @property
    def stage_epochs(self) -> list[int]:
        """Epochs at whose start each compression stage runs."""
        return list(self.schedule.epochs or ())

    def stage_ratio(self, stage: int) -> float:
        """Whole-model ratio reached after stage ``stage`` (0-based): ``target_ratio ** ((stage + 1) / steps)``."""
        return self.target_ratio ** ((stage + 1) / self.steps)

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        max_epochs = trainer.max_epochs
        recompose = self.recompose_epoch
        if stage == "fit" and recompose is not None and max_epochs is not None and 0 <= max_epochs <= recompose:
            raise MisconfigurationException(
                f"`recompose_epoch={self.recompose_epoch}` is never reached with max_epochs={max_epochs}. "
                f"Pass recompose_epoch < {max_epochs} or None."
            )
        super().setup(trainer, pl_module, stage)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = [
            name
            for name, module in pl_module.named_modules()
            if isinstance(module, (*DENSE_LAYERS, *FUSED_MODULES, FactorizedLayer))
            and (self.filter_fn is None or self.filter_fn(module, name))
        ]
        self.require_layers(
            pl_module,
            bool(found),
            "compress",
            "nn.Linear / nn.Conv2d",
            qualifier="accepted by `filter_fn` " if self.filter_fn is not None else "",
            fix="Check `filter_fn` or remove the callback.",
        )

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The "fisher" allocations: sum squared gradients of the candidate layers during the epoch before a stage.
        if not self.allocation.startswith("fisher") or self.schedule.finished(self.stages_done):
            return
        if trainer.current_epoch + 1 != self.schedule.stage_epoch(self.stages_done):
            return
        layers, _ = compressible_layers(pl_module, self.filter_fn, self.min_layer_params)
        with torch.no_grad():
            for name, layer in layers.items():
                grads = [p.grad for p in layer.parameters() if p.grad is not None]
                if not grads:
                    continue
                total = sum(g.detach().float().pow(2).sum() for g in grads)
                if name in self._grad_sq:
                    self._grad_sq[name] += total
                else:
                    self._grad_sq[name] = total
        self._grad_batches += 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            not trainer.sanity_checking
            and self.schedule.finished(self.stages_done)
            and self.recompose_epoch is not None
            and not self.recomposed
            and trainer.current_epoch >= self.recompose_epoch
        ):
            self.rewrite(trainer, pl_module, self.stages_done, self._recompose)
            self.recomposed = True
            return
        super().on_train_epoch_start(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "recomposed": self.recomposed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.recomposed = bool(state_dict.get("recomposed", False))

    # ------------------------------------------------------------------------------------------------------
    # rewrites
    # ------------------------------------------------------------------------------------------------------
    def _sensitivity(self, pl_module: pl.LightningModule) -> dict[str, float] | None:
        if not self.allocation.startswith("fisher"):
            return None
        sums = {name: float(value) for name, value in self._grad_sq.items()}
        batches = self._grad_batches
        self._grad_sq, self._grad_batches = {}, 0
        layers, _ = compressible_layers(pl_module, self.filter_fn, self.min_layer_params)
        weights = {
            k: v for k, v in fisher_weights(sums, layers, batches).items() if v > 0 and math.isfinite(v)
        }
        if not weights:
            rank_zero_warn(
                f"TensorCompressionCallback(allocation={self.allocation!r}): no training gradients were seen in the "
                "epoch before this stage (resumed at the stage, or start_epoch=0); allocating with equal weights."
            )
            return None
        return weights

    def decide_stage(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, example: Any
    ) -> StageChange:
        """Splits fused modules, allocates ranks for the stage's ratio and decomposes (this process only)."""
        split = [entry for entry in unfuse_(pl_module, self.filter_fn) if "skipped" not in entry]
        target_total = self._dense[self.ratio_metric] / self.stage_ratio(stage)
        sensitivity = self._sensitivity(pl_module)
        allocation = self.allocation
        if sensitivity is None and allocation.startswith("fisher"):
            allocation = "capped" if allocation == "fisher_capped" else "greedy"
        plan = allocate_ranks(
            pl_module,
            target_total,
            self.method,
            filter_fn=self.filter_fn,
            min_layer_params=self.min_layer_params,
            metric=self.ratio_metric,
            error_weight=self.error_weight,
            allocation=allocation,
            max_rel_error=self.max_rel_error,
            min_rank=self.min_rank,
            sensitivity=sensitivity,
        )
        info = {"allocation": plan.allocation, **{f"cap_{k}": v for k, v in plan.caps.items()}}
        modules = dict(pl_module.named_modules())
        configs: dict[str, Any] = {}
        auto_errors: dict[str, dict[str, float]] = {}
        for name, option in plan.choices.items():
            if self.method == _AUTO:
                config, errors = choose_method(modules[name], option.params, self.auto_methods)
                if config is None:
                    continue
                configs[name], auto_errors[name] = config, errors
            else:
                configs[name] = option.config()
        if not plan.reachable:
            self.warn_unreachable(
                stage, "target_ratio", self.stage_ratio(stage), plan.total_before, plan.total_planned,
                self.ratio_metric, "Lower `target_ratio`, lower `min_layer_params` or widen `filter_fn`.",
            )
        entries = [entry for entry in compress_(pl_module, configs) if not entry.get("skipped")] if configs else []
        decomposed = [entry for entry in entries if "kind" not in entry]
        if not decomposed:
            self.warn_unchanged(
                stage,
                "factorized",
                f"no layer of {type(pl_module).__name__} can save parameters (layers below min_layer_params="
                f"{self.min_layer_params}, 3-channel inputs, tied weights and layers rejected by `filter_fn` stay "
                "dense).",
            )
        rows = []
        for entry in decomposed:
            row = {column: entry.get(column) for column in self.table_columns}
            row["stage"] = stage
            row["ranks"] = list(entry.get("ranks") or [])
            if entry["name"] in auto_errors:
                row["candidates"] = {m: round(e, 6) for m, e in auto_errors[entry["name"]].items()}
            rows.append(row)
        return StageChange(split + entries, rows, info)

    def _recompose(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, example: Any
    ) -> StageChange:
        return StageChange(recompose_(pl_module), info={"recomposed": True})

    def stage_summary(self, stage: int, before: ModelReport, after: ModelReport) -> dict[str, Any]:
        summary = super().stage_summary(stage, before, after)
        summary["ratio"] = summary.get(f"{self.ratio_metric}_ratio", math.nan)
        return summary

    def format_stage(self, trainer: pl.Trainer, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
        header = f"{'name':<32} {'method':<7} {'ranks':<14} {'params':>17} {'rel_err':>8}"
        lines = ["TensorCompressionCallback: " + format_summary(summary, "ratio"), header, "-" * len(header)]
        for row in rows:
            ranks = "x".join(str(r) for r in row.get("ranks") or [])
            params = f"{row.get('params_before')}->{row.get('params_after')}"
            error = row.get("rel_error")
            error_text = f"{error:.4f}" if isinstance(error, float) else str(error)
            lines.append(
                f"{row.get('name', ''):<32} {row.get('method', ''):<7} {ranks:<14} {params:>17} {error_text:>8}"
            )
        return "\n".join(lines)
