"""ProcessExecutor: ``n_jobs`` worker processes on this machine, each running trials of the shared study."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from tetra_lightning.tuner._optuna import backend_of, storage_of
from tetra_lightning.tuner.context import StudyContext, open_study
from tetra_lightning.tuner.executor import Executor, progress, quiet_logs, refresh_progress
from tetra_lightning.tuner.local import run_trials
from tetra_lightning.tuner.storage import TRACEBACK_KEY, make_storage, reopen_storage


class ProcessExecutor(Executor):
    """Runs ``context.n_jobs`` worker processes that claim and run trials of the study through its database.

    Each worker opens the study with its own connections and its own sampler (seed ``seed + 1 + index``), and
    trains on its own GPU when there are GPUs and ``trainer_kwargs`` names no ``devices``. Workers start with
    ``context.start_method``; by default ``"fork"`` where available and CUDA is not yet initialized (lambdas
    work; GNU OpenMP is not fork-safe, so forked workers train with one CPU thread), else ``"spawn"`` (the
    context and ``fit_args`` must pickle; each worker gets ``cpu_count // n_jobs`` threads).

    Example:
        >>> isinstance(ProcessExecutor(), Executor)
        True
    """

    def run(self, context: StudyContext, study: optuna.Study, fit_args: dict[str, Any], *, done: int,
            failures_left: int) -> None:
        """Starts the workers, shows the study's progress until they exit, and raises if one crashed.

        Raises:
            TypeError: when the workers start with ``spawn`` and ``fit_args`` do not pickle.
            RuntimeError: when a worker process exited with an error (the last failed trial's traceback).
        """
        method = context.start_method
        if method is None:
            forkable = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()
            method = "fork" if forkable else "spawn"
        start = mp.get_context(method)
        if method != "fork":
            try:
                pickle.dumps((context, fit_args))
            except Exception as error:  # noqa: BLE001 - turned into an actionable message
                raise TypeError(
                    f"n_jobs={context.n_jobs} starts worker processes with 'spawn' here, which needs picklable "
                    f"model_fn/datamodule/trainer arguments: {error}. Use module-level functions, not lambdas."
                ) from error
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        use_gpus = gpus > 0 and "devices" not in fit_args["trainer_kwargs"] and fit_args["trainer_kwargs"].get(
            "accelerator", "auto") in ("auto", "gpu", "cuda")
        # a forked child inherits the parent's connection pool, which it must drop (not close) before use
        inherited = backend_of(storage_of(study)) if method == "fork" else None
        workers = []
        for index in range(context.n_jobs):
            device = index % gpus if use_gpus else None
            process = start.Process(
                target=_worker_main,
                args=(context, fit_args, index, device, method == "fork", inherited),
                name=f"tetra-trial-worker-{index}",
                daemon=True,
            )
            process.start()
            workers.append(process)
        try:
            with progress(context.progress_bar, context.budget, done, context.study_name) as bar:
                while any(p.is_alive() for p in workers):
                    time.sleep(0.5)
                    refresh_progress(context, study, bar)
                    if any(p.exitcode not in (None, 0) for p in workers):
                        break
                for process in workers:
                    process.join(timeout=None if all(p.exitcode in (None, 0) for p in workers) else 5)
                refresh_progress(context, study, bar)
        finally:
            for process in workers:
                if process.is_alive():
                    process.terminate()
                    process.join()
        crashed = [p for p in workers if p.exitcode not in (0, None)]
        if crashed:
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            detail = failed[-1].user_attrs.get(TRACEBACK_KEY, "") if failed else ""
            raise RuntimeError(
                f"{len(crashed)} tuner worker process(es) exited with codes {[p.exitcode for p in crashed]}."
                f" Last failed trial:\n{detail}"
            )


def _worker_main(context: StudyContext, fit_args: dict[str, Any], index: int, device: int | None, forked: bool,
                 inherited: BaseStorage | None) -> None:
    _die_with_parent()
    # GNU OpenMP's thread pool does not survive fork: a forked child that runs a parallel region with the
    # parent's pool deadlocks. One thread per forked worker is safe; spawned workers split the cores.
    torch.set_num_threads(1 if forked else max(1, (os.cpu_count() or 1) // context.n_jobs))
    if isinstance(inherited, RDBStorage):
        # A forked child must not touch the parent's pooled database connections (SQLAlchemy's advice).
        inherited.engine.dispose(close=False)
    with quiet_logs(context.quiet):
        study = open_study(context, make_storage(reopen_storage(context.storage)), worker_index=index + 1)
        run_trials(context, study, fit_args, device_index=device)


def _die_with_parent() -> None:
    # Linux only: a worker whose tuner process dies is killed instead of training on as an orphan. SIGKILL,
    # because Lightning's SIGTERM handler only runs between Python bytecodes; the worker's RUNNING trial is
    # marked FAIL (stale) and retried by the next `fit`.
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
