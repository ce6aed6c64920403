"""LowRankCallback: train factorized layers with a rank-shrinking prior and remove dead rank components."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tetra_lightning.callbacks._checks import check_filter_fn, check_int, check_number, is_int
from tetra_lightning.callbacks._staged import StageChange, StagedRewriteCallback, StageSchedule
from tetra_lightning.checkpoint import applied_history, record_history
from tetra_lightning.decompose import FactorizedLayer, decompose_layer
from tetra_lightning.decompose.methods import factorization, layer_shape
from tetra_lightning.lowrank.priors import GammaGaussianPrior, SVDTrainingRegularizer, shrinkable_layers
from tetra_lightning.lowrank.shrink import layer_ranks, shrink_

__all__ = ["LowRankCallback"]

FilterFn = Callable[[nn.Module, str], bool]
_METHODS = ("svd", "tt")
_INIT_STAGE = "lowrank-init"


class LowRankCallback(StagedRewriteCallback):
    """Automatic rank selection: generous ranks, a rank-shrinking prior, and real removal of dead components.

    1. At ``setup("fit")`` (before the optimizers exist) every ``nn.Linear`` / ``nn.Conv2d`` accepted by
       ``filter_fn`` is factorized with ``method`` at the generous ``rank`` (int ranks are capped at each layer's
       full rank; a float is a parameter fraction as in :class:`~tetra_lightning.decompose.SVDConfig`). Unlike
       :func:`~tetra_lightning.decompose.compress_`, a layer is factorized even when that does not save
       parameters yet: the prior will shrink it. With ``rank=None`` the model is left as it is (e.g. built from
       :func:`~tetra_lightning.lowrank.tt_linear` layers) and only its existing SVD/TT layers are handled.
    2. Every optimizer step, the gradient of ``prior_weight * prior`` over all SVD/TT layers is added to the
       parameters' gradients in ``on_before_optimizer_step``. That hook runs once per optimizer step (also with
       gradient accumulation), after AMP unscaling and the DDP all-reduce and before gradient clipping, so the
       result is exactly the gradient of ``loss + prior_weight * penalty`` with no change to the user's
       ``training_step``. (Users who prefer to add the term themselves call
       :func:`~tetra_lightning.lowrank.lowrank_penalty` in ``training_step`` and pass ``apply_prior=False``.)
    3. At the start of each epoch in ``shrink_epochs`` the components whose scale is at most ``threshold`` times
       the layer's largest are removed (:func:`~tetra_lightning.lowrank.shrink_`), then the optimizers and LR
       schedulers are rebuilt through the module's ``configure_optimizers`` (state of the surviving parameters
       and the schedule position carried over). Under DDP rank 0 decides and broadcasts. Each shrink logs
       ``lowrank/params_before``, ``lowrank/params_after`` (and bytes, MACs; ``*_dense`` and ``*_ratio`` are
       relative to the model at the first shrink) and a ``lowrank/layers`` table; :attr:`layer_table` keeps it.
    4. At each epoch end the rank of every layer is logged (``lowrank/rank/<fqn>``, one per bond with a
       ``/<bond>`` suffix for TT) with ``lowrank/params``; :attr:`rank_history` keeps them per epoch.

    The structural history (factorization + shrinks) is stored in the callback state and in
    ``checkpoint["tetra_lightning"]["history"]``: ``Trainer.fit(ckpt_path=...)`` on a fresh model resumes with
    the shrunk structure, and ``Model.load_from_checkpoint`` works for modules using
    :class:`~tetra_lightning.checkpoint.CompressibleMixin`.

    Args:
        method: ``"svd"`` or ``"tt"``.
        rank: generous initial rank (int, float fraction) or ``None`` to keep the model's own layers.
        prior: a :class:`~tetra_lightning.lowrank.GammaGaussianPrior` (default) or
            :class:`~tetra_lightning.lowrank.SVDTrainingRegularizer`.
        prior_weight: scale of the penalty; ``None`` uses ``1 / N`` with ``N`` the training set size (MAP).
        threshold: relative scale in ``[0, 1)`` below which a component is removed.
        shrink_epochs: epochs at whose start components are removed (>= 1, before ``max_epochs``); ``None``:
            every epoch from 1.
        filter_fn: ``(module, fqn) -> bool`` selecting the layers to factorize and shrink.
        min_rank: components kept at least, per bond.
        apply_prior: add the prior's gradient in ``on_before_optimizer_step``.
        verbose: print the ranks after each shrink on rank zero.

    Raises:
        ValueError: for a bad ``method``, ``rank``, ``prior_weight``, ``threshold``, ``shrink_epochs`` or
            ``min_rank``.
        TypeError: for a ``prior`` or ``filter_fn`` of the wrong type.
        MisconfigurationException: at ``fit``, for a sharded strategy or a shrink epoch at or after ``max_epochs``.

    Example:
        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        ...     def forward(self, x):
        ...         return self.body(x)
        ...     def training_step(self, batch, batch_idx):
        ...         return nn.functional.cross_entropy(self(batch[0]), batch[1])
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.05)
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(64, 32), torch.randint(0, 4, (64,))), batch_size=16)
        >>> callback = LowRankCallback(rank=16, prior_weight=0.05, threshold=0.1, verbose=False)
        >>> trainer = pl.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net())
        >>> sorted(callback.rank_history[0])
        ['body.0', 'body.2']
    """

    metric_prefix = "lowrank"
    action = "shrink the ranks"
    table_columns = ("stage", "name", "ranks_before", "ranks", "params_before", "params_after")

    def __init__(
        self,
        method: str = "svd",
        rank: int | float | None = 0.5,
        prior: GammaGaussianPrior | SVDTrainingRegularizer | None = None,
        prior_weight: float | None = None,
        threshold: float = 1e-2,
        shrink_epochs: Sequence[int] | None = None,
        filter_fn: FilterFn | None = None,
        *,
        min_rank: int = 1,
        apply_prior: bool = True,
        verbose: bool = True,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"`method` must be 'svd' or 'tt', got {method!r}. Pass method='svd'.")
        if rank is not None and (
            isinstance(rank, bool)
            or not isinstance(rank, (int, float))
            or (is_int(rank) and rank < 1)
            or (isinstance(rank, float) and not 0 < rank <= 1)
        ):
            raise ValueError(
                f"`rank` must be a positive int, a float in (0, 1] or None, got {rank!r}. Pass e.g. rank=0.5 to "
                "start at half the dense parameters, or rank=None for a model that is already factorized."
            )
        if prior is None:
            prior = GammaGaussianPrior()
        if not isinstance(prior, (GammaGaussianPrior, SVDTrainingRegularizer)):
            raise TypeError(
                f"`prior` must be a GammaGaussianPrior or SVDTrainingRegularizer, got {type(prior).__name__}."
            )
        if prior_weight is not None and (
            isinstance(prior_weight, bool)
            or not isinstance(prior_weight, (int, float))
            or not (math.isfinite(prior_weight) and prior_weight >= 0)
        ):
            raise ValueError(
                f"`prior_weight` must be a finite float >= 0 or None (1 / training set size), got {prior_weight!r}."
            )
        check_number(
            "threshold", threshold, 0.0, 1.0, low_open=False, kind="float",
            hint="It is a scale relative to the layer's largest component; pass e.g. threshold=1e-2.",
        )
        schedule = (
            StageSchedule.every_epoch(1)
            if shrink_epochs is None
            else StageSchedule.listed(shrink_epochs, "shrink_epochs", minimum=1)
        )
        check_filter_fn(filter_fn)
        check_int("min_rank", min_rank, 1)
        super().__init__(schedule, verbose=verbose)

        self.method = method
        self.rank = rank
        self.prior = prior
        self.prior_weight = None if prior_weight is None else float(prior_weight)
        self.threshold = float(threshold)
        self.shrink_epochs = None if shrink_epochs is None else list(schedule.epochs or ())
        self.filter_fn = filter_fn
        self.min_rank = min_rank
        self.apply_prior = apply_prior
        self.rank_history: dict[int, dict[str, list[int]]] = {}
        self._weight: float | None = self.prior_weight
        self._factorization = factorization(method)

    @property
    def shrunk_at(self) -> list[int]:
        """Epochs at whose start components were removed (a shrink that found nothing counts too)."""
        return self.rewrite_epochs

    # ------------------------------------------------------------------------------------------------------
    # the prior, every optimizer step
    # ------------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prior_weight is not None:
            self._weight = self.prior_weight
            return
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            size = 0
        if size <= 0:
            raise MisconfigurationException(
                "LowRankCallback(prior_weight=None) scales the prior by 1 / training set size, but the train "
                "dataloader's dataset has no length. Pass `prior_weight=` explicitly (e.g. 1 / number of samples)."
            )
        self._weight = 1.0 / size

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.apply_prior or not self._weight:
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        layers = [layer for _, layer in shrinkable_layers(pl_module, self.filter_fn)]
        params = [p for layer in layers for p in layer.parameters() if p.requires_grad and id(p) in in_optimizer]
        if not params:
            return
        with torch.enable_grad():
            penalty = self._weight * torch.stack([self.prior.negative_log_prior(layer) for layer in layers]).sum()
            grads = torch.autograd.grad(penalty, params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad.detach().clone()
                else:
                    param.grad.add_(grad)
        pl_module.log("lowrank/penalty", float(penalty.detach()), on_step=False, on_epoch=True, rank_zero_only=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ranks = layer_ranks(pl_module, self.filter_fn)
        self.rank_history[trainer.current_epoch] = ranks
        for name, values in ranks.items():
            if len(values) == 1:
                pl_module.log(f"lowrank/rank/{name}", float(values[0]), rank_zero_only=True)
            else:
                for bond, value in enumerate(values):
                    pl_module.log(f"lowrank/rank/{name}/{bond}", float(value), rank_zero_only=True)
        params = sum(p.numel() for p in pl_module.parameters())
        pl_module.log("lowrank/params", float(params), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "shrunk_at": list(self.shrunk_at),
            "rank_history": {str(epoch): dict(ranks) for epoch, ranks in self.rank_history.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rewrite_epochs" not in state_dict:  # written before the staged base: the shrink epochs
            state_dict = {**state_dict, "rewrite_epochs": state_dict.get("shrunk_at", [])}
        super().load_state_dict(state_dict)
        self.rank_history = {
            int(epoch): {name: list(values) for name, values in ranks.items()}
            for epoch, ranks in state_dict.get("rank_history", {}).items()
        }

    # ------------------------------------------------------------------------------------------------------
    # rewrites: the generous factorization at setup, then the shrinks
    # ------------------------------------------------------------------------------------------------------
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        already = any(entry.get("stage") == _INIT_STAGE for entry in applied_history(pl_module))
        if self.rank is not None and not already:
            entries = self._factorize(pl_module)
            record_history(pl_module, entries)
            self.history.extend(entries)
        if not any(True for _ in shrinkable_layers(pl_module, self.filter_fn)):
            kinds = sorted({type(m).__name__ for m in pl_module.modules()} - {type(pl_module).__name__})
            raise MisconfigurationException(
                f"LowRankCallback found no SVD/TT layer to train with a rank prior in {type(pl_module).__name__} "
                f"(it has: {', '.join(kinds) or 'no submodules'}). Pass `rank=` to factorize its nn.Linear / "
                "nn.Conv2d layers, check `filter_fn`, or build the model from tt_linear / TTEmbedding layers."
            )

    def _factorize(self, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        inside: list[str] = []
        targets = []
        for name, module in pl_module.named_modules():
            if isinstance(module, FactorizedLayer):
                inside.append(name)
            if not name or any(name.startswith(prefix + ".") for prefix in inside):
                continue
            if type(module) in (nn.Linear, nn.Conv2d) and getattr(module, "groups", 1) == 1:
                if self.filter_fn is None or self.filter_fn(module, name):
                    targets.append((name, module))
        entries = []
        for name, module in targets:
            rank: Any = self.rank
            if is_int(rank):
                # Generous but valid: cap the int at each mode's full rank.
                bounds = self._factorization.rank_bounds(layer_shape(module), None)
                rank = [min(int(self.rank), int(bound)) for bound in bounds]  # type: ignore[arg-type]
                rank = rank[0] if len(rank) == 1 else tuple(rank)
            params_before = sum(p.numel() for p in module.parameters())
            new = decompose_layer(module, self._factorization.config_class(rank=rank))
            pl_module.set_submodule(name, new)
            entries.append(
                {
                    "name": name,
                    "method": self.method,
                    "stage": _INIT_STAGE,
                    "spec": new.spec(),
                    "ranks": list(new.ranks),
                    "params_before": params_before,
                    "params_after": sum(p.numel() for p in new.parameters()),
                    "rel_error": float(new.rel_error),
                }
            )
        return entries

    def decide_stage(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, example: Any
    ) -> StageChange:
        """Removes the components at most ``threshold`` times their layer's largest (this process only)."""
        entries = shrink_(pl_module, self.threshold, self.filter_fn, self.min_rank)
        rows = [{"stage": stage, **{key: entry[key] for key in self.table_columns[1:]}} for entry in entries]
        return StageChange(entries, rows)

    def format_stage(self, trainer: pl.Trainer, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
        if not rows:
            return ""
        lines = [
            f"LowRankCallback: epoch {trainer.current_epoch}, removed rank components below {self.threshold:g}"
        ]
        lines += [
            f"  {row['name']:<32} {row['ranks_before']} -> {row['ranks']}  params {row['params_before']} -> "
            f"{row['params_after']}"
            for row in rows
        ]
        return "\n".join(lines)
