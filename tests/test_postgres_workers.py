"""Tuner workers on several "machines" sharing one study in a real PostgreSQL server (started on loopback).

Skipped, with the reason, where no PostgreSQL server binaries are installed (``make test`` installs Debian's
``postgresql`` package when it can).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers.postgres import PostgresUnavailable, create_database, postgres_server
from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner import TetraOptSampler
from tetra_lightning.tuner.space import to_optuna_distributions
from tetra_lightning.tuner.storage import STALE_PREFIX, SURPLUS_PREFIX, make_storage, reopen_storage
from tetra_lightning.tuner.worker import Heartbeat, claim_trial

TESTS = Path(__file__).resolve().parent
SPACE = {"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64])}

# One tuner worker, as a user starts it on each machine. `victim` plays a worker on another machine (its
# hostname is faked, so only its heartbeat can tell that it died) that hangs in the middle of its second trial.
WORKER = """
import json, os, socket, sys, time
sys.path.insert(0, {tests!r})
from lightning.pytorch import Callback
from helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Categorical, Float
from tetra_lightning.tuner import TetraOptTuner
from tetra_lightning.tuner.storage import make_storage

url, study_name, budget, calls, role = sys.argv[1:6]
if role == "victim":
    socket.gethostname = lambda: "node-b"
started = []

def model_fn(cfg):
    started.append(cfg)
    with open(calls, "a") as handle:
        handle.write(json.dumps({{"pid": os.getpid(), "role": role, "cfg": cfg}}) + "\\n")
    return TinyMLP(**cfg)

