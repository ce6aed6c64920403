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


class _FinishesBetweenReads:
    """A study whose trials change between two reads: the first read still sees a trial RUNNING, later reads see
    it COMPLETE (another worker told it in between)."""

    def __init__(self, study: optuna.Study, before: list) -> None:
        self._study, self._before = study, before

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None):
        trials, self._before = (self._before, None) if self._before is not None else (
            self._study.get_trials(deepcopy=False), None)
        return [t for t in trials if states is None or t.state in states]


def test_a_trial_finishing_while_another_samples_is_not_proposed_again():
    from tetra_lightning.optim import TetraOpt

    space = {"c": Categorical(["a", "b"])}
    first = TetraOpt(space, seed=0).ask(1)[0]["c"]  # what an empty history proposes first
    sampler = TetraOptSampler(space, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"c": first})
    other = study.ask()
    other.suggest_categorical("c", ["a", "b"])
    before = study.get_trials(deepcopy=True)  # `other` RUNNING with its point
    study.tell(other, 1.0)  # ... and done a moment later
    mine = study.ask()
    dists = {"c": optuna.distributions.CategoricalDistribution(["a", "b"])}
    proposal = sampler.sample_relative(_FinishesBetweenReads(study, before), mine._cached_frozen_trial, dists)
    assert proposal == {"c": "b" if first == "a" else "a"}


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
