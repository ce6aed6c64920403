"""Running one trial: a fresh model, datamodule and Trainer for one config, and its objective value."""

from __future__ import annotations

import copy
import difflib
import gc
import inspect
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from tetra_lightning.tuner.pruning import TrialPruningCallback

TrialStatus = Literal["complete", "pruned", "failed"]

# Trainer defaults that keep a sweep's console readable; an explicit trainer_kwargs entry wins.
QUIET_TRAINER_DEFAULTS: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}


class TrialFailed(Exception):
    """A trial that ran but produced no usable objective value (NaN monitor, NaN loss)."""


class TrialMisconfigured(MisconfigurationException):
    """A trial failure that every trial would repeat: the monitor is never logged, a Trainer argument does not exist.

    Recorded as a failed trial like any other; the tuner then raises it when no trial of the study has finished
    yet (the setting, not the config, is wrong), instead of training until ``max_failures``.
    """


@dataclass
class TrialOutcome:
    """What one trial produced.

    Attributes:
        status: ``"complete"``, ``"pruned"`` or ``"failed"``.
        value: the objective value (for a pruned trial its last reported value; ``None`` when failed).
        epoch_values: the monitor after each validation epoch, ``{epoch: value}``.
        error: one line naming the failure, ``None`` unless failed.
        traceback: the formatted traceback of the failure.
        exception: the exception itself (not stored; lets the tuner re-raise it when not caught).
        duration_s: wall time of the trial.
    """

    status: TrialStatus
    value: float | None = None
    epoch_values: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    exception: BaseException | None = None
    duration_s: float = 0.0


class TrialRecorder(Callback):
    """Records the monitor after every validation epoch and stops a run whose loss or monitor is NaN."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.epoch_values: dict[int, float] = {}
        self.nan_reason: str | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not torch.isfinite(loss.detach()).item():
            self._stop(trainer, f"training loss became {loss.item()} at epoch {trainer.current_epoch}, batch {batch_idx}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        current = trainer.callback_metrics.get(self.monitor)
        if current is None:
            return
        value = float(current)
        self.epoch_values.setdefault(int(trainer.current_epoch), value)
        if not math.isfinite(value):
            self._stop(trainer, f"monitor {self.monitor!r} became {value} at epoch {trainer.current_epoch}")

    def _stop(self, trainer: Trainer, reason: str) -> None:
        if self.nan_reason is None:
            self.nan_reason = reason
        trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_values": dict(self.epoch_values), "nan_reason": self.nan_reason}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_values = {int(k): float(v) for k, v in state_dict.get("epoch_values", {}).items()}
        self.nan_reason = state_dict.get("nan_reason")


def trainer_arguments() -> list[str]:
    """The keyword arguments ``lightning.pytorch.Trainer`` accepts, sorted."""
    parameters = inspect.signature(Trainer.__init__).parameters
    return sorted(name for name, parameter in parameters.items()
                  if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD))


def unknown_trainer_argument_message(kwargs: Mapping[str, Any], argument: str) -> str | None:
    """The message for the first key of ``kwargs`` that the Trainer does not accept (``None`` when all are known).

    Example:
        >>> print(unknown_trainer_argument_message({"max_epoch": 1}, "trainer_kwargs"))  # doctest: +ELLIPSIS
        `trainer_kwargs` has 'max_epoch', which lightning.pytorch.Trainer does not accept (did you mean 'max_epochs'?)...
    """
    accepted = trainer_arguments()
    unknown = [key for key in kwargs if key not in accepted]
    if not unknown:
        return None
    close = difflib.get_close_matches(str(unknown[0]), accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"`{argument}` has {unknown[0]!r}, which lightning.pytorch.Trainer does not accept{hint}. The Trainer "
            f"accepts {accepted}.")


def missing_monitor_message(monitor: str, metrics: Mapping[str, Any]) -> str:
    """The message for a monitor key that the model never logged, listing the keys that exist."""
    keys = sorted(metrics)
    return (
        f"monitor {monitor!r} is not in trainer.callback_metrics; the keys that exist are {keys}. "
        f"Log it in the LightningModule with `self.log({monitor!r}, ...)` or pass `monitor=` one of those keys."
    )


def trial_loggers(logger: Any, *, study_name: str, trial_number: int, config: Mapping[str, Any]) -> Any:
    """Returns fresh loggers for one trial, built from the loggers given in ``trainer_kwargs``.

    A logger instance cannot be shared between Trainer runs (every trial would write into the same
    version). CSV and TensorBoard loggers are rebuilt in the same folder with version ``trial-N``;
    a ``WandbLogger`` is rebuilt as a new run ``trial-N`` in the W&B group ``study_name`` with the
    config attached; any other logger is deep-copied.
    """
    if logger is None or isinstance(logger, bool):
        return logger
    if isinstance(logger, Logger):
        return _trial_logger(logger, study_name=study_name, trial_number=trial_number, config=config)
    return [
        _trial_logger(one, study_name=study_name, trial_number=trial_number, config=config) for one in logger
    ]


def _trial_logger(logger: Logger, *, study_name: str, trial_number: int, config: Mapping[str, Any]) -> Logger:
    version = f"trial-{trial_number}"
    if isinstance(logger, WandbLogger):
        init = dict(logger._wandb_init)
        save_dir = init.pop("dir", None)
        for key in ("name", "id", "resume", "anonymous", "project", "group", "reinit", "config", "job_type"):
            init.pop(key, None)
        return WandbLogger(
            name=version,
            save_dir=save_dir if save_dir is not None else ".",
            project=logger._wandb_init.get("project"),
            offline=logger._offline,
            log_model=logger._log_model,
            prefix=logger._prefix,
            checkpoint_name=logger._checkpoint_name,
            group=logger._wandb_init.get("group") or study_name,
            job_type="trial",
            config=dict(config),
            reinit="create_new",
            **init,
        )
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return type(logger)(save_dir=logger.save_dir, name=logger.name, version=version)
    return copy.deepcopy(logger)


def finish_loggers(trainer: Trainer | None) -> None:
    """Closes the W&B runs a trial opened (WandbLogger leaves them open after ``fit``)."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            try:
                logger._experiment.finish()
            except Exception:  # noqa: BLE001 - a logger that cannot close must not fail the study
                pass


