"""Study storage helpers: RDB storage from a URL, process stamps on trials, stale-trial recovery.

A trial whose process dies (``kill -9``, out of memory, a lost machine) stays RUNNING in the storage. Two signals
tell that it is dead: on the machine that ran it, its pid no longer names the same process (immediate); from
any machine, its heartbeat (Optuna's ``RDBStorage(heartbeat_interval=...)``, recorded by the worker while the
trial runs) is older than the grace period. :func:`fail_stale_trials` marks such trials FAIL with a ``stale:``
reason and queues their params again, exactly once even when several workers look at the same time.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tetra_lightning.tuner._optuna import backend_of, stale_trial_ids, storage_of, trial_id_of

log = logging.getLogger("tetra_lightning.tuner")

DEFAULT_STORAGE = "sqlite:///tetra_tune.db"
# Liveness of trials run by other machines: a worker records a heartbeat every DEFAULT_HEARTBEAT_INTERVAL
# seconds; a RUNNING trial without one for DEFAULT_GRACE_PERIOD seconds is failed and its params re-queued.
DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_GRACE_PERIOD = 60

# System attributes the tuner writes on each trial it runs (Optuna's own keys have no prefix).
PID_KEY = "tetra:pid"
HOST_KEY = "tetra:host"
PROC_START_KEY = "tetra:proc_start"
PID_NAMESPACE_KEY = "tetra:pid_ns"
HEARTBEAT_KEY = "tetra:heartbeat_interval"
# User attributes (they show up in `study.trials_dataframe()` as `user_attrs_*`).
FAIL_REASON_KEY = "fail_reason"
TRACEBACK_KEY = "traceback"
RETRY_OF_KEY = "retry_of"
# Reasons of FAIL trials that say nothing about their config: the process died (`stale:`), or a worker lost
# the race for the last budget slot and gave its fresh, param-less trial back (`surplus:`).
STALE_PREFIX = "stale:"
SURPLUS_PREFIX = "surplus:"


def make_storage(
    storage: str | BaseStorage | None,
    *,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int | None = DEFAULT_GRACE_PERIOD,
) -> BaseStorage:
    """Returns an Optuna storage for a SQLAlchemy URL, an existing storage, or the default SQLite file.

    A URL gets Optuna's heartbeat (so workers on other machines notice a dead one), SQLite a long lock timeout
    (several local processes share one file), a database server connection checks (``pool_pre_ping``: trials
    run for hours while pooled connections idle). Several workers may create the tables of an empty database
    at the same moment: the loser of that race retries.

    Args:
        storage: ``None`` (``sqlite:///tetra_tune.db`` in the working directory), any SQLAlchemy URL such as
            ``"postgresql://user:password@db-host:5432/tetra"``, or an ``optuna.storages.BaseStorage`` used as
            is (pass ``RDBStorage(url, heartbeat_interval=..., grace_period=...)`` for other liveness settings).
        heartbeat_interval: seconds between heartbeats of a running trial, for a URL; ``None`` turns them off.
        grace_period: seconds without heartbeat after which a RUNNING trial counts as dead, for a URL.

    Returns:
        The storage.

    Raises:
        TypeError: when ``storage`` is none of these.
        ValueError: for a non-positive ``heartbeat_interval`` or ``grace_period``, a string that is not a
            SQLAlchemy URL, an SQLite file in a folder that does not exist, a file that is not an SQLite database
            or a damaged (e.g. truncated) one.
        ImportError: for a URL whose database driver is not installed (the message names the package).

    Example:
        >>> storage = make_storage("sqlite:///:memory:", heartbeat_interval=5, grace_period=20)
        >>> storage.get_heartbeat_interval(), storage.grace_period
        (5, 20)
    """
    if isinstance(storage, BaseStorage):
        return storage
    if storage is None:
        storage = DEFAULT_STORAGE
    if not isinstance(storage, str):
        raise TypeError(
            f"`storage` must be a SQLAlchemy URL string, an optuna storage or None, got {type(storage).__name__}."
        )
    for name, value, example in (("heartbeat_interval", heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL),
                                 ("grace_period", grace_period, DEFAULT_GRACE_PERIOD)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int (seconds) or None, got {value!r}. "
                             f"Pass e.g. `{name}={example}`.")
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
        folder = _sqlite_folder(storage)
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(
                f"`storage` {storage!r} names an SQLite file in the folder {folder!r}, which does not exist. Create "
                "it first (os.makedirs(folder, exist_ok=True)) or pass a file in an existing folder, e.g. "
                f"{DEFAULT_STORAGE!r} in the working directory."
            )
    else:
        engine_kwargs = {"pool_pre_ping": True}
    return _open_rdb(storage, engine_kwargs, heartbeat_interval, grace_period if heartbeat_interval else None)


def _sqlite_path(url: str) -> str | None:
    """The file of an SQLite URL (``None`` for an in-memory database or a URL SQLAlchemy cannot parse)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _sqlite_folder(url: str) -> str | None:
    path = _sqlite_path(url)
    return None if path is None else os.path.dirname(path)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_damage(path: str, reported: str) -> str | None:
    """Why the file at ``path`` is not a usable SQLite database, read from its 100-byte header (``None``: no idea)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = handle.read(100)
    except OSError as error:
        return f"the file cannot be read ({error.strerror})"
    if size == 0:
        return None
    if not header.startswith(_SQLITE_MAGIC):
        return f"the file is not an SQLite database (it starts with {header[:16]!r})"
    if len(header) == 100:
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        # The page count in the header is valid when the "version valid for" number equals the change counter.
        if header[92:96] == header[24:28] and pages * page_size > size:
            return f"the file is truncated: its header says {pages * page_size} bytes, the file has {size}"
    return f"the file is damaged (SQLite says: {reported})"


def _storage_error(url: str, error: BaseException) -> Exception | None:
    """A message naming the problem and the fix for an error opening the storage at ``url`` (``None``: keep it)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return ValueError(
            f"`storage` must be a SQLAlchemy URL, got {url!r}. Pass e.g. 'sqlite:///tetra_tune.db' (a file in the "
            "working directory) or 'postgresql://user:password@db-host:5432/tetra'."
        )
    shown = parsed.render_as_string(hide_password=True)
    if isinstance(error, sqlalchemy.exc.NoSuchModuleError):
        return ValueError(
            f"`storage` {shown!r}: SQLAlchemy knows no database or driver {parsed.drivername!r}. Spell the database as "
            "SQLAlchemy does ('sqlite', 'postgresql', 'mysql', ...) and put a driver after a '+', e.g. "
            "'postgresql+psycopg2://user:password@db-host:5432/tetra' or 'mysql+pymysql://...'."
        )
    if isinstance(error, ImportError):
        cause = error.__cause__ if isinstance(error.__cause__, ImportError) else error
        module = getattr(cause, "name", None) or parsed.drivername
        hints = {
            "mysql": "`pip install pymysql` and write the URL as 'mysql+pymysql://...' (or `pip install mysqlclient` "
            "for plain 'mysql://')",
            "postgresql": "`pip install psycopg2-binary` (or name an installed driver, e.g. 'postgresql+psycopg://')",
        }
        backend = parsed.get_backend_name()
        hint = hints.get(backend, f"install the Python driver SQLAlchemy uses for {parsed.drivername!r}")
        return ImportError(f"`storage` {shown!r} needs the module {module!r}, which is not installed: {hint}.")
    reported = str(getattr(error, "orig", error))
    # Only the errors of a file that is not (or no longer) a database; "database is locked" and the like stay.
    if (
        isinstance(error, sqlalchemy.exc.DatabaseError)
        and parsed.get_backend_name() == "sqlite"
        and any(text in reported for text in ("not a database", "malformed", "unable to open"))
    ):
        path = _sqlite_path(url)
        damage = _sqlite_damage(path, reported) if path is not None and os.path.exists(path) else None
        if damage is None:
            return None
        return ValueError(
            f"`storage` {shown!r}: {damage}. Pass a new file name to start a study there, or restore the "
            "database from a backup (`sqlite3 FILE .recover` saves what is left of a damaged one)."
        )
    return None


def reopen_storage(storage: str | BaseStorage | None) -> str | BaseStorage | None:
    """Returns what a new worker process passes to :func:`make_storage`: the same database, its own connections.

    An ``RDBStorage`` is rebuilt from its URL and settings (heartbeat included) instead of sharing the parent's
    connection pool; other values are returned unchanged.
    """
    if not isinstance(storage, RDBStorage):
        return storage
    return _open_rdb(
        storage.url,
        dict(storage.engine_kwargs),
        storage.heartbeat_interval,
        storage.grace_period,
        storage.heartbeat_stale_trial_callback,
    )


def _open_rdb(
    url: str,
    engine_kwargs: dict[str, Any],
    heartbeat_interval: int | None,
    grace_period: int | None,
    callback: Any = None,
    attempts: int = 5,
) -> RDBStorage:
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # heartbeat_interval is "experimental" in Optuna since 2.9; the tuner depends on it deliberately.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Two workers creating the tables of an empty database at once: PostgreSQL lets one of the
            # CREATE TABLEs fail on its catalog's unique index. The tables exist now; try again.
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())
        except (ImportError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.DatabaseError) as error:
            explained = _storage_error(url, error)
            if explained is None:
                raise
            raise explained from error
    raise AssertionError("unreachable")


