"""TetraOptSampler inside plain Optuna studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner import TetraOptSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    y = trial.suggest_int("y", -5, 5)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    return (x - 0.7) ** 2 + 0.1 * (y - 2) ** 2 + (0.0 if c == "b" else 1.0)


SPACE = {"x": Float(-2.0, 2.0, grid=21), "y": Int(-5, 5), "c": Categorical(["a", "b", "c"])}


def _best(sampler: optuna.samplers.BaseSampler, n_trials: int = 30) -> float:
    study = optuna.create_study(sampler=sampler)
    study.optimize(quadratic, n_trials=n_trials)
    return study.best_value


@pytest.mark.parametrize("space", [SPACE, None], ids=["given-space", "inferred-space"])
def test_sampler_beats_random_on_a_quadratic(space):
    tetra = _best(TetraOptSampler(space, seed=0))
    random = _best(optuna.samplers.RandomSampler(seed=0))
    assert tetra <= random
    assert tetra < 0.1  # near x = 0.7, y = 2, c = "b" (random: 0.15 with this seed)


def test_params_outside_the_space_go_to_the_fallback_sampler():
    study = optuna.create_study(sampler=TetraOptSampler({"x": Int(0, 9)}, seed=1))
    study.optimize(lambda t: (t.suggest_int("x", 0, 9) - 4) ** 2 + t.suggest_float("noise", 0, 1e-3), n_trials=12)
    noise = {t.params["noise"] for t in study.trials}
    assert len(noise) == 12  # independent random values
    assert study.best_params["x"] == 4
    assert len({t.params["x"] for t in study.trials[:10]}) == 10  # TetraOpt never repeats a grid point


def test_concurrent_trials_get_distinct_points_of_one_batch():
    dists = {"x": IntDistribution(0, 9), "y": IntDistribution(0, 9)}
    study = optuna.create_study(sampler=TetraOptSampler({"x": Int(0, 9), "y": Int(0, 9)}, seed=0))
    running = [study.ask(dists) for _ in range(4)]  # four workers ask before any tells
    points = {(t.params["x"], t.params["y"]) for t in running}
    assert len(points) == 4


def test_a_fresh_sampler_rebuilds_the_state_from_the_history(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="q", sampler=TetraOptSampler(SPACE, seed=3))
    study.optimize(quadratic, n_trials=12)
    dists = {"x": FloatDistribution(-2.0, 2.0), "y": IntDistribution(-5, 5),
             "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"])}
    # the same study seen by a new process: a new sampler, no memory but the storage
    resumed = optuna.load_study(study_name="q", storage=storage, sampler=TetraOptSampler(SPACE, seed=3))
    first = resumed.ask(dists).params
    resumed.tell(resumed.trials[-1].number, state=TrialState.FAIL)
    again = optuna.load_study(study_name="q", storage=storage, sampler=TetraOptSampler(SPACE, seed=3))
    second = again.ask(dists).params
    assert first != second  # a failed point is never proposed again
    evaluated = {(t.params["x"], t.params["y"], t.params["c"]) for t in study.trials[:12]}
    assert (first["x"], first["y"], first["c"]) not in evaluated


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`search_space` is empty"):
        TetraOptSampler({})
    with pytest.raises(ValueError, match="`float_grid` must be an int >= 2"):
        TetraOptSampler(float_grid=1)
    with pytest.raises(ValueError, match="must not set 'direction'"):
        TetraOptSampler(SPACE, optimizer_kwargs={"direction": "minimize"})
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=TetraOptSampler(SPACE))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (t.suggest_float("x", -2, 2), 0.0), n_trials=1)