def build_trainer(
    config: Mapping[str, Any],
    *,
    trainer_kwargs: Mapping[str, Any] | None,
    trainer_fn: Callable[[dict[str, Any]], Trainer | Mapping[str, Any]] | None,
    extra_callbacks: list[Callback],
    study_name: str,
    trial_number: int,
    device_index: int | None = None,
) -> Trainer:
    """Returns a fresh Trainer for one trial.

    ``trainer_kwargs`` pass through (accelerator, devices, precision, ...); its callbacks are
    deep-copied, its loggers rebuilt per trial (:func:`trial_loggers`). ``trainer_fn(config)`` may
    return a dict merged over ``trainer_kwargs`` or a ready ``Trainer`` (then the tuner's callbacks are
    appended to it).
    """
    kwargs: dict[str, Any] = dict(QUIET_TRAINER_DEFAULTS)
    kwargs.update(trainer_kwargs or {})
    built = trainer_fn(dict(config)) if trainer_fn is not None else None
    if isinstance(built, Trainer):
        built.callbacks.extend(extra_callbacks)
        return built
    if built is not None:
        if not isinstance(built, Mapping):
            raise TypeError(
                f"`trainer_fn(config)` must return a lightning.pytorch.Trainer or a dict of Trainer arguments, "
                f"got {type(built).__name__}."
            )
        message = unknown_trainer_argument_message(built, "trainer_fn(config)")
        if message is not None:
            raise TrialMisconfigured(message)
        kwargs.update(built)
    callbacks = kwargs.get("callbacks") or []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    kwargs["callbacks"] = [copy.deepcopy(cb) for cb in callbacks] + list(extra_callbacks)
    kwargs["logger"] = trial_loggers(
        kwargs.get("logger", True), study_name=study_name, trial_number=trial_number, config=config
    )
    if device_index is not None and "devices" not in kwargs:
        # One worker process per GPU: worker i trains on GPU i (modulo the number of GPUs).
        kwargs["devices"] = [device_index]
        if kwargs.get("accelerator", "auto") == "auto":
            kwargs["accelerator"] = "gpu"
    return Trainer(**kwargs)


def check_model(model: Any) -> LightningModule:
    """Returns ``model`` when it is a ``lightning.pytorch.LightningModule``; raises a TypeError naming the fix."""
    if isinstance(model, LightningModule):
        return model
    module = type(model).__module__
    hint = ""
    if module.startswith("pytorch_lightning") or any(
        base.__module__.startswith("pytorch_lightning") for base in type(model).__mro__
    ):
        hint = " It subclasses pytorch_lightning.LightningModule: import LightningModule from lightning.pytorch."
    raise TypeError(
        f"`model_fn(config)` must return a lightning.pytorch.LightningModule, got {type(model).__name__}.{hint}"
    )


