"""Resume after kill -9, and parallel worker processes on one shared storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Categorical, Float
from tetra_lightning.tuner import TetraOptTuner

TESTS = Path(__file__).resolve().parent
BUDGET = 5

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Categorical, Float
from tetra_lightning.tuner import TetraOptTuner

def model_fn(cfg):
    with open({calls!r}, "a") as handle:
        handle.write(json.dumps({{"pid": os.getpid(), "cfg": cfg}}) + "\\n")
    return TinyMLP(**cfg)

tuner = TetraOptTuner(
    {{"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64])}},
    monitor="val_acc", mode="max", budget={budget}, storage={storage!r}, study_name="resume", progress_bar=False,
)
tuner.fit(model_fn, DigitsData(), trainer_kwargs=FAST_TRAINER)
"""


def _states(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="resume", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def test_a_killed_tuner_resumes_without_rerunning_finished_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "tune.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), calls=str(calls), budget=BUDGET,
                                                    storage=storage)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            trials = _states(storage)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(complete) >= 2 and any(t.state == TrialState.RUNNING and t.params for t in trials):
                break
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = {t.number: t for t in _states(storage)}
    done_before = [t for t in before.values() if t.state == TrialState.COMPLETE]
    running_before = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(done_before) >= 2 and len(running_before) == 1
    n_calls_first = len(calls.read_text().splitlines())

    rerun = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {t.number: t for t in _states(storage)}
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == BUDGET  # the total budget, across both processes
    for trial in done_before:  # finished trials are untouched
        assert after[trial.number].state == TrialState.COMPLETE
        assert after[trial.number].datetime_complete == trial.datetime_complete
    stale = after[running_before[0].number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["fail_reason"].startswith("stale: process")
    # the interrupted config is retried once, nothing else is run twice
    retried = [t for t in after.values() if t.user_attrs.get("retry_of") == stale.number]
    assert len(retried) == 1 and retried[0].params == stale.params and retried[0].state == TrialState.COMPLETE
    second_run = [json.loads(line) for line in calls.read_text().splitlines()[n_calls_first:]]
    assert len(second_run) == BUDGET - len(done_before)
    configs = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(configs)) == BUDGET


def test_two_worker_processes_share_the_study(tmp_path):
    import torch

    # The parent has used an OpenMP thread pool before forking (as after earlier trials): forked workers
    # must still train instead of deadlocking in libgomp.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)
    torch.set_num_threads(threads)
    tuner = TetraOptTuner(
        {"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64])},
        monitor="val_acc", mode="max", budget=4, storage=f"sqlite:///{tmp_path / 'par.db'}", study_name="par",
        n_jobs=2, progress_bar=False,
    )
    result = tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=dict(FAST_TRAINER, max_epochs=1))
    trials = result.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # the budget is exact, no surplus trial
    pids = {t.system_attrs["tetra:pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
