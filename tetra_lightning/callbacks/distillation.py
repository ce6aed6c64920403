"""DistillationCallback: fine-tune a rewritten model towards the outputs of the model it was before the rewrite."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.nn import functional as F

from tetra_lightning.callbacks._checks import check_int, check_number
from tetra_lightning.callbacks._staged import StagedRewriteCallback
from tetra_lightning.checkpoint import applied_history, replay_history

__all__ = ["DistillationCallback", "distillation_loss"]

LogitsFn = Callable[[Any], Tensor]


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton's soft-target loss ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, in float32.

    Classes are in the last dimension; every other dimension counts as a sample (``(batch, classes)`` logits, or
    ``(batch, length, vocabulary)`` for a sequence), and the KL divergence is averaged over the samples. The
    ``T^2`` keeps the gradient scale independent of the temperature.

    Args:
        student: the student's logits (they carry the gradient).
        teacher: the teacher's logits, same shape.
        temperature: softening temperature ``T > 0``.

    Returns:
        A scalar tensor.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> float(distillation_loss(logits, logits, temperature=4.0))
        0.0
        >>> round(float(distillation_loss(torch.zeros(1, 2), torch.tensor([[0.0, 4.0]]), temperature=1.0)), 4)
        0.6031
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"The student's logits {tuple(student.shape)} and the teacher's {tuple(teacher.shape)} differ in shape. "
            "Pass `logits_fn` to DistillationCallback to pick the logits out of the module's output."
        )
    classes = student.shape[-1]
    log_student = F.log_softmax(student.float().reshape(-1, classes) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float().reshape(-1, classes) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _default_logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise MisconfigurationException(
        f"DistillationCallback expected the distilled module to return logits (a tensor, or a tuple starting with "
        f"one), got {type(output).__name__}. Pass `logits_fn=lambda output: output['logits']` (or whatever picks "
        "the logits) or `module=` naming the submodule that returns them."
    )


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that trains nothing and keeps no reference to a Trainer (Lightning drops ``_trainer`` itself)."""
    teacher = copy.deepcopy(module)
    for name in ("training_step", "on_load_checkpoint"):  # instance-level wrappers installed on the student
        teacher.__dict__.pop(name, None)
    teacher.requires_grad_(False)
    return teacher.eval()


