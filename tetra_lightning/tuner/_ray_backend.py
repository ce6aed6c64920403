"""RayExecutor: ``TetraOptTuner(executor="ray")`` runs its trials as Ray Tune trials, recorded in the study.

A :class:`~tetra_lightning.tuner.ray.TetraOptSearch` (``_StudySearch``) proposes the configs and mirrors every Ray
trial into the tuner's Optuna study: a RUNNING trial when Ray gets the config, told through the executors' shared
``record_outcome`` when Ray reports it finished. Private: the public Ray API is ``TetraOptSearch``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import pickle
import re
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState, create_trial
from ray import tune
from ray.tune.search import Searcher

from tetra_lightning.tuner._optuna import fixed_params, live_trial, new_trial, storage_of, trial_id_of
from tetra_lightning.tuner.context import StudyContext
from tetra_lightning.tuner.executor import (
    QUIET_LOGGERS,
    Executor,
    fails_every_trial,
    progress,
    record_outcome,
)
from tetra_lightning.tuner.observation import finite_or_none
from tetra_lightning.tuner.ray import TetraOptSearch
from tetra_lightning.tuner.sampler import TetraOptSampler
from tetra_lightning.tuner.space import snap_to_distribution
from tetra_lightning.tuner.storage import RETRY_OF_KEY, STALE_PREFIX, stamp_trial
from tetra_lightning.tuner.trial import TrialMisconfigured, TrialOutcome, run_trial
from tetra_lightning.tuner.worker import Heartbeat

log = logging.getLogger("tetra_lightning.tuner")

# Keys every Ray trial of TetraOptTuner(executor="ray") reports next to the monitor.
STATUS_KEY = "tetra_status"
ERROR_KEY = "tetra_error"
TRACEBACK_KEY = "tetra_traceback"
EPOCHS_KEY = "tetra_epoch_values"
DURATION_KEY = "tetra_duration_s"
EXCEPTION_KEY = "tetra_exception"  # base64 pickle of an exception that ends the study


class RayExecutor(Executor):
    """Runs the remaining trials as Ray Tune trials driven by a :class:`TetraOptSearch`.

    Every trial is the tuner's ``run_trial`` (a fresh ``Trainer.fit``) in a Ray worker with one CPU (and one
    GPU when the cluster has GPUs and ``trainer_kwargs`` asks for none other); at most ``context.n_jobs`` run at
    once. Each trial is recorded in the study when Ray hands out its config (RUNNING) and told when it
    finishes, so the result, the log lines and the resume path are those of the local executors. Connects to
    the running Ray instance (``ray.init(address=...)`` before ``fit``, or ``RAY_ADDRESS``) or starts a local
    one for the call and stops it afterwards.

    Example:
        >>> isinstance(RayExecutor(), Executor)
        True
    """

    def run(self, context: StudyContext, study: optuna.Study, fit_args: dict[str, Any], *, done: int,
            failures_left: int) -> None:
        # RUNNING trials here belong to other live tuners (stale ones were failed by `fit`): they will finish
        slots = context.budget - done - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if slots <= 0 or failures_left <= 0:
            log.info("Study %r: no trial left to run on Ray (%d finished, %d failures left).", context.study_name,
                     done, failures_left)
            return
        started = False
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=not context.quiet, configure_logging=False)
            started = True
        search: _StudySearch | None = None
        try:
            with progress(context.progress_bar, context.budget, done, context.study_name) as bar:
                search = _StudySearch(context, study, budget=slots, max_failures=failures_left, bar=bar)
                payload = {
                    "fit_args": fit_args, "monitor": context.monitor, "mode": context.mode,
                    "objective": context.objective, "study_name": context.study_name, "catch": context.catch,
                    "quiet": context.quiet, "names": list(context.distributions),
                }
                trainable = tune.with_resources(
                    tune.with_parameters(_ray_trial, payload=payload), _trial_resources(fit_args["trainer_kwargs"])
                )
                ray_tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=search, num_samples=-1, max_concurrent_trials=context.n_jobs, reuse_actors=True,
                        trial_name_creator=search.trial_name, trial_dirname_creator=search.trial_name,
                    ),
                    run_config=tune.RunConfig(
                        name=f"{context.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                        storage_path=_storage_path(context.storage),
                        verbose=0 if context.quiet else 1,
                    ),
                )
                ray_tuner.fit()
            if search.abort_error is not None:
                raise search.abort_error
        finally:
            if search is not None:
                search.close_all("the Ray run stopped before this trial reported a result")
            if started:
                ray.shutdown()


class _StudySearch(TetraOptSearch):
    """TetraOptSearch that mirrors its trials into the tuner's Optuna study: a RUNNING trial when Ray gets the
    config, told (values, curve, failure reason) when Ray reports the trial finished."""

    def __init__(self, context: StudyContext, study: optuna.Study, *, budget: int, max_failures: int,
                 bar: Any = None) -> None:
        super().__init__(context.search_space, metric=context.monitor, mode=context.mode, budget=budget,
                         seed=context.seed, max_concurrent=context.n_jobs, max_failures=max_failures,
                         **context.optimizer_kwargs)
        self._context = context
        self._study = study
        self._bar = bar
        self._open: dict[str, int] = {}  # ray trial id -> optuna trial id
        self._heartbeats: dict[str, Any] = {}  # ray trial id -> Heartbeat of its optuna trial
        self._numbers: dict[str, int] = {}  # ray trial id -> optuna trial number
        self._waiting: dict[tuple[int, ...], list[int]] = {}  # grid point -> WAITING (enqueued) optuna trial ids
        self.abort_error: BaseException | None = None  # an exception that ends the study: stop and re-raise
        self._resume_from_study()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the search algorithm with the Tuner; the study and its settings stay in this process.
        state = self.__dict__.copy()
        for key in ("_context", "_study", "_bar"):
            state[key] = None
        state["_heartbeats"] = {}
        return state

    def _resume_from_study(self) -> None:
        context, study = self._context, self._study
        # the same replay of finished trials as the local sampler (stale failures are not held against a config)
        sampler = TetraOptSampler(context.search_space, seed=context.seed, optimizer_kwargs=context.optimizer_kwargs)
        self._optimizer = sampler.build_optimizer(study, dict(context.distributions))
        space = self._optimizer.space
        evaluated = {space.to_index(entry["params"]) for entry in self._optimizer.history}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            fixed = fixed_params(trial)
            try:
                key = space.to_index({name: fixed[name] for name in context.distributions})
            except (KeyError, ValueError):
                continue
            if key not in self._waiting and key not in evaluated:
                self._initial.append(space.from_index(key))
                self._initial_keys.add(key)
            self._waiting.setdefault(key, []).append(trial_id_of(trial))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.abort_error is not None:
            return Searcher.FINISHED  # running trials finish and are recorded, then RayExecutor re-raises
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._open_trial(trial_id, config)
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        self._close_trial(trial_id, result, error)

    def trial_name(self, trial: Any) -> str:
        """Ray's name of a trial: ``trial-N`` with N the Optuna trial number (it also names the trial's logs)."""
        number = self._numbers.get(trial.trial_id)
        return f"trial-{number}" if number is not None else str(trial.trial_id)

    def close_all(self, reason: str) -> None:
        """Marks the trials still open in the study FAIL as interrupted, not as bad configs (Ray stopped before
        they reported), and queues their params again when the tuner retries stale trials."""
        for trial_id in list(self._open):
            optuna_id = self._open[trial_id]
            self._close_trial(trial_id, {ERROR_KEY: f"{STALE_PREFIX} {reason}"}, True)
            trial = storage_of(self._study).get_trial(optuna_id)
            if self._context.retry_stale and trial.params:
                self._study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_KEY: trial.number})

    def _open_trial(self, trial_id: str, config: dict[str, Any]) -> None:
        storage = storage_of(self._study)
        distributions = dict(self._context.distributions)
        params = {name: snap_to_distribution(config[name], dist) for name, dist in distributions.items()}
        key = self._optimizer.space.to_index(config) if self._optimizer is not None else None
        waiting = self._waiting.get(key) if key is not None else None
        if waiting:
            optuna_id = waiting.pop(0)
            storage.set_trial_state_values(optuna_id, state=TrialState.RUNNING)
            for name, value in params.items():
                dist = distributions[name]
                storage.set_trial_param(optuna_id, name, dist.to_internal_repr(value), dist)
        else:
            template = create_trial(state=TrialState.RUNNING, params=params, distributions=distributions)
            optuna_id = new_trial(self._study, template)
        stamp_trial(storage, optuna_id)
        # the driver beats for the trial while Ray runs it, so other tuners on the study see it alive
        heartbeat = Heartbeat(storage, optuna_id)
        heartbeat.__enter__()
        self._heartbeats[trial_id] = heartbeat
        self._open[trial_id] = optuna_id
        self._numbers[trial_id] = storage.get_trial_number_from_id(optuna_id)

    def _close_trial(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        optuna_id = self._open.pop(trial_id, None)
        if optuna_id is None:
            return
        heartbeat = self._heartbeats.pop(trial_id, None)
        if heartbeat is not None:
            heartbeat.__exit__(None, None, None)
        monitor = self._context.monitor
        result = dict(result or {})
        status = result.get(STATUS_KEY)
        value = finite_or_none(result.get(monitor))
        if status == "error" and self.abort_error is None:
            self.abort_error = _load_exception(result.get(EXCEPTION_KEY), str(result.get(ERROR_KEY)))
        if error or status not in ("complete", "pruned") or value is None:
            reason = result.get(ERROR_KEY) or ("the Ray trial raised an error" if error else
                                               f"the Ray trial reported no finite {monitor!r}")
            outcome = TrialOutcome("failed", error=str(reason), traceback=str(result.get(TRACEBACK_KEY) or ""))
        else:
            outcome = TrialOutcome(status, value=value)
        try:
            epochs = json.loads(result.get(EPOCHS_KEY) or "{}")
            outcome.epoch_values = {int(k): float(v) for k, v in epochs.items()}
        except (TypeError, ValueError):
            pass
        outcome.duration_s = float(result.get(DURATION_KEY) or 0.0)
        if status == "misconfigured":
            outcome.exception = _load_exception(result.get(EXCEPTION_KEY), str(result.get(ERROR_KEY)))
        record_outcome(self._context, self._study, live_trial(self._study, optuna_id), outcome)
        if self.abort_error is None and fails_every_trial(self._study, outcome):
            self.abort_error = outcome.exception
        if self._bar is not None:
            self._bar.update(1 if outcome.status != "failed" else 0)
            if math.isfinite(self.best_value):
                self._bar.set_postfix({f"best {monitor}": f"{self.best_value:.4g}"})


def _ray_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """One Ray Tune trial of TetraOptTuner: the same ``run_trial`` as the local path, reported to Ray."""
    if payload["quiet"]:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    match = re.fullmatch(r"trial-(\d+)", tune.get_context().get_trial_name() or "")
    number = int(match.group(1)) if match else 0
    fit_args = payload["fit_args"]
    params = {name: config[name] for name in payload["names"]}
    bug = False
    try:
        outcome = run_trial(
            params,
            monitor=payload["monitor"],
            mode=payload["mode"],
            objective=payload["objective"],
            study_name=payload["study_name"],
            trial_number=number,
            **fit_args,
        )
    except Exception as error:  # model_fn misuse (no LightningModule): a bug, raised by the driver as locally
        bug = True
        outcome = TrialOutcome(
            "failed",
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
            exception=error,
        )
    status: str = outcome.status
    exception = ""
    if status == "failed" and (bug or not isinstance(outcome.exception, payload["catch"])):
        # reported, not raised: the driver records the trial with its traceback, stops the search and raises it
        status = "error"
        exception = _dump_exception(outcome.exception)
    elif status == "failed" and isinstance(outcome.exception, TrialMisconfigured):
        # the driver stops the search when no trial of the study has finished yet (the setting is wrong)
        status = "misconfigured"
        exception = _dump_exception(outcome.exception)
    tune.report({
        # a failed trial reports NaN: Ray requires the metric in every result, the searcher reads NaN as failed
        payload["monitor"]: outcome.value if outcome.value is not None else math.nan,
        STATUS_KEY: status,
        EXCEPTION_KEY: exception,
        ERROR_KEY: outcome.error or "",
        TRACEBACK_KEY: outcome.traceback or "",
        EPOCHS_KEY: json.dumps({str(k): v for k, v in outcome.epoch_values.items()}),
        DURATION_KEY: outcome.duration_s,
    })


def _dump_exception(error: BaseException | None) -> str:
    try:
        return base64.b64encode(pickle.dumps(error)).decode("ascii")
    except Exception:  # noqa: BLE001 - an unpicklable exception is re-raised as a RuntimeError with its text
        return ""


def _load_exception(data: Any, text: str) -> BaseException:
    try:
        error = pickle.loads(base64.b64decode(data))
        if isinstance(error, BaseException):
            return error
    except Exception:  # noqa: BLE001 - see _dump_exception
        pass
    return RuntimeError(text)


def _trial_resources(trainer_kwargs: Mapping[str, Any]) -> dict[str, float]:
    """One CPU per trial, plus the GPUs its Trainer will use when the cluster has GPUs."""
    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
    accelerator = trainer_kwargs.get("accelerator", "auto")
    devices = trainer_kwargs.get("devices")
    gpus = 0
    if gpus_in_cluster and accelerator in ("auto", "gpu", "cuda"):
        gpus = devices if isinstance(devices, int) and devices > 0 else 1
    return {"cpu": 1, "gpu": gpus}


def _storage_path(storage: Any) -> str | None:
    """Ray's results go next to a SQLite study (``<db folder>/ray_results``), else to Ray's default.

    Example:
        >>> _storage_path("sqlite:///runs/tune.db").endswith("runs/ray_results"), _storage_path(None)
        (True, None)
    """
    url = getattr(storage, "url", storage)  # an RDBStorage, a URL or None
    if isinstance(url, str) and url.startswith("sqlite:///") and ":memory:" not in url:
        return str(Path(url[len("sqlite:///"):]).resolve().parent / "ray_results")
    return None
