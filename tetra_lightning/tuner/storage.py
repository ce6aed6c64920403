"""Study storage helpers: RDB storage from a URL, process stamps on trials, stale-trial recovery."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("tetra_lightning.tuner")

DEFAULT_STORAGE = "sqlite:///tetra_tune.db"

# System attributes the tuner writes on each trial it runs (Optuna's own keys have no prefix).
PID_KEY = "tetra:pid"
HOST_KEY = "tetra:host"
PROC_START_KEY = "tetra:proc_start"
# User attributes (they show up in `study.trials_dataframe()` as `user_attrs_*`).
FAIL_REASON_KEY = "fail_reason"
TRACEBACK_KEY = "traceback"
RETRY_OF_KEY = "retry_of"


def make_storage(storage: str | BaseStorage | None) -> BaseStorage:
    """Returns an Optuna storage for a SQLAlchemy URL, an existing storage, or the default SQLite file.

    SQLite gets a long lock timeout so that several worker processes can share one file.

    Args:
        storage: ``None`` (``sqlite:///tetra_tune.db`` in the working directory), any SQLAlchemy URL, or
            an ``optuna.storages.BaseStorage`` used as is.

    Returns:
        The storage.

    Raises:
        TypeError: when ``storage`` is none of these.
    """
    if isinstance(storage, BaseStorage):
        return storage
    if storage is None:
        storage = DEFAULT_STORAGE
    if not isinstance(storage, str):
        raise TypeError(
            f"`storage` must be a SQLAlchemy URL string, an optuna storage or None, got {type(storage).__name__}."
        )
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    return RDBStorage(storage, engine_kwargs=engine_kwargs)


def _proc_start_time(pid: int) -> str | None:
    # Field 22 of /proc/<pid>/stat is the start time in clock ticks since boot: together with the pid
    # it names one process even after the pid is reused.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_stamp() -> dict[str, Any]:
    """Returns the attributes that identify the current process on the current host."""
    pid = os.getpid()
    return {PID_KEY: pid, HOST_KEY: socket.gethostname(), PROC_START_KEY: _proc_start_time(pid)}


def stamp_trial(storage: BaseStorage, trial_id: int) -> None:
    """Records on a trial which process runs it, so that a later run can tell when that process died."""
    for key, value in process_stamp().items():
        storage.set_trial_system_attr(trial_id, key, value)


def _process_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start_time is not None:
        current = _proc_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def is_stale(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial was started by this tuner on this host by a process that no longer runs."""
    if trial.state != TrialState.RUNNING:
        return False
    attrs = trial.system_attrs
    if PID_KEY not in attrs or attrs.get(HOST_KEY) != socket.gethostname():
        return False
    return not _process_alive(int(attrs[PID_KEY]), attrs.get(PROC_START_KEY))


def fail_stale_trials(study: optuna.Study, retry: bool = True) -> list[int]:
    """Marks the RUNNING trials of dead tuner processes as FAIL and, optionally, queues their params again.

    A trial whose process was killed (``kill -9``, out of memory, power loss) stays RUNNING in the
    storage forever. Trials stamped by this host are checked by pid; Optuna's heartbeat mechanism, when
    the storage has ``heartbeat_interval`` set, covers trials of other hosts.

    Args:
        study: the study to clean.
        retry: queue the params of each stale trial (``study.enqueue_trial``) so that the config, which
            was interrupted rather than bad, gets evaluated.

    Returns:
        The numbers of the trials marked FAIL.
    """
    storage = study._storage
    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial):
            continue
        reason = (
            f"stale: process {trial.system_attrs.get(PID_KEY)} on {trial.system_attrs.get(HOST_KEY)} "
            "died while the trial was running"
        )
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_KEY, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        failed.append(trial.number)
        log.warning("Trial %d: %s; marked FAIL.", trial.number, reason)
        if retry and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_KEY: trial.number})
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        optuna.storages.fail_stale_trials(study)
    return failed
