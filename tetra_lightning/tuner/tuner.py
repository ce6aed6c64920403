"""TetraOptTuner: Lightning Trainer runs as black-box evaluations of a TetraOpt-driven Optuna study."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import multiprocessing as mp
from collections.abc import Callable, Mapping
from typing import Any, Literal

import optuna
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from tetra_lightning.tuner.context import StudyContext, open_study
from tetra_lightning.tuner.executor import Executor, quiet_logs
from tetra_lightning.tuner.local import LocalExecutor
from tetra_lightning.tuner.processes import ProcessExecutor
from tetra_lightning.tuner.result import TuneResult
from tetra_lightning.tuner.space import as_search_space, to_optuna_distributions
from tetra_lightning.tuner.storage import fail_stale_trials, make_storage, reopen_storage
from tetra_lightning.tuner.trial import unknown_trainer_argument_message
from tetra_lightning.tuner.worker import count_config_failures

log = logging.getLogger("tetra_lightning.tuner")

_DIRECTIONS = {"max": "maximize", "min": "minimize"}
_SPACE_KEY = "tetra:search_space"
# Ray is an optional extra: its executor module (which imports ray) is imported when `executor="ray"` runs.
_RAY_EXECUTOR = "tetra_lightning.tuner._ray_backend"


class TetraOptTuner:
    """Tunes a LightningModule's config with TetraOpt: every trial is one fresh ``Trainer.fit``.

    The study lives in an Optuna RDB storage (SQLite by default), so a killed tuner resumes where it
    stopped when ``fit`` is called again with the same ``storage`` and ``study_name``: finished trials
    are kept, RUNNING trials of dead processes are marked FAIL (their params are queued again) and the
    sampler rebuilds TetraOpt's state from the history.

    Several machines: every process that calls ``fit`` with the same database URL (``"postgresql://..."``) and
    ``study_name`` works on the same study. Each trial claims one of the ``budget`` slots in the database before it
    samples (no surplus trial is run), samples once earlier trials hold their params (no point runs twice), and
    sends a heartbeat: a trial silent for the grace period (``DEFAULT_GRACE_PERIOD``, or the ``grace_period`` of
    an ``RDBStorage`` passed as ``storage``) is marked FAIL and its params queued for another worker.

    Budget: ``budget`` counts the COMPLETE and PRUNED trials of the study, across sessions. Failed
    trials do not use it up (a crash or an out-of-memory config does not cost a useful evaluation),
    but at most ``max_failures`` failures (default: ``max(budget, 3)``) are tolerated, so an objective that always
    fails stops after that many runs instead of looping forever.

    Args:
        search_space: ``{name: Categorical | Int | Float}`` or a ``tetra_lightning.optim.SearchSpace``.
        monitor: key of ``trainer.callback_metrics`` to optimize, e.g. ``"val_acc"``.
        mode: ``"max"`` or ``"min"``.
        budget: number of COMPLETE + PRUNED trials the study should hold.
        storage: SQLAlchemy URL (``"sqlite:///tune.db"``, ``"postgresql://..."``), an Optuna storage, or
            ``None`` for ``sqlite:///tetra_tune.db`` in the working directory.
        study_name: the study's name in the storage; also the W&B group.
        objective: ``"last"`` (the monitor after the last epoch) or ``"best"`` (its best epoch).
        pruning: ``True`` to stop a trial whose monitor at an epoch is worse than the median of earlier
            trials at that epoch (Optuna's ``MedianPruner``); or any ``optuna.pruners.BasePruner``.
        n_warmup_trials: trials that run to the end before pruning starts.
        n_warmup_epochs: epochs of each trial that are never pruned.
        catch: exception types recorded as a failed trial (the study goes on); ``()`` fails fast.
        max_failures: failed trials tolerated before the tuner stops (default: ``max(budget, 3)``); trials
            whose process died (see ``retry_stale``) do not count.
        n_jobs: worker processes running trials in parallel on this machine (each gets its own GPU when
            there are GPUs and ``trainer_kwargs`` names no ``devices``); needs an RDB storage URL.
        seed: seed of the sampler (worker ``i`` uses ``seed + i``).
        sampler: an Optuna sampler to use instead of :class:`TetraOptSampler` (e.g. for baselines).
        optimizer_kwargs: extra arguments of ``tetra_lightning.optim.TetraOpt``.
        progress_bar: show a tqdm bar over trials with the best value so far.
        quiet: silence Lightning's per-trial info lines and Optuna's own trial log (one tuner line per
            trial remains, on the ``tetra_lightning`` logger).
        retry_stale: queue again the params of trials whose process died.
        start_method: how ``n_jobs`` workers start. ``None``: ``"fork"`` where available and CUDA is not yet
            initialized (lambdas work; GNU OpenMP is not fork-safe, so forked workers train with one CPU thread),
            else ``"spawn"`` (model_fn and data must be picklable; each worker gets ``cpu_count // n_jobs``
            threads).
        executor: ``"local"`` runs trials in this process or ``n_jobs`` local workers; ``"ray"`` runs them as
            Ray Tune trials (``tetra_lightning.tuner.ray.TetraOptSearch``, at most ``n_jobs`` at once, one CPU
            and, on a cluster with GPUs, one GPU each) on the Ray instance ``ray.init`` connected to (a local one
            is started when none is). The trials are recorded in ``storage`` as usual, so ``fit`` returns the same
            :class:`TuneResult` and resumes the same way. Differences: no ``pruning``, ``start_method`` is unused,
            model_fn and data are cloudpickled to the Ray workers, trials of one ``fit`` share one TetraOpt (no
            rebuild from the storage per trial) and Ray writes its own trial folders (next to a SQLite study).
            Needs ``pip install 'tetra-lightning[ray]'``.

    Fails fast: ``fit`` raises at once, before training, for a stored study of that name that was tuned over
    another search space (its trials would mix with the new ones) and for a ``trainer_kwargs`` key the Trainer
    does not accept; and after the first trial when ``monitor`` was never logged (``TrialMisconfigured``, a
    ``MisconfigurationException``) unless an earlier trial of the study finished.

    Raises:
        ValueError: for an empty search space, a bad mode/objective/budget/n_jobs/executor, or ``pruning`` with
            ``executor="ray"``.
        ImportError: for ``executor="ray"`` without Ray installed.
        TypeError: for arguments of the wrong type.

    Example:
        >>> from tetra_lightning.optim import Float, Int
        >>> tuner = TetraOptTuner({"lr": Float(1e-3, 1e-1, log=True), "depth": Int(1, 3)}, monitor="val_acc",
        ...                       mode="max", budget=8, storage="sqlite:///:memory:", progress_bar=False)
        >>> tuner.direction
        'maximize'
    """

    def __init__(
        self,
        search_space: Mapping[str, Any],
        monitor: str,
        mode: Literal["max", "min"] = "max",
        budget: int = 20,
        *,
        storage: str | BaseStorage | None = None,
        study_name: str = "tetra",
        objective: Literal["best", "last"] = "last",
        pruning: bool | BasePruner = False,
        n_warmup_trials: int = 3,
        n_warmup_epochs: int = 1,
        catch: tuple[type[BaseException], ...] = (Exception,),
        max_failures: int | None = None,
        n_jobs: int = 1,
        seed: int = 0,
        sampler: optuna.samplers.BaseSampler | None = None,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        progress_bar: bool = True,
        quiet: bool = True,
        retry_stale: bool = True,
        start_method: Literal["fork", "spawn", "forkserver"] | None = None,
        executor: Literal["local", "ray"] = "local",
    ) -> None:
        self.search_space = as_search_space(search_space)
        self.distributions = to_optuna_distributions(self.search_space)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a metric name such as 'val_acc', got {monitor!r}.")
        if mode not in _DIRECTIONS:
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}. Use 'max' for accuracy, 'min' for loss.")
        if objective not in ("best", "last"):
            raise ValueError(f"`objective` must be 'best' or 'last', got {objective!r}.")
        _check_int("budget", budget, minimum=1, example="budget=40")
        _check_int("n_jobs", n_jobs, minimum=1, example="n_jobs=2")
        _check_int("n_warmup_trials", n_warmup_trials, minimum=0, example="n_warmup_trials=3")
        _check_int("n_warmup_epochs", n_warmup_epochs, minimum=0, example="n_warmup_epochs=1")
        if max_failures is not None:
            _check_int("max_failures", max_failures, minimum=1, example="max_failures=10")
        if not isinstance(pruning, (bool, BasePruner)):
            raise TypeError(f"`pruning` must be a bool or an optuna pruner, got {type(pruning).__name__}.")
        if not isinstance(catch, tuple) or not all(isinstance(c, type) and issubclass(c, BaseException) for c in catch):
            raise TypeError(f"`catch` must be a tuple of exception types such as (Exception,), got {catch!r}.")
        if not isinstance(study_name, str) or not study_name:
            raise ValueError(f"`study_name` must be a non-empty string, got {study_name!r}.")
        if executor not in ("local", "ray"):
            raise ValueError(f"`executor` must be 'local' or 'ray', got {executor!r}. Use 'ray' to run the trials "
                             "on a Ray cluster.")
        if executor == "ray":
            if importlib.util.find_spec("ray") is None:
                raise ImportError("`executor='ray'` needs Ray Tune: `pip install 'tetra-lightning[ray]'`.")
            if pruning is not False:
                raise ValueError("`pruning` is not supported with `executor='ray'`: pass pruning=False, or use "
                                 "TetraOptSearch with a Ray scheduler (e.g. ASHAScheduler) in ray.tune.Tuner.")
        if executor == "local" and n_jobs > 1 and not isinstance(storage, (str, RDBStorage)) and storage is not None:
            raise ValueError(
                f"`n_jobs={n_jobs}` runs worker processes that share the study through a database: pass "
                f"`storage` as a SQLAlchemy URL such as 'sqlite:///tune.db', got {type(storage).__name__}."
            )
        if executor == "local" and n_jobs > 1 and isinstance(storage, str) and ":memory:" in storage:
            raise ValueError("`n_jobs > 1` needs a storage on disk or a database server, not ':memory:'.")
        self.monitor = monitor
        self.mode: Literal["max", "min"] = mode
        self.direction = _DIRECTIONS[mode]
        self.budget = budget
        self.storage = storage
        self.study_name = study_name
        self.objective = objective
        self.pruning = pruning
        self.n_warmup_trials = n_warmup_trials
        self.n_warmup_epochs = n_warmup_epochs
        self.catch = catch
        self.max_failures = max_failures if max_failures is not None else max(budget, 3)
        self.n_jobs = n_jobs
        self.seed = seed
        self.sampler = sampler
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.progress_bar = progress_bar
        self.quiet = quiet
        self.retry_stale = retry_stale
        if start_method is not None and start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"`start_method` must be one of {mp.get_all_start_methods()} or None, got {start_method!r}."
            )
        self.start_method = start_method
        self.executor = executor
        self._storage: BaseStorage | None = None

    # ------------------------------------------------------------------ study
    def _pruner(self) -> BasePruner:
        if isinstance(self.pruning, BasePruner):
            return self.pruning
        if self.pruning:
            return MedianPruner(n_startup_trials=self.n_warmup_trials, n_warmup_steps=self.n_warmup_epochs)
        return NopPruner()

    def context(self) -> StudyContext:
        """What an executor needs of this tuner to open its study and run its trials."""
        return StudyContext(
            study_name=self.study_name, storage=self.storage, direction=self.direction,  # type: ignore[arg-type]
            search_space=self.search_space, distributions=self.distributions, monitor=self.monitor, mode=self.mode,
            objective=self.objective, budget=self.budget, max_failures=self.max_failures, catch=self.catch,
            retry_stale=self.retry_stale, pruner=self._pruner(), seed=self.seed,
            optimizer_kwargs=self.optimizer_kwargs, sampler=self.sampler, n_jobs=self.n_jobs,
            start_method=self.start_method, progress_bar=self.progress_bar, quiet=self.quiet,
        )

    def load_study(self, worker_index: int = 0) -> optuna.Study:
        """Creates the study in the storage, or loads it when it exists (the resume path).

        Raises:
            ValueError: when an existing study of that name optimizes in the other direction, or holds trials
                of another search space.
        """
        if self._storage is None or worker_index > 0:
            storage = make_storage(self.storage if worker_index == 0 else reopen_storage(self.storage))
            if worker_index == 0:
                self._storage = storage
        else:
            storage = self._storage
        study = open_study(self.context(), storage, worker_index)
        if study.direction.name.lower() != self.direction:
            raise ValueError(
                f"Study {self.study_name!r} in this storage was created with direction "
                f"{study.direction.name.lower()}, but mode={self.mode!r} asks for {self.direction}. Use another "
                "`study_name` or the study's mode."
            )
        if worker_index == 0:
            previous = study.user_attrs.get("tetra:monitor")
            if previous is not None and previous != self.monitor:
                log.warning(
                    "Study %r was tuned on monitor %r, now on %r: values of earlier trials are not comparable.",
                    self.study_name, previous, self.monitor,
                )
            self._check_search_space(study)
            study.set_user_attr("tetra:monitor", self.monitor)
            study.set_user_attr(_SPACE_KEY, _as_json(self.search_space.to_dict()))
        return study

    def _check_search_space(self, study: optuna.Study) -> None:
        stored = study.user_attrs.get(_SPACE_KEY)
        current = _as_json(self.search_space.to_dict())
        n_trials = len(study.get_trials(deepcopy=False))
        if stored is None or n_trials == 0 or _comparable(stored) == _comparable(current):
            return
        changed = [name for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]
        details = "; ".join(
            f"{name!r}: stored {_describe(stored.get(name))}, now {_describe(current.get(name))}" for name in changed
        )
        raise ValueError(
            f"Study {self.study_name!r} in this storage was tuned over another search space, and its {n_trials} "
            f"trial(s) would mix with this tuner's: {details}. Pass another `study_name` (or storage) for the new "
            "space, or the study's own search space to resume it."
        )

    def _executor(self) -> Executor:
        if self.executor == "ray":
            return importlib.import_module(_RAY_EXECUTOR).RayExecutor()
        return LocalExecutor() if self.n_jobs == 1 else ProcessExecutor()

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        model_fn: Callable[[dict[str, Any]], LightningModule],
        datamodule: LightningDataModule | None = None,
        *,
        trainer_kwargs: Mapping[str, Any] | None = None,
        datamodule_fn: Callable[[dict[str, Any]], LightningDataModule] | None = None,
        trainer_fn: Callable[[dict[str, Any]], Trainer | Mapping[str, Any]] | None = None,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
    ) -> TuneResult:
        """Runs trials until the study holds ``budget`` COMPLETE + PRUNED trials, and returns the result.

        Args:
            model_fn: ``config -> LightningModule``, called once per trial with the trial's params.
            datamodule: data shared by all trials.
            trainer_kwargs: arguments of each trial's ``Trainer`` (accelerator, devices, precision,
                max_epochs, logger, callbacks, ...). Callbacks are deep-copied per trial; CSV, TensorBoard and
                W&B loggers are rebuilt per trial (version/run ``trial-N``; W&B runs grouped by ``study_name``).
            datamodule_fn: ``config -> LightningDataModule`` when the config addresses the data (``batch_size``).
            trainer_fn: ``config -> Trainer`` or ``config -> dict`` of Trainer arguments merged over
                ``trainer_kwargs``, when the config addresses the Trainer (``precision``, ``gradient_clip_val``).
            train_dataloaders: dataloaders when there is no datamodule.
            val_dataloaders: dataloaders when there is no datamodule.

        Returns:
            A :class:`TuneResult` over all trials of the study.

        Raises:
            TypeError: when ``model_fn`` is not callable or returns no LightningModule.
            ValueError: for conflicting data arguments.
            Exception: a trial's exception when it is not an instance of ``catch``.
        """
        if not callable(model_fn):
            raise TypeError(f"`model_fn` must be a callable config -> LightningModule, got {type(model_fn).__name__}.")
        for name, fn in (("datamodule_fn", datamodule_fn), ("trainer_fn", trainer_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"`{name}` must be a callable taking the config dict, got {type(fn).__name__}.")
        if datamodule is not None and datamodule_fn is not None:
            raise ValueError("Pass either `datamodule` or `datamodule_fn`, not both.")
        if (datamodule is not None or datamodule_fn is not None) and train_dataloaders is not None:
            raise ValueError("Pass either a datamodule or `train_dataloaders`, not both.")
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            raise TypeError(f"`trainer_kwargs` must be a dict of Trainer arguments, got {type(trainer_kwargs).__name__}.")
        unknown = unknown_trainer_argument_message(trainer_kwargs or {}, "trainer_kwargs")
        if unknown is not None:
            raise TypeError(unknown)
        fit_args = {
            "model_fn": model_fn,
            "datamodule": datamodule,
            "datamodule_fn": datamodule_fn,
            "trainer_kwargs": dict(trainer_kwargs or {}),
            "trainer_fn": trainer_fn,
            "train_dataloaders": train_dataloaders,
            "val_dataloaders": val_dataloaders,
        }
        with quiet_logs(self.quiet):
            study = self.load_study()
            fail_stale_trials(study, retry=self.retry_stale)
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            failures = count_config_failures(study)
            failures_left = self.max_failures - failures
            if done >= self.budget:
                log.info("Study %r already holds %d finished trials (budget %d): nothing to run.",
                         self.study_name, done, self.budget)
            elif failures_left <= 0:
                log.warning("Study %r already holds %d failed trials (max_failures=%d): nothing to run.",
                            self.study_name, failures, self.max_failures)
            else:
                log.info("Study %r: %d finished trials, running up to %d more on %d worker(s).",
                         self.study_name, done, self.budget - done, self.n_jobs)
                self._executor().run(self.context(), study, fit_args, done=done, failures_left=failures_left)
            result = TuneResult.from_study(study, self.monitor, self.mode)
            self._log_summary(result, fit_args["trainer_kwargs"])
        if result.n_complete and result.failures():
            log.info("%d trial(s) failed; see result.trials['user_attrs_fail_reason'].", len(result.failures()))
        return result

    # ----------------------------------------------------------------- output
    def _log_summary(self, result: TuneResult, trainer_kwargs: Mapping[str, Any]) -> None:
        loggers = trainer_kwargs.get("logger")
        if loggers is None or isinstance(loggers, bool):
            return
        loggers = [loggers] if not isinstance(loggers, (list, tuple)) else list(loggers)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                log_wandb_summary(result, logger, self.study_name)


def log_wandb_summary(result: TuneResult, logger: WandbLogger, study_name: str) -> None:
    """Logs a W&B run ``<study>-summary`` in the study's group with the trials table and the best config."""
    import wandb

    init = dict(logger._wandb_init)
    settings = {}
    if logger._offline:
        settings["mode"] = "offline"
    run = wandb.init(
        project=init.get("project"),
        entity=init.get("entity"),
        dir=init.get("dir"),
        group=init.get("group") or study_name,
        name=f"{study_name}-summary",
        job_type="tune-summary",
        config={"monitor": result.monitor, "mode": result.mode},
        reinit="create_new",
        **settings,
    )
    try:
        frame = result.trials.copy()
        keep = [c for c in frame.columns if c in ("number", "value", "state") or c.startswith("params_")]
        if "user_attrs_fail_reason" in frame.columns:
            keep.append("user_attrs_fail_reason")
        table = frame[keep].rename(columns={"user_attrs_fail_reason": "fail_reason"})
        if "duration" in frame.columns:
            table["duration_s"] = frame["duration"].dt.total_seconds()
        table = table.astype(object).where(table.notna(), None)
        run.log({"trials": wandb.Table(dataframe=table)})
        if result.n_complete:
            run.summary["best_value"] = result.best_value
            run.summary["best_trial"] = result.best_trial.number
            run.summary["best_params"] = result.best_params
            run.config.update({f"best/{k}": v for k, v in result.best_params.items()})
    finally:
        run.finish()


def _as_json(value: Any) -> Any:
    # what a study's user attribute holds after a round trip through the storage (tuples become lists)
    return json.loads(json.dumps(value))


# Keys a dimension's to_dict() gained after studies were stored, with the value the older dimension had.
_DIMENSION_DEFAULTS = {"int": {"step": 1, "log": False}, "float": {"log": False}}


def _comparable(space: Mapping[str, Any]) -> dict[str, Any]:
    """A stored search space with the keys that later versions added filled in, so an older study resumes."""
    out = {}
    for name, dimension in _as_json(space).items():
        if isinstance(dimension, Mapping):
            dimension = {**_DIMENSION_DEFAULTS.get(str(dimension.get("type")), {}), **dimension}
        out[name] = dimension
    return out


def _describe(dimension: Any) -> str:
    if dimension is None:
        return "absent"
    if not isinstance(dimension, Mapping):
        return repr(dimension)
    shown = {key: (f"<{len(value)} values>" if isinstance(value, list) and len(value) > 8 else value)
             for key, value in dimension.items()}
    return repr(shown)


def _check_int(name: str, value: Any, *, minimum: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r} ({type(value).__name__}). Pass e.g. `{example}`.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}. Pass e.g. `{example}`.")
