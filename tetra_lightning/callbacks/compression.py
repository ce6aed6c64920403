"""TensorCompressionCallback: decompose a model mid-training to a target compression ratio, then fine-tune."""

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
    replay_history,
)

__all__ = ["TensorCompressionCallback"]

_METHODS = ("auto", "svd", "cp", "tucker", "tt")
_RATIO_METRICS = ("params", "bytes")
_TABLE_COLUMNS = ("stage", "name", "method", "ranks", "params_before", "params_after", "rel_error")

FilterFn = Callable[[nn.Module, str], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TensorCompressionCallback(Callback):
    """Decomposes the model's layers mid-training to reach a whole-model compression ratio, then fine-tunes.

    The model trains dense for ``start_epoch`` epochs. At the start of epoch ``start_epoch`` (never during the
    sanity check) the callback allocates ranks across all ``nn.Linear`` / ``nn.Conv2d`` layers so that the whole
    model has ``target_ratio`` times fewer parameters (all parameters counted, including the layers left dense),
    replaces the layers by factorized ones and keeps training. With ``steps > 1`` the ratio is reached in
    geometric stages, ``target_ratio ** (k / steps)`` at stage ``k``, one every ``epochs_between_steps`` epochs,
    re-decomposing already factorized layers at lower ranks (MUSCO-style iterative compression).

    Rank allocation (:func:`~tetra_lightning.decompose.allocation.allocate_ranks`) is greedy on the increase of
    each layer's relative squared reconstruction error per parameter saved, estimated from singular values of the
    weight unfoldings; layers where factorizing cannot save parameters (the 3-channel stem, tiny layers) stay
    dense. ``method="auto"`` (the Tetra-AML combination) allocates on the SVD/Tucker-2 envelope, then fits every
    method in ``auto_methods`` at each layer's budget and keeps the one with the lowest measured error.

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
        from tetra_lightning.decompose.allocation import ALLOCATIONS

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
        if not _is_int(start_epoch) or start_epoch < 0:
            raise ValueError(
                f"`start_epoch` must be an int >= 0, got {start_epoch!r}. Pass e.g. start_epoch=1 to train dense "
                "for one epoch first."
            )
        if not _is_int(steps) or steps < 1:
            raise ValueError(
                f"`steps` must be an int >= 1, got {steps!r}. Pass steps=1 for one-shot compression."
            )
        if not _is_int(epochs_between_steps) or epochs_between_steps < 1:
            raise ValueError(
                f"`epochs_between_steps` must be an int >= 1, got {epochs_between_steps!r}. Pass e.g. 1."
            )
        last_stage = start_epoch + (steps - 1) * epochs_between_steps
        if recompose_epoch is not None and (not _is_int(recompose_epoch) or recompose_epoch <= last_stage):
            raise ValueError(
                f"`recompose_epoch` must be None or an int after the last compression stage (epoch {last_stage}), "
                f"got {recompose_epoch!r}. Pass e.g. recompose_epoch={last_stage + 1}."
            )
        if ratio_metric not in _RATIO_METRICS:
            raise ValueError(
                f"`ratio_metric` must be one of {', '.join(map(repr, _RATIO_METRICS))}, got {ratio_metric!r}. "
                "Pass ratio_metric='params' or 'bytes'."
            )
        if filter_fn is not None and not callable(filter_fn):
            raise TypeError(
                f"`filter_fn` must be callable as filter_fn(module, fqn) -> bool, got {filter_fn!r}."
            )
        unknown = [m for m in auto_methods if m not in _METHODS or m == "auto"]
        if not auto_methods or unknown:
            raise ValueError(
                f"`auto_methods` must be a non-empty subset of 'svd', 'cp', 'tucker', 'tt', got {tuple(auto_methods)}."
            )
        if not _is_int(min_layer_params) or min_layer_params < 0:
            raise ValueError(f"`min_layer_params` must be an int >= 0, got {min_layer_params!r}.")
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"`allocation` must be one of {', '.join(map(repr, ALLOCATIONS))}, got {allocation!r}. "
                "Pass e.g. allocation='capped'."
            )
        if (
            isinstance(max_rel_error, bool)
            or not isinstance(max_rel_error, (int, float))
            or not 0 < max_rel_error <= 1
        ):
            raise ValueError(f"`max_rel_error` must be a number in (0, 1], got {max_rel_error!r}.")
        if not _is_int(min_rank) or min_rank < 1:
            raise ValueError(f"`min_rank` must be an int >= 1, got {min_rank!r}.")

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
        self.example_input = example_input
        self.verbose = verbose

        self.history: list[dict[str, Any]] = []
        self.layer_table: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.stages_done = 0
        self.recomposed = False
        self._dense: dict[str, int] = {}
        self._batch_example: Any = None
        self._grad_sq: dict[str, torch.Tensor] = {}
        self._grad_batches = 0
        self._last_plan_info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------
    # schedule
    # ------------------------------------------------------------------------------------------------------
    @property
    def stage_epochs(self) -> list[int]:
        """Epochs at whose start each compression stage runs."""
        return [self.start_epoch + k * self.epochs_between_steps for k in range(self.steps)]

    def stage_ratio(self, stage: int) -> float:
        """Whole-model ratio reached after stage ``stage`` (0-based): ``target_ratio ** ((stage + 1) / steps)``."""
        return self.target_ratio ** ((stage + 1) / self.steps)

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._check_trainer(trainer)
            self._check_model(pl_module)
        install_restore_hook(pl_module)
        replay_from_trainer_ckpt(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        remove_restore_hook(pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_example is None and self.example_input is None:
            self._batch_example = first_input(batch)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The "fisher" allocations: sum squared gradients of the candidate layers during the epoch before a stage.
        if not self.allocation.startswith("fisher") or self.stages_done >= self.steps:
            return
        if trainer.current_epoch + 1 != self.stage_epochs[self.stages_done]:
            return
        from tetra_lightning.decompose.allocation import compressible_layers

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

    def _sensitivity(self, pl_module: pl.LightningModule) -> dict[str, float] | None:
        if not self.allocation.startswith("fisher"):
            return None
        from tetra_lightning.decompose.allocation import compressible_layers, fisher_weights

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

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if self.stages_done < self.steps and epoch >= self.stage_epochs[self.stages_done]:
            self._compress_stage(trainer, pl_module, self.stages_done)
        elif (
            self.recompose_epoch is not None
            and not self.recomposed
            and self.stages_done == self.steps
            and epoch >= self.recompose_epoch
        ):
            self._recompose(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        section = checkpoint.setdefault(CHECKPOINT_KEY, {})
        section["history"] = [dict(entry) for entry in applied_history(pl_module)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(entry) for entry in self.history],
            "stages_done": self.stages_done,
            "recomposed": self.recomposed,
            "layer_table": [dict(row) for row in self.layer_table],
            "summary": dict(self.summary),
            "dense": dict(self._dense),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
        self.stages_done = int(state_dict.get("stages_done", 0))
        self.recomposed = bool(state_dict.get("recomposed", False))
        self.layer_table = [dict(row) for row in state_dict.get("layer_table", [])]
        self.summary = dict(state_dict.get("summary", {}))
        self._dense = {key: int(value) for key, value in state_dict.get("dense", {}).items()}

    # ------------------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------------------
    def _check_trainer(self, trainer: pl.Trainer) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            last_stage = self.stage_epochs[-1]
            if last_stage >= max_epochs:
                raise MisconfigurationException(
                    f"TensorCompressionCallback would decompose at epoch {last_stage} (start_epoch="
                    f"{self.start_epoch}, steps={self.steps}, epochs_between_steps={self.epochs_between_steps}) "
                    f"but the Trainer stops after max_epochs={max_epochs}. Lower `start_epoch` or raise "
                    f"`max_epochs` to at least {last_stage + 1} (better: leave epochs to fine-tune)."
                )
            if self.recompose_epoch is not None and self.recompose_epoch >= max_epochs:
                raise MisconfigurationException(
                    f"`recompose_epoch={self.recompose_epoch}` is never reached with max_epochs={max_epochs}. "
                    f"Pass recompose_epoch < {max_epochs} or None."
                )
        strategy = trainer.strategy
        if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or type(
            strategy
        ).__name__.startswith(("FSDP", "DeepSpeed")):
            raise MisconfigurationException(
                f"TensorCompressionCallback supports single-device and DDP strategies ('ddp', 'ddp_spawn', ...), "
                f"got {type(strategy).__name__}. Use strategy='ddp' or compress before sharding."
            )

    def _check_model(self, pl_module: pl.LightningModule) -> None:
        from tetra_lightning.decompose import FactorizedLayer

        found = [
            name
            for name, module in pl_module.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d, FactorizedLayer))
            and (self.filter_fn is None or self.filter_fn(module, name))
        ]
        if not found:
            kinds = sorted({type(m).__name__ for m in pl_module.modules()} - {type(pl_module).__name__})
            raise MisconfigurationException(
                "TensorCompressionCallback found nothing to compress: no nn.Linear / nn.Conv2d layer "
                f"{'accepted by `filter_fn` ' if self.filter_fn is not None else ''}in {type(pl_module).__name__} "
                f"(it has: {', '.join(kinds) or 'no submodules'}). Check `filter_fn` or remove the callback."
            )

    # ------------------------------------------------------------------------------------------------------
    # measuring and logging
    # ------------------------------------------------------------------------------------------------------
    def _example(self, pl_module: pl.LightningModule) -> Any:
        if self.example_input is not None:
            return self.example_input
        if getattr(pl_module, "example_input_array", None) is not None:
            return pl_module.example_input_array
        return self._batch_example

    def _measure(self, pl_module: pl.LightningModule) -> dict[str, int]:
        from tetra_lightning.report import count_bytes, count_macs, count_parameters

        sizes = {"params": count_parameters(pl_module), "bytes": count_bytes(pl_module)[0]}
        example = self._example(pl_module)
        if example is not None:
            try:
                sizes["macs"] = count_macs(pl_module, example)
            except Exception as error:  # MACs are informative only; a model that cannot run alone is fine
                rank_zero_warn(
                    f"TensorCompressionCallback could not count MACs ({error!r}); logging params/bytes."
                )
        return sizes

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, summary: dict[str, Any], rows: list
    ) -> None:
        metrics = {
            f"compression/{key}": float(value)
            for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        data = [[row.get(column) for column in _TABLE_COLUMNS] for row in rows]
        data = [[str(v) if isinstance(v, (list, tuple)) else v for v in row] for row in data]
        for logger in trainer.loggers:
            log_table = getattr(logger, "log_table", None)
            if callable(log_table):
                log_table(
                    key="compression/layers",
                    columns=list(_TABLE_COLUMNS),
                    data=data,
                    step=trainer.global_step,
                )
        if self.verbose:
            rank_zero_info(_format_table(rows, summary))

    # ------------------------------------------------------------------------------------------------------
    # rewrites
    # ------------------------------------------------------------------------------------------------------
    def _decide(self, pl_module: pl.LightningModule, stage: int) -> tuple[list[dict[str, Any]], list[dict]]:
        """Allocates ranks, decomposes (this process only) and returns the history entries and table rows."""
        from tetra_lightning.decompose import compress_, config_from_dict
        from tetra_lightning.decompose.allocation import allocate_ranks, choose_method

        dense_total = self._dense[self.ratio_metric]
        target_total = dense_total / self.stage_ratio(stage)
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
        self._last_plan_info = {
            "allocation": plan.allocation,
            **{f"cap_{k}": v for k, v in plan.caps.items()},
        }
        modules = dict(pl_module.named_modules())
        configs: dict[str, Any] = {}
        auto_errors: dict[str, dict[str, float]] = {}
        for name, option in plan.choices.items():
            if self.method == "auto":
                config, errors = choose_method(modules[name], option.params, self.auto_methods)
                if config is None:
                    continue
                configs[name] = config
                auto_errors[name] = errors
            else:
                rank: Any = option.ranks if len(option.ranks) > 1 else option.ranks[0]
                configs[name] = config_from_dict({"method": option.method, "rank": rank})
        if not plan.reachable:
            rank_zero_warn(
                f"TensorCompressionCallback: target_ratio={self.stage_ratio(stage):.3g} is not reachable at stage "
                f"{stage} ({plan.total_before} -> at best {plan.total_planned} {self.ratio_metric}); compressing "
                "as far as possible. Lower `target_ratio`, lower `min_layer_params` or widen `filter_fn`."
            )
        if not configs:
            return [], []
        entries = compress_(pl_module, configs)
        entries = [entry for entry in entries if not entry.get("skipped")]
        rows = []
        for entry in entries:
            row = {column: entry.get(column) for column in _TABLE_COLUMNS}
            row["stage"] = stage
            row["ranks"] = list(entry.get("ranks") or [])
            if entry["name"] in auto_errors:
                row["candidates"] = {m: round(e, 6) for m, e in auto_errors[entry["name"]].items()}
            rows.append(row)
        return entries, rows

    def _compress_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int) -> None:
        distributed = is_distributed(trainer)
        payload: dict[str, Any] | None = None
        if trainer.is_global_zero or not distributed:
            before = self._measure(pl_module)
            if not self._dense:
                self._dense = dict(before)
            entries, rows = self._decide(pl_module, stage)
            record_history(pl_module, entries)
            after = self._measure(pl_module)
            payload = {
                "entries": entries,
                "rows": rows,
                "summary": {**self._summary(stage, before, after), **self._last_plan_info},
                "dense": dict(self._dense),
            }
        payload = broadcast_object(trainer, payload)
        assert payload is not None
        if distributed and not trainer.is_global_zero:
            replay_history(pl_module, applied_history(pl_module) + payload["entries"])
            self._dense = dict(payload["dense"])
        self._after_rewrite(trainer, pl_module)

        self.history.extend(payload["entries"])
        self.layer_table.extend(payload["rows"])
        self.summary = payload["summary"]
        self.stages_done = stage + 1
        if not payload["entries"]:
            rank_zero_warn(
                f"TensorCompressionCallback: nothing was factorized at stage {stage}: no layer of "
                f"{type(pl_module).__name__} can save parameters (layers below min_layer_params="
                f"{self.min_layer_params}, 3-channel inputs and layers rejected by `filter_fn` stay dense)."
            )
        self._log(trainer, pl_module, self.summary, payload["rows"])

    def _recompose(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tetra_lightning.decompose import recompose_

        before = self._measure(pl_module)
        entries = recompose_(pl_module)
        record_history(pl_module, entries)
        if is_distributed(trainer):
            broadcast_module_state(pl_module)
        rewrap_ddp(trainer)
        rebuild_optimizers(trainer)
        self.history.extend(entries)
        self.recomposed = True
        after = self._measure(pl_module)
        self.summary = self._summary(self.stages_done, before, after)
        self.summary["recomposed"] = True
        self._log(trainer, pl_module, self.summary, [])

    def _after_rewrite(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        pl_module.to(device)
        if is_distributed(trainer):
            broadcast_module_state(pl_module)
        rewrap_ddp(trainer)
        rebuild_optimizers(trainer)

    def _summary(self, stage: int, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        summary: dict[str, Any] = {"stage": stage}
        for key in ("params", "bytes", "macs"):
            if key in before and key in after:
                summary[f"{key}_before"] = before[key]
                summary[f"{key}_after"] = after[key]
            if key in self._dense:
                summary[f"{key}_dense"] = self._dense[key]
                if key in after and after[key] > 0:
                    summary[f"{key}_ratio"] = self._dense[key] / after[key]
        summary["ratio"] = summary.get(f"{self.ratio_metric}_ratio", math.nan)
        return summary


def _format_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    header = f"{'name':<32} {'method':<7} {'ranks':<14} {'params':>17} {'rel_err':>8}"
    lines = ["TensorCompressionCallback: " + _format_summary(summary), header, "-" * len(header)]
    for row in rows:
        ranks = "x".join(str(r) for r in row.get("ranks") or [])
        params = f"{row.get('params_before')}->{row.get('params_after')}"
        error = row.get("rel_error")
        error_text = f"{error:.4f}" if isinstance(error, float) else str(error)
        lines.append(
            f"{row.get('name', ''):<32} {row.get('method', ''):<7} {ranks:<14} {params:>17} {error_text:>8}"
        )
    return "\n".join(lines)


def _format_summary(summary: dict[str, Any]) -> str:
    parts = [f"stage {summary.get('stage')}"]
    for key in ("params", "bytes", "macs"):
        if f"{key}_before" in summary:
            parts.append(f"{key} {summary[f'{key}_before']:,} -> {summary[f'{key}_after']:,}")
    parts.append(f"ratio {summary.get('ratio', math.nan):.2f}x")
    return ", ".join(parts)
