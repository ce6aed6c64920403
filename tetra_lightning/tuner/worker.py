"""What one tuner worker does against a shared study: claim a budget slot, take its turn to sample, stay alive.

Any number of worker processes, on any number of machines, may run :meth:`TetraOptTuner.fit` on one study in
one database. They coordinate through the storage only; there is no scheduler process:

* **Exact budget.** A worker creates (or pops a queued) trial, then counts the trials numbered before it that
  are COMPLETE, PRUNED, RUNNING or WAITING. Trial numbers are handed out one at a time under a lock on the
  study row, so every trial sees all earlier ones; if ``budget`` of them are already there, the new trial is
  surplus and is given back as FAIL (``surplus:``, before any param is sampled). Whatever the interleaving,
  the trial numbered last among more than ``budget`` useful trials would have counted the others, so no more
  than ``budget`` trials are ever run to the end.
* **No duplicate points.** A claimed trial samples only once every earlier RUNNING trial holds its params, so
  the sampler (rebuilt from the shared history) sees all points in flight and proposes another one.
* **Liveness.** The worker records a heartbeat while its trial runs; a trial whose heartbeat stops for the
  grace period (or whose local process is gone) is failed and its params queued again by whichever worker
  looks next (:func:`~tetra_lightning.tuner.storage.fail_stale_trials`). While the budget is full of RUNNING
  trials that will either finish or be found dead, idle workers wait instead of leaving, so a surviving worker
  runs the retry of a dead one.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Mapping
from types import TracebackType

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tetra_lightning.tuner._optuna import fixed_params, storage_of, suggest, trial_id_of
from tetra_lightning.tuner.storage import (
    FAIL_REASON_KEY,
    SURPLUS_PREFIX,
    fail_stale_trials,
    grace_period_of,
    heartbeat_interval_of,
    is_infrastructure_failure,
    is_monitored,
    stamp_trial,
)

log = logging.getLogger("tetra_lightning.tuner")

_USEFUL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class Heartbeat:
    """Records a trial's heartbeat in the storage every ``heartbeat_interval`` seconds, from a daemon thread.

    A no-op for storages without heartbeat. A failed write (database briefly unreachable) is logged and retried
    at the next beat; only a silence longer than the grace period makes other workers fail the trial.

    Args:
        storage: the study's storage.
        trial_id: the storage id of the trial (``_optuna.trial_id_of(trial)``).

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from tetra_lightning.tuner.storage import make_storage
        >>> study = optuna.create_study(storage=make_storage("sqlite:///:memory:", heartbeat_interval=1))
        >>> trial = claim_trial(study, budget=1, distributions={"x": IntDistribution(0, 9)})
        >>> with Heartbeat(storage_of(study), trial_id_of(trial)) as beat:
        ...     time.sleep(0.1)
        >>> beat.beats >= 1
        True
    """

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = heartbeat_interval_of(storage)
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Records one heartbeat now."""
        if self.interval is None:
            return
        try:
            self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            self.beats += 1
        except Exception as error:  # noqa: BLE001 - a lost beat must not kill the trial
            log.warning("Heartbeat of trial id %d not recorded (%s); retrying in %ss.", self.trial_id, error,
                        self.interval)

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.beat()
            self._thread = threading.Thread(target=self._run, name=f"tetra-heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def claim_trial(
    study: optuna.Study,
    *,
    budget: int,
    distributions: Mapping[str, BaseDistribution],
    max_failures: int | None = None,
    retry_stale: bool = True,
    poll_interval: float | None = None,
) -> optuna.Trial | None:
    """Claims one of the study's ``budget`` slots and returns a RUNNING trial with its params, or ``None``.

    ``None`` means this worker has nothing left to do: the study holds ``budget`` COMPLETE + PRUNED trials, or
    ``max_failures`` failures of configs, or the remaining slots are held by RUNNING trials that nobody here can
    watch (no heartbeat, another host). While the slots are held by trials that will finish or be found dead,
    the call waits, failing stale trials as it polls.

    Args:
        study: the shared study.
        budget: COMPLETE + PRUNED trials the study should end with.
        distributions: the params every trial samples (``name -> optuna distribution``).
        max_failures: failed configs tolerated in the whole study (dead processes and surplus trials do not
            count); ``None`` for no limit.
        retry_stale: queue the params of stale trials again (see ``fail_stale_trials``).
        poll_interval: seconds between looks while waiting (default: a quarter of the heartbeat interval, 0.5 to
            2 s).

    Returns:
        The trial, stamped with this process, or ``None``. Its heartbeats stop when this returns: wrap the
        trial's run in :class:`Heartbeat`.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from tetra_lightning.tuner.storage import make_storage
        >>> study = optuna.create_study(storage=make_storage("sqlite:///:memory:"))
        >>> dists = {"x": IntDistribution(0, 9)}
        >>> trial = claim_trial(study, budget=1, distributions=dists)
        >>> _ = study.tell(trial, 1.0)
        >>> claim_trial(study, budget=1, distributions=dists) is None
        True
    """
    storage = storage_of(study)
    interval = heartbeat_interval_of(storage)
    if poll_interval is None:
        poll_interval = min(2.0, max(0.5, interval / 4)) if interval is not None else 1.0
    reported_wait = False
    while True:
        fail_stale_trials(study, retry=retry_stale)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        if done >= budget:
            return None
        if max_failures is not None and _config_failures(trials) >= max_failures:
            log.warning("Study %r holds %d failed configs (max_failures=%d): this worker stops.",
                        study.study_name, _config_failures(trials), max_failures)
            return None
        running = [t for t in trials if t.state == TrialState.RUNNING]
        n_waiting = states.count(TrialState.WAITING)
        if n_waiting or done + len(running) + n_waiting < budget:
            trial = _ask(study)
            # Heartbeats from the start: a worker that dies while waiting for its turn is found like any other.
            with Heartbeat(storage, trial_id_of(trial)):
                stamp_trial(storage, trial_id_of(trial))
                if _within_budget(study, trial, budget):
                    _wait_for_turn(study, trial, distributions, poll_interval, retry_stale)
                    for name, distribution in distributions.items():
                        suggest(trial, name, distribution)
                    return trial
                _give_back(study, trial, budget)
            continue
        if not any(is_monitored(t, storage) for t in running):
            log.info("Study %r: the %d remaining slot(s) are held by trials running elsewhere; this worker stops.",
                     study.study_name, len(running))
            return None
        if not reported_wait:
            log.info("Study %r: %d finished, %d running elsewhere fill the budget of %d; waiting for them.",
                     study.study_name, done, len(running), budget)
            reported_wait = True
        time.sleep(poll_interval)


