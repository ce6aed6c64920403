"""LocalExecutor: the tuner's trials one after another in this process (also the loop of each worker process)."""

from __future__ import annotations

import traceback
from typing import Any

import optuna

from tetra_lightning.tuner._optuna import storage_of, trial_id_of
from tetra_lightning.tuner.context import StudyContext
from tetra_lightning.tuner.executor import Executor, must_stop, progress, record_outcome, refresh_progress
from tetra_lightning.tuner.trial import TrialOutcome, run_trial
from tetra_lightning.tuner.worker import Heartbeat, claim_trial


class LocalExecutor(Executor):
    """Runs the trials one at a time in this process, each a fresh ``Trainer.fit`` (``n_jobs=1``).

    Example:
        >>> isinstance(LocalExecutor(), Executor)
        True
    """

    def run(self, context: StudyContext, study: optuna.Study, fit_args: dict[str, Any], *, done: int,
            failures_left: int) -> None:
        with progress(context.progress_bar, context.budget, done, context.study_name) as bar:
            run_trials(context, study, fit_args, bar=bar)


def run_trials(context: StudyContext, study: optuna.Study, fit_args: dict[str, Any], *, bar: Any = None,
               device_index: int | None = None) -> None:
    """Claims and runs trials of ``study`` until none is left to this worker (see ``worker.claim_trial``).

    The storage is the only coordinator: each trial claims a budget slot there, so processes of this tuner, of
    other tuners and of other machines together run exactly ``context.budget`` trials.

    Args:
        context: the study and trial settings.
        study: the study, as this process opened it.
        fit_args: what ``run_trial`` trains with.
        bar: a progress bar to refresh after each trial, or ``None``.
        device_index: the GPU of this worker when several workers share a machine.

    Raises:
        Exception: see :meth:`Executor.run`; ``KeyboardInterrupt``/``SystemExit`` are recorded, then re-raised.
    """
    while True:
        trial = claim_trial(study, budget=context.budget, distributions=context.distributions,
                            max_failures=context.max_failures, retry_stale=context.retry_stale)
        if trial is None:
            return
        config = {name: trial.params[name] for name in context.distributions}
        with Heartbeat(storage_of(study), trial_id_of(trial)):
            try:
                outcome = run_trial(
                    config,
                    monitor=context.monitor,
                    mode=context.mode,
                    objective=context.objective,
                    optuna_trial=trial,
                    pruning=context.reports_live,
                    study_name=context.study_name,
                    trial_number=trial.number,
                    device_index=device_index,
                    **fit_args,
                )
            except BaseException as error:  # model_fn misuse, KeyboardInterrupt, SystemExit: record, re-raise
                outcome = TrialOutcome(
                    "failed",
                    error=f"{type(error).__name__}: {error}",
                    traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
                    exception=error,
                )
                record_outcome(context, study, trial, outcome)
                raise
            record_outcome(context, study, trial, outcome)
        stop = must_stop(context, study, outcome)
        if stop is not None:
            raise stop
        refresh_progress(context, study, bar)