def run_trial(
    config: Mapping[str, Any],
    *,
    model_fn: Callable[[dict[str, Any]], LightningModule],
    monitor: str,
    mode: Literal["max", "min"],
    objective: Literal["best", "last"] = "last",
    datamodule: LightningDataModule | None = None,
    datamodule_fn: Callable[[dict[str, Any]], LightningDataModule] | None = None,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    trainer_fn: Callable[[dict[str, Any]], Trainer | Mapping[str, Any]] | None = None,
    optuna_trial: Any = None,
    pruning: bool = False,
    study_name: str = "tetra",
    trial_number: int = 0,
    device_index: int | None = None,
) -> TrialOutcome:
    """Trains one config and returns its outcome; exceptions inside training become a failed outcome.

    The value is ``trainer.callback_metrics[monitor]`` after fit (``objective="last"``) or the best of
    the values recorded after each validation epoch and after fit (``objective="best"``).

    Args:
        config: the parameters of this trial.
        model_fn: builds a fresh LightningModule from the config.
        monitor: the metric to optimize.
        mode: ``"max"`` or ``"min"``.
        objective: ``"last"`` or ``"best"`` epoch.
        datamodule: a datamodule shared by all trials, or
        datamodule_fn: builds one per config (e.g. when ``batch_size`` is tuned).
        train_dataloaders: dataloaders when there is no datamodule.
        val_dataloaders: dataloaders when there is no datamodule.
        trainer_kwargs: arguments of every trial's Trainer.
        trainer_fn: per-config Trainer or Trainer arguments.
        optuna_trial: the Optuna trial to report intermediate values to (needed for pruning).
        pruning: add a :class:`TrialPruningCallback`.
        study_name: W&B group and log folder name.
        trial_number: the trial's number (names its logs).
        device_index: the GPU of this worker when several workers share a machine.

    Returns:
        A :class:`TrialOutcome`.

    Raises:
        TypeError: when ``model_fn`` does not return a LightningModule (a programming error, not a bad config).
    """
    start = time.perf_counter()
    config = dict(config)
    trainer: Trainer | None = None
    model: LightningModule | None = None
    recorder = TrialRecorder(monitor)
    pruner = TrialPruningCallback(optuna_trial, monitor) if pruning and optuna_trial is not None else None
    try:
        built = model_fn(config)
    except Exception as error:  # noqa: BLE001 - a config that cannot build a model is a failed trial
        return _failed(error, start)
    model = check_model(built)  # a model_fn that returns no LightningModule is a bug: raised, not recorded
    try:
        dm = datamodule_fn(config) if datamodule_fn is not None else datamodule
        trainer = build_trainer(
            config,
            trainer_kwargs=trainer_kwargs,
            trainer_fn=trainer_fn,
            extra_callbacks=[recorder] + ([pruner] if pruner is not None else []),
            study_name=study_name,
            trial_number=trial_number,
            device_index=device_index,
        )
        if dm is not None:
            trainer.fit(model, datamodule=dm)
        else:
            trainer.fit(model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders)
        if recorder.nan_reason is not None:
            raise TrialFailed(recorder.nan_reason)
        metrics = trainer.callback_metrics
        if monitor not in metrics:
            raise TrialMisconfigured(missing_monitor_message(monitor, metrics))
        last = float(metrics[monitor])
        if not math.isfinite(last):
            raise TrialFailed(f"monitor {monitor!r} is {last} after training")
        if objective == "best":
            candidates = [v for v in recorder.epoch_values.values() if math.isfinite(v)] + [last]
            value = max(candidates) if mode == "max" else min(candidates)
        else:
            value = last
        if pruner is not None and pruner.pruned:
            return TrialOutcome(
                "pruned",
                value=pruner.last_value if pruner.last_value is not None else last,
                epoch_values=dict(recorder.epoch_values),
                duration_s=time.perf_counter() - start,
            )
        return TrialOutcome(
            "complete", value=value, epoch_values=dict(recorder.epoch_values), duration_s=time.perf_counter() - start
        )
    except Exception as error:  # noqa: BLE001 - recorded as a failed trial; the tuner re-raises if not caught
        outcome = _failed(error, start)
        outcome.epoch_values = dict(recorder.epoch_values)
        return outcome
    finally:
        finish_loggers(trainer)
        del trainer, model
        _free_memory()


def _failed(error: BaseException, start: float) -> TrialOutcome:
    reason = str(error).strip() or type(error).__name__
    if isinstance(error, torch.OutOfMemoryError):
        reason = f"out of memory: {reason.splitlines()[0]}"
    elif not isinstance(error, (TrialFailed, TrialMisconfigured)):
        reason = f"{type(error).__name__}: {reason}"
    return TrialOutcome(
        "failed",
        error=reason,
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
        exception=error,
        duration_s=time.perf_counter() - start,
    )


def _free_memory() -> None:
    # An OOM trial leaves its activations cached; the next trial must start from an empty device.
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