def heartbeat_interval_of(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval in seconds, ``None`` when it records no heartbeats."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def grace_period_of(storage: BaseStorage) -> float | None:
    """Seconds without heartbeat after which a trial of this storage is stale (Optuna: 2 x interval by default)."""
    interval = heartbeat_interval_of(storage)
    if interval is None:
        return None
    grace = getattr(backend_of(storage), "grace_period", None)  # a study wraps its RDBStorage in a cache
    return float(grace if grace is not None else 2 * interval)


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


def _pid_namespace() -> str | None:
    # Containers on one machine may share a hostname (host networking) but not their pids: a pid is only
    # checked by a process in the same pid namespace.
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_stamp() -> dict[str, Any]:
    """Returns the attributes that identify the current process on the current host."""
    pid = os.getpid()
    return {
        PID_KEY: pid,
        HOST_KEY: socket.gethostname(),
        PROC_START_KEY: _proc_start_time(pid),
        PID_NAMESPACE_KEY: _pid_namespace(),
    }


def stamp_trial(storage: BaseStorage, trial_id: int) -> None:
    """Records on a trial which process runs it and whether it sends heartbeats, so others can tell it died."""
    stamp = process_stamp()
    stamp[HEARTBEAT_KEY] = heartbeat_interval_of(storage)
    for key, value in stamp.items():
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


def is_local(trial: FrozenTrial) -> bool:
    """Whether a trial was stamped by a process whose pid this process can check (same host, same pid space)."""
    attrs = trial.system_attrs
    if PID_KEY not in attrs or attrs.get(HOST_KEY) != socket.gethostname():
        return False
    stamped_ns = attrs.get(PID_NAMESPACE_KEY)
    return stamped_ns is None or stamped_ns == _pid_namespace()


def is_stale(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial was started on this host (and pid namespace) by a process that no longer runs."""
    if trial.state != TrialState.RUNNING or not is_local(trial):
        return False
    return not _process_alive(int(trial.system_attrs[PID_KEY]), trial.system_attrs.get(PROC_START_KEY))


def is_monitored(trial: FrozenTrial, storage: BaseStorage) -> bool:
    """Whether a RUNNING trial will either finish or be found dead: its pid is checkable here, or it sends
    heartbeats that this storage watches. A worker waits for such trials before it leaves a study unfinished."""
    if is_local(trial):
        return True
    return trial.system_attrs.get(HEARTBEAT_KEY) is not None and heartbeat_interval_of(storage) is not None


def is_surplus(trial: FrozenTrial) -> bool:
    """Whether a trial is a worker's unrun claim past the budget (bookkeeping, not an evaluation).

    Example:
        >>> from optuna.trial import TrialState, create_trial
        >>> is_surplus(create_trial(state=TrialState.FAIL, user_attrs={FAIL_REASON_KEY: "surplus: budget used"}))
        True
    """
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get(FAIL_REASON_KEY, "")).startswith(SURPLUS_PREFIX)


def is_infrastructure_failure(trial: FrozenTrial) -> bool:
    """Whether a FAIL trial failed for a reason that says nothing about its params (dead process, surplus)."""
    reason = str(trial.user_attrs.get(FAIL_REASON_KEY, ""))
    return reason.startswith((STALE_PREFIX, SURPLUS_PREFIX))


def fail_stale_trials(study: optuna.Study, retry: bool = True) -> list[int]:
    """Marks the RUNNING trials of dead worker processes as FAIL and, optionally, queues their params again.

    Trials stamped by this host (and pid namespace) are checked by pid, at once. When the storage records
    heartbeats, trials of every host whose last heartbeat is older than the grace period are stale too.
    Several workers may call this at the same time: the storage lets exactly one of them fail each trial,
    and only that one queues the retry.

    Args:
        study: the study to clean.
        retry: queue the params of each stale trial (``study.enqueue_trial``) so that the config, which
            was interrupted rather than bad, gets evaluated. A storage built with its own
            ``heartbeat_stale_trial_callback`` (e.g. Optuna's ``RetryHeartbeatStaleTrialCallback``) gets that
            callback called instead.

    Returns:
        The numbers of the trials this call marked FAIL.

    Example:
        >>> study = optuna.create_study(storage=make_storage("sqlite:///:memory:"))
        >>> fail_stale_trials(study)
        []
    """
    storage = storage_of(study)
    reasons: dict[int, str] = {}
    running = {trial_id_of(t): t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for trial_id, trial in running.items():
        if is_stale(trial):
            reasons[trial_id] = (
                f"{STALE_PREFIX} process {trial.system_attrs.get(PID_KEY)} on {trial.system_attrs.get(HOST_KEY)} "
                "died while the trial was running"
            )
    if heartbeat_interval_of(storage) is not None:
        for trial_id in stale_trial_ids(study):
            trial = running.get(trial_id) or storage.get_trial(trial_id)
            reasons.setdefault(trial_id, (
                f"{STALE_PREFIX} no heartbeat for {grace_period_of(storage):g}s from process "
                f"{trial.system_attrs.get(PID_KEY, '?')} on {trial.system_attrs.get(HOST_KEY, '?')}"
            ))
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    failed: list[int] = []
    for trial_id, reason in reasons.items():
        trial = running.get(trial_id) or storage.get_trial(trial_id)
        try:
            # The reason goes first: a finished trial takes no attributes. If the trial was in fact alive and
            # finishes in between, the state change below fails and the trial keeps its own result.
            storage.set_trial_user_attr(trial_id, FAIL_REASON_KEY, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first, or the trial finished: nothing to do
        failed.append(trial.number)
        log.warning("Trial %d: %s; marked FAIL.", trial.number, reason)
        if callback is not None:
            callback(study, storage.get_trial(trial_id))
        elif retry and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_KEY: trial.number})
    return failed
