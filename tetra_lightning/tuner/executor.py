"""The executor interface, and what every executor does with a trial's outcome.

An :class:`Executor` runs the remaining trials of a loaded study: in this process
(:class:`~tetra_lightning.tuner.local.LocalExecutor`), in local worker processes
(:class:`~tetra_lightning.tuner.processes.ProcessExecutor`) or as Ray Tune trials (the Ray backend). Whichever runs
a trial, its outcome is recorded in the study by :func:`record_outcome` (learning curve, failure reason and
traceback, one log line) and judged by :func:`must_stop` (a failure ``catch`` does not cover, or one that every
trial would repeat), so the executors differ only in where the trials run.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from tetra_lightning.tuner.context import StudyContext
from tetra_lightning.tuner.storage import FAIL_REASON_KEY, TRACEBACK_KEY
from tetra_lightning.tuner.trial import TrialMisconfigured, TrialOutcome
from tetra_lightning.tuner.worker import still_running

log = logging.getLogger("tetra_lightning.tuner")

QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")


class Executor(ABC):
    """Runs the remaining trials of a study, recording each one with :func:`record_outcome`."""

    @abstractmethod
    def run(self, context: StudyContext, study: optuna.Study, fit_args: dict[str, Any], *, done: int,
            failures_left: int) -> None:
        """Runs trials until the study holds ``context.budget`` finished trials or ``failures_left`` more fail.

        Args:
            context: the study and trial settings.
            study: the study, loaded and cleaned of stale trials.
            fit_args: what ``run_trial`` trains with (``model_fn``, data, ``trainer_kwargs``, ``trainer_fn``).
            done: COMPLETE + PRUNED trials of the study before this call.
            failures_left: failed configs tolerated before the study stops.

        Raises:
            Exception: a trial's exception that ``context.catch`` does not cover, or a ``TrialMisconfigured``
                while no trial of the study has finished.
        """


def record_outcome(context: StudyContext, study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Tells the study how a trial ended: its value (or PRUNED), or FAIL with the reason and traceback.

    The learning curve is stored as intermediate values when no pruner received it live. A trial that another
    worker already failed (its heartbeat was silent for the grace period; its params are queued again) is not
    told twice: its result is dropped with a warning.
    """
    if not still_running(study, trial):
        log.warning("Trial %d was marked dead by another worker while it ran; its %s result is dropped.",
                    trial.number, outcome.status)
        return
    if not context.reports_live:
        for epoch, value in sorted(outcome.epoch_values.items()):
            if math.isfinite(value):
                trial.report(value, step=epoch)
    params = " ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    if outcome.status == "failed":
        trial.set_user_attr(FAIL_REASON_KEY, outcome.error)
        trial.set_user_attr(TRACEBACK_KEY, outcome.traceback)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("Trial %d FAIL in %.1fs: %s | %s", trial.number, outcome.duration_s, outcome.error, params)
        return
    if outcome.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, outcome.value)
    log.info(
        "Trial %d %s %s=%s (best %s) in %.1fs | %s",
        trial.number, outcome.status.upper(), context.monitor, fmt(outcome.value),
        fmt(best_value(study)), outcome.duration_s, params,
    )


def fails_every_trial(study: optuna.Study, outcome: TrialOutcome) -> bool:
    """Whether a failure is the setting's, not the config's: a ``TrialMisconfigured`` while no trial finished."""
    if not isinstance(outcome.exception, TrialMisconfigured):
        return False
    return not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def must_stop(context: StudyContext, study: optuna.Study, outcome: TrialOutcome) -> BaseException | None:
    """The exception that ends the study after this outcome (re-raised by the executor), or ``None``."""
    if fails_every_trial(study, outcome):
        return outcome.exception
    if outcome.status == "failed" and not isinstance(outcome.exception, context.catch):
        return outcome.exception
    return None


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, ``None`` before its first COMPLETE trial."""
    try:
        return float(study.best_value)
    except ValueError:
        return None


def fmt(value: Any) -> str:
    """A value for a log line: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextlib.contextmanager
def progress(enabled: bool, total: int, initial: int, name: str) -> Iterator[Any]:
    """A tqdm bar over the study's finished trials (``None`` when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=f"tuning {name}", unit="trial", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def refresh_progress(context: StudyContext, study: optuna.Study, bar: Any) -> None:
    """Sets the bar to the study's finished trials (workers elsewhere finish trials too) and its best value."""
    if bar is None:
        return
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    bar.n = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    best = best_value(study)
    if best is not None:
        bar.set_postfix({f"best {context.monitor}": f"{best:.4g}"}, refresh=False)
    bar.refresh()


@contextlib.contextmanager
def quiet_logs(enabled: bool) -> Iterator[None]:
    """Silences Lightning's per-trial info lines and Optuna's trial log while trials run (when ``enabled``)."""
    if not enabled:
        yield
        return
    previous = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    optuna_level = optuna.logging.get_verbosity()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
        optuna.logging.set_verbosity(optuna_level)