class DistillationCallback(Callback):
    """Adds a knowledge-distillation term to the module's training loss, from a frozen teacher.

    After a structural rewrite (:class:`~tetra_lightning.callbacks.TensorCompressionCallback`,
    :class:`~tetra_lightning.callbacks.PruningCallback`, ...) the smaller model is fine-tuned; with this callback it
    also learns to reproduce the soft outputs of a teacher, by default **the model as it was just before the first
    rewrite** (Hinton et al., 2015). From epoch ``start_epoch`` on, every training step's loss becomes::

        loss + alpha * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))

    where ``x`` are the inputs of the module's first ``forward`` call in that ``training_step`` and
    ``student(x)`` its output (see :func:`distillation_loss`). The mean KL term is logged as
    ``distillation/kl``.

    **How it reaches the loss.** Lightning has no hook that lets a callback change the loss, so at ``setup("fit")``
    the callback wraps the module's ``training_step`` on the instance (``pl_module.training_step``, the attribute
    Lightning calls, also through DDP's forward redirection); the wrapper records the first call of the distilled
    module (a forward hook, removed after the step), runs the teacher on the same inputs under ``no_grad`` (inside
    the same autocast context) and adds the term to the returned loss (a tensor or ``{"loss": ...}``). The
    wrapper is removed at ``teardown``. Nothing in the user's module changes; it needs automatic optimization.

    **The teacher.** With ``teacher=None`` it is a frozen deep copy of the LightningModule taken at the end of
    epoch ``start_epoch - 1`` (or at the start of training when the run starts or resumes exactly at
    ``start_epoch``), i.e. before the structural callbacks rewrite the model at the start of ``start_epoch``,
    whatever the order of the callbacks. ``start_epoch=None`` takes the first stage epoch of the structural
    callbacks (:class:`~tetra_lightning.callbacks._staged.StagedRewriteCallback`) in the Trainer. It stays in eval
    mode (BatchNorm uses its running statistics) and is never trained, checkpointed as part of the model or counted
    in its size. Its weights and structural history are part of the callback's state, so
    ``Trainer.fit(ckpt_path=...)`` resumes with the same teacher (its structure is rebuilt from a copy of the
    model taken at ``setup``, before the checkpoint's weights load). A checkpoint therefore carries one more
    copy of the dense weights. A ``teacher`` module given instead is used as is (moved to the model's device,
    frozen, in eval mode) and not stored: pass it again when resuming.

    Args:
        alpha: weight of the distillation term, >= 0 (0 turns it off).
        temperature: softening temperature ``T``, > 0.
        start_epoch: first epoch that is distilled (``None``: the first stage epoch of the structural callbacks,
            or 0 with a given ``teacher``).
        stop_epoch: first epoch that is no longer distilled (``None``: distill until the end). The teacher
            helps most right after the rewrite; once the student is as good as the snapshot, the term only pulls
            it back towards the teacher (and costs a forward pass per step).
        teacher: a teacher module to use instead of the snapshot; it is called like the distilled module.
        module: name of the submodule whose calls are distilled (relative to the LightningModule; ``""``: the
            LightningModule's own ``forward``, i.e. ``self(x)`` in ``training_step``).
        logits_fn: ``logits_fn(output) -> Tensor`` picking the logits out of the distilled module's output
            (default: the output itself, or its first element when it is a tuple).
        verbose: print a line on rank zero when the teacher is taken.

    Raises:
        ValueError: for ``alpha < 0``, ``temperature <= 0``, ``start_epoch < 0`` or a ``stop_epoch`` not after
            ``start_epoch``.
        TypeError: for a ``teacher`` that is not an ``nn.Module`` or a ``logits_fn`` that is not callable.

    Example:
        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from tetra_lightning.callbacks import TensorCompressionCallback
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))
        ...     def forward(self, x):
        ...         return self.body(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(32, 64), torch.randint(0, 4, (32,))), batch_size=8)
        >>> compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
        >>> distillation = DistillationCallback(alpha=1.0, temperature=4.0, verbose=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[compression, distillation], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net())
        >>> distillation.start_epoch, distillation.teacher_epoch, type(distillation.teacher.body[0]).__name__
        (1, 1, 'Linear')
        >>> distillation.steps_distilled
        4
    """

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 4.0,
        start_epoch: int | None = None,
        teacher: nn.Module | None = None,
        *,
        stop_epoch: int | None = None,
        module: str = "",
        logits_fn: LogitsFn | None = None,
        verbose: bool = True,
    ) -> None:
        check_number("alpha", alpha, 0.0, float("inf"), low_open=False, hint="Pass e.g. alpha=1.0.")
        check_number("temperature", temperature, 0.0, float("inf"), hint="Pass e.g. temperature=4.0.")
        check_int("start_epoch", start_epoch, 0, "Pass e.g. the compression callback's start_epoch.", optional=True)
        check_int("stop_epoch", stop_epoch, 1, "Pass None to distill until the end of training.", optional=True)
        if stop_epoch is not None and start_epoch is not None and stop_epoch <= start_epoch:
            raise ValueError(
                f"`stop_epoch` must come after `start_epoch` ({start_epoch}), got {stop_epoch}. Pass e.g. "
                f"stop_epoch={start_epoch + 2} to distill for two epochs."
            )
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(
                f"`teacher` must be None (the model before the first rewrite) or an nn.Module, got "
                f"{type(teacher).__name__}."
            )
        if not isinstance(module, str):
            raise TypeError(f"`module` must be a submodule name (str, '' for the LightningModule), got {module!r}.")
        if logits_fn is not None and not callable(logits_fn):
            raise TypeError(f"`logits_fn` must be callable as logits_fn(output) -> Tensor, got {logits_fn!r}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.requested_start_epoch = start_epoch
        self.start_epoch: int | None = start_epoch
        self.stop_epoch = stop_epoch
        self.module = module
        self.logits_fn: LogitsFn = logits_fn or _default_logits
        self.verbose = verbose
        self.given_teacher = teacher
        #: The teacher in use (the given one, or the snapshot once taken).
        self.teacher: nn.Module | None = teacher
        #: The epoch at whose start the snapshot teacher stands (``None`` for a given teacher or before the snapshot).
        self.teacher_epoch: int | None = None
        #: Training steps that got the distillation term in this process.
        self.steps_distilled = 0
        self._teacher_history: list[dict[str, Any]] = []
        self._restored: dict[str, Any] | None = None
        self._template: nn.Module | None = None

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "DistillationCallback adds its term to the loss that `training_step` returns, which Lightning only "
                "back-propagates with automatic optimization. Add the term yourself with "
                "`tetra_lightning.callbacks.distillation.distillation_loss` under manual optimization."
            )
        self._resolve_start_epoch(trainer)
        if self.stop_epoch is not None and self.start_epoch is not None and self.stop_epoch <= self.start_epoch:
            raise MisconfigurationException(
                f"DistillationCallback(stop_epoch={self.stop_epoch}) comes before the first distilled epoch "
                f"{self.start_epoch} (the first structural stage). Pass a later `stop_epoch` or None."
            )
        self._target(pl_module)  # fails early, listing the submodules, when `module` does not exist
        if self.given_teacher is None:
            # A new fit takes its own snapshot (or restores one from its checkpoint's state, after this hook).
            self.teacher, self.teacher_epoch, self._teacher_history = None, None, []
            # The structure the teacher is rebuilt from on resume: the model before the checkpoint's history loads.
            self._template = _frozen_copy(pl_module).cpu()
        self._install(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.__dict__.pop("training_step", None)
            self._template = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = next(pl_module.parameters()).device
        if self.given_teacher is not None:
            self.teacher = self.given_teacher.to(device).requires_grad_(False).eval()
            return
        assert self.start_epoch is not None
        if self._restored is not None and self._restored.get("teacher") is not None:
            self._rebuild_teacher(self._restored, device)
        elif self.teacher is None and trainer.current_epoch >= self.start_epoch:
            late = [
                f"{cb.name} at epoch {epoch}"
                for cb in trainer.callbacks
                if isinstance(cb, StagedRewriteCallback)
                for epoch in cb.rewrite_epochs
                if epoch >= self.start_epoch
            ]
            if late:
                raise MisconfigurationException(
                    f"DistillationCallback resumed at epoch {trainer.current_epoch}, after the model was rewritten "
                    f"({', '.join(late)}), but the checkpoint holds no teacher (it was written without "
                    "DistillationCallback). Resume from a checkpoint written before the rewrite, or pass `teacher=`."
                )
            self._take_snapshot(pl_module, trainer.current_epoch)
        self._restored = None
        self._template = None
        if self.teacher is not None:
            self.teacher.to(device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The end of epoch start_epoch - 1 comes before any callback's start of epoch start_epoch, so the copy is
        # the model before the rewrite whatever the callbacks' order (and checkpoints saved now include it).
        if self.teacher is None and self.start_epoch is not None and trainer.current_epoch + 1 == self.start_epoch:
            self._take_snapshot(pl_module, self.start_epoch)

    def state_dict(self) -> dict[str, Any]:
        snapshot = self.teacher is not None and self.given_teacher is None
        return {
            "start_epoch": self.start_epoch,
            "teacher_epoch": self.teacher_epoch,
            "teacher_history": [dict(entry) for entry in self._teacher_history],
            "teacher": (
                {key: value.detach().cpu() for key, value in self.teacher.state_dict().items()}  # type: ignore[union-attr]
                if snapshot
                else None
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        if state_dict.get("teacher_epoch") is not None:
            self.teacher_epoch = int(state_dict["teacher_epoch"])

    # ------------------------------------------------------------------------------------------------------
    # the teacher
    # ------------------------------------------------------------------------------------------------------
    def _resolve_start_epoch(self, trainer: pl.Trainer) -> None:
        if self.requested_start_epoch is not None:
            self.start_epoch = self.requested_start_epoch
            return
        if self.given_teacher is not None:
            self.start_epoch = 0
            return
        firsts = [
            cb.schedule.stage_epoch(0)
            for cb in trainer.callbacks
            if isinstance(cb, StagedRewriteCallback) and cb.schedule.epochs != ()
        ]
        if not firsts:
            raise MisconfigurationException(
                "DistillationCallback(start_epoch=None) takes the teacher before the first structural rewrite, but "
                "the Trainer has no structural callback (TensorCompressionCallback, PruningCallback, "
                "LowRankCallback). Pass `start_epoch=` (the teacher is then the model at the start of that epoch) "
                "or `teacher=`."
            )
        self.start_epoch = min(firsts)

    def _target(self, module: nn.Module) -> nn.Module:
        if not self.module:
            return module
        try:
            return module.get_submodule(self.module)
        except AttributeError:
            names = [name for name, _ in module.named_modules() if name][:20]
            raise MisconfigurationException(
                f"DistillationCallback(module={self.module!r}): {type(module).__name__} has no such submodule. "
                f"Its submodules include: {names}. Pass module='' to distill the LightningModule's forward."
            ) from None

    def _take_snapshot(self, pl_module: pl.LightningModule, epoch: int) -> None:
        self.teacher = _frozen_copy(pl_module)
        self.teacher_epoch = epoch
        self._teacher_history = [dict(entry) for entry in applied_history(pl_module)]
        if self.verbose:
            params = sum(p.numel() for p in self.teacher.parameters())
            rank_zero_info(
                f"DistillationCallback: teacher = the model at the start of epoch {self.teacher_epoch} "
                f"({params:,} parameters), alpha={self.alpha:g}, temperature={self.temperature:g}."
            )

    def _rebuild_teacher(self, state: dict[str, Any], device: torch.device) -> None:
        history = [dict(entry) for entry in state.get("teacher_history", [])]
        if self._template is None:
            raise MisconfigurationException(
                "DistillationCallback could not rebuild the teacher from the checkpoint: no copy of the model was "
                "taken at setup. Resume with `trainer.fit(model, ckpt_path=...)` with this callback in the Trainer."
            )
        teacher = self._template
        try:
            replay_history(teacher, history)
        except ValueError as error:
            raise MisconfigurationException(
                "DistillationCallback could not rebuild the teacher from the checkpoint: the model given to `fit` had "
                f"already been rewritten before setup ({error}). Resume on a freshly constructed model."
            ) from None
        teacher.load_state_dict(state["teacher"])
        self.teacher = teacher.to(device).requires_grad_(False).eval()
        self._teacher_history = history
        self._template = None

    # ------------------------------------------------------------------------------------------------------
    # the loss
    # ------------------------------------------------------------------------------------------------------
    def _active(self, trainer: pl.Trainer) -> bool:
        return (
            self.alpha > 0
            and self.teacher is not None
            and self.start_epoch is not None
            and trainer.current_epoch >= self.start_epoch
            and (self.stop_epoch is None or trainer.current_epoch < self.stop_epoch)
        )

    def _install(self, pl_module: pl.LightningModule) -> None:
        original = type(pl_module).training_step.__get__(pl_module)
        callback = self

        def training_step(*args: Any, **kwargs: Any) -> Any:
            trainer = pl_module.trainer
            if not callback._active(trainer):
                return original(*args, **kwargs)
            target = callback._target(pl_module)
            calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []

            def record(module: nn.Module, inputs: tuple[Any, ...], in_kwargs: dict[str, Any], output: Any) -> None:
                if not calls:
                    calls.append((inputs, in_kwargs, output))

            handle = target.register_forward_hook(record, with_kwargs=True)
            try:
                output = original(*args, **kwargs)
            finally:
                handle.remove()
            if output is None:  # the step chose to skip this batch
                return output
            if not calls:
                where = f"`self.{callback.module}(...)`" if callback.module else "`self(x)`"
                raise MisconfigurationException(
                    f"DistillationCallback: {type(pl_module).__name__}.training_step never called {where}, so there "
                    "is no student output to distill. Pass `module=` naming the submodule that computes the logits."
                )
            inputs, in_kwargs, student_output = calls[0]
            assert callback.teacher is not None
            with torch.no_grad():
                teacher_output = callback._target(callback.teacher)(*inputs, **in_kwargs)
            term = distillation_loss(
                callback.logits_fn(student_output), callback.logits_fn(teacher_output).detach(), callback.temperature
            )
            pl_module.log("distillation/kl", term.detach(), on_step=False, on_epoch=True)
            callback.steps_distilled += 1
            if isinstance(output, dict):
                return {**output, "loss": output["loss"] + callback.alpha * term}
            return output + callback.alpha * term

        pl_module.__dict__["training_step"] = training_step