def still_running(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the storage still has ``trial`` RUNNING (other workers fail trials whose heartbeat stopped)."""
    return storage_of(study).get_trial(trial_id_of(trial)).state == TrialState.RUNNING


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for `Study.optimize`; this module records them itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def _within_budget(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    earlier = sum(1 for t in study.get_trials(deepcopy=False, states=_USEFUL) if t.number < trial.number)
    return earlier < budget


def _give_back(study: optuna.Study, trial: optuna.Trial, budget: int) -> None:
    reason = f"{SURPLUS_PREFIX} the budget of {budget} trials was claimed by earlier trials"
    storage = storage_of(study)
    try:
        storage.set_trial_user_attr(trial_id_of(trial), FAIL_REASON_KEY, reason)
        storage.set_trial_state_values(trial_id_of(trial), state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    log.info("Trial %d: %s; given back unrun.", trial.number, reason)


def _wait_for_turn(
    study: optuna.Study,
    trial: optuna.Trial,
    distributions: Mapping[str, BaseDistribution],
    poll_interval: float,
    retry_stale: bool,
) -> None:
    """Waits until every earlier RUNNING trial holds its params, so that sampling sees every point in flight."""
    if set(distributions) <= set(fixed_params(trial)):
        return  # a queued trial: its params are given, nothing to sample
    grace = grace_period_of(storage_of(study))
    started = time.monotonic()
    deadline = started + (grace + poll_interval if grace is not None else 30.0)
    last_cleanup = started
    while True:
        pending = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number < trial.number and not _has_params(t, distributions)]
        if not pending:
            return
        now = time.monotonic()
        if now > deadline:
            # A worker that died while sampling without heartbeat is never found dead: do not wait forever.
            log.warning("Trial %d: earlier trial(s) %s still have no params; sampling anyway.", trial.number, pending)
            return
        if now - last_cleanup > poll_interval:
            fail_stale_trials(study, retry=retry_stale)  # the earlier trial's worker may have died while sampling
            last_cleanup = now
        time.sleep(0.05)  # sampling takes milliseconds to a second: look often


def _has_params(trial: FrozenTrial, distributions: Mapping[str, BaseDistribution]) -> bool:
    known = set(trial.params) | set(fixed_params(trial))
    return set(distributions) <= known


def _config_failures(trials: list[FrozenTrial]) -> int:
    return sum(1 for t in trials if t.state == TrialState.FAIL and not is_infrastructure_failure(t))


def count_config_failures(study: optuna.Study) -> int:
    """Failed trials of the study that failed because of their config (not a dead process nor a lost race)."""
    return _config_failures(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))

