"""Lightning mechanics shared by the structural callbacks (decomposition, pruning).

A callback that replaces modules in the middle of ``fit`` must keep four things consistent afterwards:

1. the optimizers and LR schedulers (rebuilt through the user's own ``configure_optimizers``, with the state of
   every parameter that survived and the schedule position carried over: :func:`rebuild_optimizers`);
2. the ranks of a distributed run (decide on rank 0, :func:`broadcast_object` the decision, apply it everywhere,
   then :func:`broadcast_module_state` so every rank holds rank 0's weights);
3. the DDP wrapper, whose reducer still points at the removed parameters (:func:`rewrap_ddp`);
4. the rank-zero log (callers use ``trainer.is_global_zero``).

Nothing here knows about tensor decompositions: the pruning callback reuses the same helpers.
:func:`after_rewrite` runs 1.-3. in order; the flow that decides, broadcasts and records a rewrite lives in
:mod:`tetra_lightning.callbacks._staged`.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tetra_lightning.checkpoint import (
    HISTORY_STATE_KEY,
    CompressibleMixin,
    history_from_checkpoint,
    history_to_tensor,
    replay_history,
    replay_sections,
)

__all__ = [
    "OptimizerRebuild",
    "after_rewrite",
    "broadcast_module_state",
    "broadcast_object",
    "check_strategy",
    "first_input",
    "install_restore_hook",
    "is_distributed",
    "is_spawned",
    "optimizer_parameters",
    "rebuild_optimizers",
    "remove_restore_hook",
    "replay_from_trainer_ckpt",
    "rewrap_ddp",
    "ship_history_with_state_dict",
]

T = TypeVar("T")


@dataclass(frozen=True)
class OptimizerRebuild:
    """What :func:`rebuild_optimizers` did, for logging and tests.

    Attributes:
        removed: parameters that were in the old optimizers but are not in the new ones.
        added: parameters of the new optimizers that the old ones did not hold (fresh state).
        carried: parameters whose optimizer state (e.g. momentum buffers) was carried over.
        schedulers_continued: LR schedulers whose state was loaded from the old ones.
    """

    removed: int
    added: int
    carried: int
    schedulers_continued: int


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def optimizer_parameters(trainer: pl.Trainer) -> list[nn.Parameter]:
    """Every parameter held by the trainer's optimizers, in order, without duplicates.

    Args:
        trainer: a Trainer whose strategy has set up its optimizers.

    Returns:
        The parameters of all param groups of all optimizers.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> optimizer_parameters(trainer)
        []
    """
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for optimizer in trainer.strategy.optimizers:
        for group in _unwrap_optimizer(optimizer).param_groups:
            for param in group["params"]:
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
    return params


def rebuild_optimizers(
    trainer: pl.Trainer, *, carry_state: bool = True, continue_schedule: bool = True
) -> OptimizerRebuild:
    """Re-creates optimizers and LR schedulers through the LightningModule's own ``configure_optimizers``.

    Call it after a structural rewrite that replaced parameters. The new optimizers hold exactly the module's
    current parameters (as the user's ``configure_optimizers`` groups them), so no removed parameter stays in an
    optimizer and every new one is trained.

    With ``carry_state``, the per-parameter state (momentum, Adam moments, step counters) of every parameter that
    survived the rewrite is moved over by identity, and the hyperparameters of each param group (``lr``,
    ``initial_lr``, ``momentum``, ...) are copied from the old group at the same position when the optimizer and
    group counts match. With ``continue_schedule``, each new LR scheduler of the same class loads the state of the
    old one (``last_epoch``, ``_step_count``, ``base_lrs``, ...): a cosine schedule goes on where it was instead of
    restarting from the base learning rate.

    Args:
        trainer: the Trainer, while fitting.
        carry_state: carry the optimizer state of the parameters that were not replaced.
        continue_schedule: continue the LR schedules where they were.

    Returns:
        An :class:`OptimizerRebuild` with counts of removed, added and carried parameters.

    Raises:
        RuntimeError: if the trainer is not fitting (there are no optimizers to rebuild).

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> rebuild_optimizers(trainer)
        Traceback (most recent call last):
        ...
        RuntimeError: `rebuild_optimizers` needs a Trainer that is fitting, ...
    """
    if trainer.state.fn != TrainerFn.FITTING or trainer.lightning_module is None:
        raise RuntimeError(
            "`rebuild_optimizers` needs a Trainer that is fitting, got "
            f"state.fn={trainer.state.fn!r}. Call it from a training hook such as `on_train_epoch_start`."
        )
    strategy = trainer.strategy
    old_optimizers = [_unwrap_optimizer(opt) for opt in strategy.optimizers]
    old_configs = list(strategy.lr_scheduler_configs)
    old_params = {id(p): p for opt in old_optimizers for g in opt.param_groups for p in g["params"]}
    old_state: dict[int, dict[str, Any]] = {}
    for opt in old_optimizers:
        for param, state in opt.state.items():
            old_state[id(param)] = state

    strategy.setup_optimizers(trainer)
    new_optimizers = [_unwrap_optimizer(opt) for opt in strategy.optimizers]
    new_params = {id(p): p for opt in new_optimizers for g in opt.param_groups for p in g["params"]}

    carried = 0
    if carry_state:
        for new_opt in new_optimizers:
            for group in new_opt.param_groups:
                for param in group["params"]:
                    if id(param) in old_state and id(param) in old_params and old_params[id(param)] is param:
                        new_opt.state[param] = old_state[id(param)]
                        carried += 1
        if len(old_optimizers) == len(new_optimizers):
            for old_opt, new_opt in zip(old_optimizers, new_optimizers, strict=True):
                if len(old_opt.param_groups) != len(new_opt.param_groups):
                    continue
                for old_group, new_group in zip(old_opt.param_groups, new_opt.param_groups, strict=True):
                    for key, value in old_group.items():
                        if key != "params":
                            new_group[key] = value

    continued = 0
    if continue_schedule:
        for old_cfg, new_cfg in zip(old_configs, strategy.lr_scheduler_configs, strict=False):
            if type(old_cfg.scheduler) is type(new_cfg.scheduler):
                new_cfg.scheduler.load_state_dict(old_cfg.scheduler.state_dict())
                continued += 1

    _optimizers_to_device(strategy.optimizers, strategy.root_device)
    return OptimizerRebuild(
        removed=sum(1 for key in old_params if key not in new_params),
        added=sum(1 for key in new_params if key not in old_params),
        carried=carried,
        schedulers_continued=continued,
    )


def is_distributed(trainer: pl.Trainer) -> bool:
    """Whether the trainer runs more than one process in an initialised process group.

    Example:
        >>> import lightning.pytorch as pl
        >>> is_distributed(pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False))
        False
    """
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_object(trainer: pl.Trainer, obj: T, src: int = 0) -> T:
    """Sends a picklable object from rank ``src`` to every rank (identity on one process).

    Args:
        trainer: the Trainer whose strategy broadcasts.
        obj: the object (only rank ``src``'s value matters).
        src: the source rank.

    Returns:
        Rank ``src``'s object, on every rank.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> broadcast_object(trainer, {"ranks": [4, 2]})
        {'ranks': [4, 2]}
    """
    if not is_distributed(trainer):
        return obj
    return trainer.strategy.broadcast(obj, src=src)


def broadcast_module_state(module: nn.Module, src: int = 0) -> int:
    """Overwrites every parameter and buffer of ``module`` with rank ``src``'s values, in place.

    All ranks must hold modules of identical structure (same state-dict keys, shapes and dtypes). A no-op when
    no process group is initialised.

    Args:
        module: the module to synchronise.
        src: the source rank.

    Returns:
        The number of tensors broadcast (0 without a process group).

    Example:
        >>> broadcast_module_state(nn.Linear(2, 2))
        0
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    if torch.distributed.get_world_size() == 1:
        return 0
    count = 0
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            torch.distributed.broadcast(tensor.data, src=src)
            count += 1
    return count


def rewrap_ddp(trainer: pl.Trainer) -> bool:
    """Wraps the LightningModule in a new ``DistributedDataParallel`` after its parameters changed.

    DDP registers its gradient hooks and buckets on the parameters it saw at construction; parameters created
    later are never all-reduced and removed ones are still expected. The old wrapper is dropped first (its reducer
    removes its hooks when it is destroyed), then the strategy's own ``_setup_model`` builds a new one with the
    user's DDP arguments and the communication hooks are registered again. Every rank must call it.

    Args:
        trainer: the Trainer whose strategy holds a DDP-wrapped model.

    Returns:
        True when the model was re-wrapped, False when the strategy does not wrap in DDP.

    Example:
        >>> import lightning.pytorch as pl
        >>> rewrap_ddp(pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False))
        False
    """
    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return False
    pl_module = strategy.lightning_module
    assert pl_module is not None
    strategy.model = pl_module
    gc.collect()
    strategy.model = strategy._setup_model(pl_module)
    register_hooks = getattr(strategy, "_register_ddp_hooks", None)
    if callable(register_hooks):
        register_hooks()
    return True


def after_rewrite(trainer: pl.Trainer, pl_module: pl.LightningModule) -> OptimizerRebuild:
    """Makes the Trainer consistent with a module whose structure just changed (every rank calls it).

    Moves the module to the strategy's device, gives every rank rank 0's weights (:func:`broadcast_module_state`),
    wraps it in a new DDP (:func:`rewrap_ddp`) and rebuilds the optimizers (:func:`rebuild_optimizers`).

    Returns:
        What :func:`rebuild_optimizers` did.

    Raises:
        RuntimeError: if the trainer is not fitting.
    """
    pl_module.to(trainer.strategy.root_device)
    if is_distributed(trainer):
        broadcast_module_state(pl_module)
    rewrap_ddp(trainer)
    return rebuild_optimizers(trainer)


def check_strategy(trainer: pl.Trainer, owner: str) -> None:
    """Raises ``MisconfigurationException`` unless the strategy is single-device or DDP (not sharded).

    A structural rewrite replaces parameters that FSDP / DeepSpeed would hold as shards.

    Example:
        >>> import lightning.pytorch as pl
        >>> check_strategy(pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False), "X")
    """
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or type(strategy).__name__.startswith(
        ("FSDP", "DeepSpeed")
    ):
        raise MisconfigurationException(
            f"{owner} supports single-device and DDP strategies ('ddp', 'ddp_spawn', ...), got "
            f"{type(strategy).__name__}. Use strategy='ddp' or compress before sharding."
        )


def is_spawned(trainer: pl.Trainer) -> bool:
    """Whether the Trainer's processes were spawned (``ddp_spawn``): the launching process then only gets weights.

    Example:
        >>> import lightning.pytorch as pl
        >>> is_spawned(pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False))
        False
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    return getattr(launcher, "_start_method", None) is not None


def ship_history_with_state_dict(pl_module: pl.LightningModule, history: list[dict[str, Any]]) -> None:
    """Puts ``history`` into ``pl_module.state_dict()`` under :data:`~tetra_lightning.checkpoint.HISTORY_STATE_KEY`.

    With ``ddp_spawn`` the launching process loads a worker's ``state_dict`` into its own, unchanged model with
    ``strict=False``; :class:`~tetra_lightning.checkpoint.CompressibleMixin` replays the history found there
    first, so the shapes fit (a plain module ignores the extra key).
    """
    blob = history_to_tensor(history)

    def add_history(module: nn.Module, state: dict[str, Any], prefix: str, local: Any) -> None:
        if not prefix:
            state[HISTORY_STATE_KEY] = blob

    pl_module._register_state_dict_hook(add_history)


# ----------------------------------------------------------------------------------------------------------
# structure restore on resume (shared by every structural callback)
# ----------------------------------------------------------------------------------------------------------
def install_restore_hook(pl_module: pl.LightningModule) -> None:
    """Makes ``pl_module.on_load_checkpoint`` replay the checkpoint's structural history first.

    Lightning calls the module's ``on_load_checkpoint`` right before it loads the weights and long before the
    callbacks' ``load_state_dict``, so replaying the history (decompositions and pruning, in order) there gives
    the weights the shapes they need. The class's own hook is wrapped, so several structural callbacks install
    the same wrapper; modules using :class:`~tetra_lightning.checkpoint.CompressibleMixin` need none.
    """
    if isinstance(pl_module, CompressibleMixin):
        return
    original = type(pl_module).on_load_checkpoint.__get__(pl_module)

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        replay_history(pl_module, history_from_checkpoint(checkpoint))
        replay_sections(pl_module, checkpoint)
        original(checkpoint)

    pl_module.__dict__["on_load_checkpoint"] = on_load_checkpoint


def remove_restore_hook(pl_module: pl.LightningModule) -> None:
    """Removes the wrapper of :func:`install_restore_hook` (at ``teardown``)."""
    pl_module.__dict__.pop("on_load_checkpoint", None)


def replay_from_trainer_ckpt(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Replays the structural history of a checkpoint path set on ``trainer.ckpt_path`` before ``fit``.

    ``fit(ckpt_path=...)`` is only resolved after ``setup``; :func:`install_restore_hook` covers that case.
    """
    if trainer.ckpt_path and os.path.isfile(str(trainer.ckpt_path)):
        checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=True)
        replay_history(pl_module, history_from_checkpoint(checkpoint))
        replay_sections(pl_module, checkpoint)


def first_input(batch: Any) -> torch.Tensor | None:
    """A one-sample example input taken from a training batch (``batch[0]`` of a tuple, or the batch)."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(inputs, torch.Tensor) and inputs.dim() > 0:
        return inputs[:1].detach().clone()
    return None