class HangInSecondTrial(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if role == "victim" and len(started) == 2 and batch_idx == 3:
            open(calls + ".hanging", "w").close()
            time.sleep(600)

storage = url if role == "plain" else make_storage(url, heartbeat_interval=1, grace_period=3)
tuner = TetraOptTuner(
    {{"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64])}},
    monitor="val_acc", mode="max", budget=int(budget), storage=storage, study_name=study_name, progress_bar=False,
)
tuner.fit(model_fn, DigitsData(), trainer_kwargs=dict(FAST_TRAINER, callbacks=[HangInSecondTrial()]))
"""


@pytest.fixture(scope="session")
def postgres_url():
    pytest.importorskip("psycopg2", reason="the `postgres` extra (psycopg2-binary) is not installed")
    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresUnavailable as error:
        pytest.skip(f"no PostgreSQL server for the multi-worker tests: {error}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


def _start(tmp_path: Path, url: str, study_name: str, budget: int, role: str, calls: Path) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS))))
    log = open(tmp_path / f"{role}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(script), url, study_name, str(budget), str(calls), role],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def test_two_workers_spend_exactly_the_budget_without_a_duplicate(postgres_url, tmp_path):
    budget, calls = 8, tmp_path / "calls.jsonl"
    workers = [_start(tmp_path, postgres_url, "two-workers", budget, "plain", calls) for _ in range(2)]
    codes = [_wait(w, timeout=300) for w in workers]
    assert codes == [0, 0], _logs(tmp_path)

    study = optuna.load_study(study_name="two-workers", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget  # exactly the budget across both processes
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    # the only other trials are slots lost in a race for the last claim: given back before sampling anything
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith(SURPLUS_PREFIX)
               and not t.params for t in others)
    assert len(others) <= 1
    assert len({_key(t.params) for t in complete}) == budget  # no point evaluated twice
    # every trial ran exactly once, and both workers ran trials
    runs = _calls(calls)
    assert len(runs) == budget and len({_key(r["cfg"]) for r in runs}) == budget
    per_worker = Counter(t.system_attrs["tetra:pid"] for t in complete)
    assert sorted(per_worker) == sorted(w.pid for w in workers)
    assert min(per_worker.values()) >= 1
    assert all(t.system_attrs["tetra:heartbeat_interval"] == 10 for t in complete)  # the URL's default liveness
    # results of both workers feed one optimizer: a fresh sampler replays all 8, with their values
    optimizer = TetraOptSampler(SPACE).build_optimizer(study, dict(to_optuna_distributions(SPACE)))
    assert len(optimizer.history) == budget
    assert sorted(h["value"] for h in optimizer.history) == pytest.approx(sorted(t.value for t in complete))


def test_a_killed_worker_loses_no_finished_trial_and_its_trial_is_retried_after_the_grace_period(
    postgres_url, tmp_path
):
    budget, calls, grace = 6, tmp_path / "calls.jsonl", 3
    victim = _start(tmp_path, postgres_url, "kill", budget, "victim", calls)
    survivor = _start(tmp_path, postgres_url, "kill", budget, "survivor", calls)
    try:
        deadline = time.monotonic() + 180
        while not Path(f"{calls}.hanging").exists():  # the victim is inside the training loop of its 2nd trial
            assert time.monotonic() < deadline and victim.poll() is None, _logs(tmp_path)
            time.sleep(0.1)
        killed_at = datetime.now()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        before = optuna.load_study(study_name="kill", storage=postgres_url).get_trials(deepcopy=False)
        assert _wait(survivor, timeout=240) == 0, _logs(tmp_path)
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
                process.wait()

    by_pid = {p: [t for t in before if t.system_attrs.get("tetra:pid") == p] for p in (victim.pid, survivor.pid)}
    victim_done = [t for t in by_pid[victim.pid] if t.state == TrialState.COMPLETE]
    victim_running = [t for t in by_pid[victim.pid] if t.state == TrialState.RUNNING]
    assert len(victim_done) == 1 and len(victim_running) == 1
    assert victim_running[0].system_attrs["tetra:host"] == "node-b"

    after = {t.number: t for t in optuna.load_study(study_name="kill", storage=postgres_url).trials}
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == budget and len({_key(t.params) for t in complete}) == budget
    # the victim's finished trial is untouched
    kept = after[victim_done[0].number]
    assert kept.state == TrialState.COMPLETE and kept.value == victim_done[0].value
    assert kept.datetime_complete == victim_done[0].datetime_complete
    # its interrupted trial was failed by the survivor once the heartbeat had been silent for the grace period
    dead = after[victim_running[0].number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"] == (
        f"{STALE_PREFIX} no heartbeat for {grace}s from process {victim.pid} on node-b")
    silent = (dead.datetime_complete - killed_at).total_seconds()
    assert grace - 1 - 0.5 <= silent <= grace + 20  # last beat <= 1 s before the kill; found at the next poll
    # ... and its params were run again, once, by the survivor
    retries = [t for t in after.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1
    assert retries[0].params == dead.params and retries[0].state == TrialState.COMPLETE
    assert retries[0].system_attrs["tetra:pid"] == survivor.pid
    # no other trial ran twice: the model_fn calls are the budget plus the one killed mid-way
    runs = _calls(calls)
    assert len(runs) == budget + 1
    assert Counter(_key(r["cfg"]) for r in runs).most_common(1)[0] == (_key(dead.params), 2)


def test_racing_claims_never_exceed_the_budget(postgres_url):
    # Eight workers (threads with their own connections and samplers) race for 24 slots with an instant
    # objective, so claims collide as often as they can: still exactly 24 COMPLETE trials, 24 distinct points.
    budget, n_workers = 24, 8
    space = {"x": Int(0, 9), "y": Int(0, 9)}
    dists = dict(to_optuna_distributions(space))
    optuna.create_study(storage=make_storage(postgres_url), study_name="race", direction="minimize")
    errors: list[BaseException] = []
    ran: list[int] = []

    def worker(seed: int) -> None:
        try:
            study = optuna.load_study(study_name="race", storage=make_storage(postgres_url, heartbeat_interval=1),
                                      sampler=TetraOptSampler(space, seed=seed))
            while (trial := claim_trial(study, budget=budget, distributions=dists, poll_interval=0.05)) is not None:
                with Heartbeat(study._storage, trial._trial_id):
                    ran.append(trial.number)
                    study.tell(trial, (trial.params["x"] - 3) ** 2 + (trial.params["y"] - 7) ** 2)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    trials = optuna.load_study(study_name="race", storage=postgres_url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget and len(ran) == budget
    assert len({_key(t.params) for t in complete}) == budget
    surplus = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith(SURPLUS_PREFIX) and not t.params for t in surplus)
    assert len(surplus) <= n_workers - 1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_workers_starting_at_once_on_an_empty_database_all_join_the_study(postgres_url):
    # Six workers create the tables of an empty database at the same moment: PostgreSQL fails some CREATE
    # TABLEs on its catalog (plain `RDBStorage(url)` raises IntegrityError here); make_storage retries them.
    url = create_database(postgres_url, "empty")
    barrier, errors, studies = threading.Barrier(6), [], []

    def worker() -> None:
        barrier.wait()
        try:
            studies.append(optuna.create_study(storage=make_storage(url), study_name="fresh", load_if_exists=True))
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len({study._study_id for study in studies}) == 1 and len(studies) == 6


def test_worker_processes_reopen_the_storage_with_its_liveness_settings(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=2, grace_period=7)
    copy = reopen_storage(storage)
    assert copy is not storage and copy.engine is not storage.engine
    assert (copy.url, copy.heartbeat_interval, copy.grace_period) == (storage.url, 2, 7)
    assert reopen_storage("sqlite:///b.db") == "sqlite:///b.db"
    default = make_storage(f"sqlite:///{tmp_path / 'c.db'}")
    assert (default.heartbeat_interval, default.grace_period) == (10, 60)
    with pytest.raises(ValueError, match=r"`grace_period` must be a positive int \(seconds\) or None, got 0"):
        make_storage("sqlite:///:memory:", grace_period=0)
    with pytest.raises(ValueError, match="`heartbeat_interval` must be a positive int"):
        make_storage("sqlite:///:memory:", heartbeat_interval=1.5)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_an_idle_worker_waits_only_for_trials_that_will_finish_or_be_found_dead(tmp_path):
    dists = dict(to_optuna_distributions(SPACE))
    storage = make_storage(f"sqlite:///{tmp_path / 'w.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="w", sampler=TetraOptSampler(SPACE))
    other = study.ask(dists)  # the one slot is held by a trial of another machine that sends no heartbeat
    for key, value in {"tetra:pid": 1, "tetra:host": "elsewhere", "tetra:heartbeat_interval": None}.items():
        study._storage.set_trial_system_attr(other._trial_id, key, value)
    started = time.monotonic()
    assert claim_trial(study, budget=1, distributions=dists, poll_interval=0.1) is None  # nobody can watch it
    assert time.monotonic() - started < 2

    # the same trial sending heartbeats: the worker waits, fails it once it is silent, and runs its params
    study._storage.set_trial_system_attr(other._trial_id, "tetra:heartbeat_interval", 1)
    study._storage.record_heartbeat(other._trial_id)
    started = time.monotonic()
    retry = claim_trial(study, budget=1, distributions=dists, poll_interval=0.1)
    waited = time.monotonic() - started
    assert retry is not None and 2 <= waited < 6
    assert retry.params == other.params and retry.user_attrs["retry_of"] == other.number
    dead = study._storage.get_trial(other._trial_id)
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale: no heartbeat for 2s")
