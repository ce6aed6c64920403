"""Every finished trial informs TetraOpt: one test per case of issue #15, named after the case.

Each case is a way a user's study used to waste trials silently (a point proposed again and again, a history
dropped, a mistake found only after ``max_failures`` trainings). The list below is the inputs the sampler, the
Ray searcher and the tuner have been tried with; each test failed before its fix.
"""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from lightning.fabric.utilities.exceptions import MisconfigurationException
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tests.helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner import TetraOptSampler, TetraOptTuner

optuna.logging.set_verbosity(optuna.logging.WARNING)

TUNER_SPACE = {"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64]), "depth": Int(1, 2)}


def _tuner(tmp_path, **kwargs) -> TetraOptTuner:
    settings = {"monitor": "val_acc", "mode": "max", "budget": 3, "storage": f"sqlite:///{tmp_path / 'tune.db'}",
                "study_name": "case", "progress_bar": False}
    settings.update(kwargs)
    return TetraOptTuner(settings.pop("search_space", TUNER_SPACE), **settings)


# ------------------------------------------------------------------ 1. non-finite values
@pytest.mark.parametrize("space", [{"x": Int(-5, 5)}, None], ids=["given-space", "inferred-space"])
def test_case_1_an_inf_value_is_a_failed_point_never_proposed_again(space) -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_int("x", -5, 5)
        return math.inf if x < 0 else float((x - 2) ** 2)

    study = optuna.create_study(sampler=TetraOptSampler(space, seed=0))
    study.optimize(objective, n_trials=11)
    xs = [t.params["x"] for t in study.trials]
    assert sorted(xs) == list(range(-5, 6))  # 11 trials, 11 points: no inf point came back
    assert study.best_params == {"x": 2}


# ------------------------------------------------------------------ 2. pruned trials without values
def test_case_2_a_pruned_trial_without_a_value_is_a_failed_point() -> None:
    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_int("x", 0, 9), trial.suggest_int("y", 0, 3)
        if x % 2:
            raise optuna.TrialPruned()  # nothing reported
        return float((x - 4) ** 2 + y)

    sampler = TetraOptSampler({"x": Int(0, 9), "y": Int(0, 3)}, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=40)
    assert len({(t.params["x"], t.params["y"]) for t in study.trials}) == 40  # the whole grid, once
    assert study.best_params == {"x": 4, "y": 0}
    # ask/tell: a trial told PRUNED with nothing reported is in TetraOpt's history, as failed
    dists = {"x": IntDistribution(0, 9), "y": IntDistribution(0, 3)}
    study = optuna.create_study(sampler=sampler)
    trial = study.ask(dists)
    study.tell(trial, state=TrialState.PRUNED)
    history = sampler.build_optimizer(study, dists).history
    assert [(h["params"], h["state"]) for h in history] == [(trial.params, "failed")]


# ------------------------------------------------------------------ 3. values off TetraOpt's grid
STEP_AND_LOG = {"d": FloatDistribution(0.0, 1.0, step=0.1), "w": IntDistribution(1, 1024, log=True)}


@pytest.mark.parametrize("space", [{"d": Float(0.0, 1.0, step=0.1), "w": Int(1, 1024, log=True)}, None],
                         ids=["given-space", "inferred-space"])
def test_case_3_values_off_tetraopts_grid_are_told_not_dropped(space) -> None:
    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("d", 0.0, 1.0, step=0.1) + trial.suggest_int("w", 1, 1024, log=True) / 1000

    sampler = TetraOptSampler(space, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"d": 0.3, "w": 37})  # 37: between the grid points of the old 16-point log grid
    study.add_trial(create_trial(params={"d": 0.30000000000000004, "w": 500}, distributions=STEP_AND_LOG,
                                 value=2.0))
    study.optimize(objective, n_trials=6)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    optimizer = sampler.build_optimizer(study, STEP_AND_LOG)
    assert len(optimizer.history) == 7  # every trial told: enqueued, added, proposed
    assert optimizer.history[0]["params"] == {"d": 0.3, "w": 37}  # kept exactly
    assert optimizer.history[1]["params"] == {"d": 0.30000000000000004, "w": 500}
    points = {optimizer.space.to_index(t.params) for t in study.trials}
    assert len(points) == 7  # 0.3 and 0.30000000000000004 are one grid value; no point ran twice


# ------------------------------------------------------------------ 4. conditional params, explicit space
CONDITIONAL = {"optimizer": Categorical(["sgd", "adam"]), "momentum": Float(0.0, 0.9, grid=4)}


def _conditional(trial: optuna.Trial) -> float:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    if optimizer == "sgd":
        return (trial.suggest_float("momentum", 0.0, 0.9) - 0.6) ** 2
    return 0.5


def test_case_4_a_trial_without_a_conditional_param_still_informs_tetraopt() -> None:
    sampler = TetraOptSampler(CONDITIONAL, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_conditional, n_trials=8)
    dists = {"optimizer": CategoricalDistribution(["sgd", "adam"]), "momentum": FloatDistribution(0.0, 0.9)}
    history = sampler.build_optimizer(study, dists).history
    assert len(history) == 8  # every trial told, adam trials included (at the momentum the sampler proposed)
    momenta = sorted(t.params["momentum"] for t in study.trials if "momentum" in t.params)
    assert momenta == pytest.approx([0.0, 0.3, 0.6, 0.9])  # 8 trials cover the 8 grid points: no stall
    assert study.best_value == pytest.approx(0.0)


def test_case_4_a_trial_the_sampler_did_not_propose_takes_the_first_grid_value() -> None:
    sampler = TetraOptSampler(CONDITIONAL, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(create_trial(params={"optimizer": "adam"},
                                 distributions={"optimizer": CategoricalDistribution(["sgd", "adam"])}, value=0.5))
    dists = {"optimizer": CategoricalDistribution(["sgd", "adam"]), "momentum": FloatDistribution(0.0, 0.9)}
    history = sampler.build_optimizer(study, dists).history
    assert [h["params"] for h in history] == [{"optimizer": "adam", "momentum": 0.0}]


# ------------------------------------------------------------------ 5. huge ranges
def test_case_5_a_huge_int_range_and_a_fine_step_float_are_never_materialized() -> None:
    def objective(trial: optuna.Trial) -> float:
        seed = trial.suggest_int("seed", 0, 2**31 - 1)
        share = trial.suggest_float("share", 0.0, 1.0, step=1e-5)  # 100001 values
        return abs(share - 0.5) + (seed % 7) / 100

    sampler = TetraOptSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=12)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    optimizer = sampler.build_optimizer(study, study.trials[0].distributions)
    assert optimizer.space.sizes == (128, 128)  # searched on 128 levels each, any value of the range accepted
    assert len(optimizer.history) == 12
    assert len({optimizer.space.to_index(t.params) for t in study.trials}) == 12


# ------------------------------------------------------------------ 6. multi-objective
def test_case_6_a_multi_objective_study_raises_before_the_first_trial_runs() -> None:
    calls = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        calls.append(trial.number)
        return trial.suggest_float("x", 0, 1), 0.0

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=TetraOptSampler(seed=0))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(objective, n_trials=3)
    assert calls == []


# ------------------------------------------------------------------ 7. choices that compare equal
def test_case_7_choices_that_compare_equal_search_what_optuna_can_store() -> None:
    sampler = TetraOptSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(t.suggest_categorical("c", [0, 1, True, False])), n_trials=4)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    optimizer = sampler.build_optimizer(study, study.trials[0].distributions)
    # Optuna stores True as 1 and False as 0: proposing True would never be recorded, and proposed again
    assert optimizer.space["c"].choices == (0, 1)
    assert sorted({t.params["c"] for t in study.trials}) == [0, 1]
    with pytest.raises(ValueError, match=r"hold 1 and True, which compare equal.*would record True as 1.*"
                                         r"\['0', '1', 'True', 'False'\]"):
        TetraOptSampler({"c": Categorical([0, 1, True, False])})


# ------------------------------------------------------------------ 8. TetraOptSearch (Ray Tune)
def test_case_8_dimensions_in_ray_param_space_fail_at_once_naming_the_fix() -> None:
    pytest.importorskip("ray", reason="Ray Tune is an optional extra")
    from ray.tune.impl.placeholder import create_resolvers_map, inject_placeholders

    from tetra_lightning.tuner.ray import TetraOptSearch

    # what ray.tune.Tuner(param_space=...) hands a searcher: non-primitive values replaced by placeholders
    config = inject_placeholders({"x": Int(0, 9), "epochs": 3}, create_resolvers_map())
    search = TetraOptSearch(metric="score", mode="max")
    with pytest.raises(ValueError, match=r"Ray Tune replaces.*\['x'\].*TetraOptSearch\(space="):
        search.set_search_properties(None, None, config)


def test_case_8_points_to_evaluate_between_grid_points_raise() -> None:
    pytest.importorskip("ray", reason="Ray Tune is an optional extra")
    from tetra_lightning.tuner.ray import TetraOptSearch

    with pytest.raises(ValueError, match=r"`points_to_evaluate\[0\]` .*'x': 3.5.* not on the grid.*x=3 or x=4"):
        TetraOptSearch({"x": Int(0, 9)}, metric="s", mode="max", points_to_evaluate=[{"x": 3.5}])
    with pytest.raises(ValueError, match=r"`points_to_evaluate\[1\]`.*not on the grid"):
        TetraOptSearch({"lr": Float(1e-4, 1e-1, log=True, grid=4)}, metric="s", mode="max",
                       points_to_evaluate=[{"lr": 1e-3}, {"lr": 2e-3}])
    # a grid value written with rounding noise is the grid value
    search = TetraOptSearch({"lr": Float(1e-4, 1e-1, log=True, grid=4)}, metric="s", mode="max",
                            points_to_evaluate=[{"lr": 0.001}])
    assert search.suggest("t0") == {"lr": search.space["lr"].grid[1]}


# ------------------------------------------------------------------ 9. TetraOptTuner fails fast
def _never_train(config):
    raise AssertionError("no trial may train")


def test_case_9_a_stored_study_with_another_search_space_fails_fast(tmp_path) -> None:
    study = _tuner(tmp_path).load_study()
    study.add_trial(create_trial(params={"lr": 0.01, "width": 16, "depth": 1},
                                 distributions=_tuner(tmp_path).distributions, value=0.5))
    other = dict(TUNER_SPACE, depth=Int(1, 4))  # a wider range: Optuna itself would mix the trials silently
    with pytest.raises(ValueError, match=r"Study 'case' in this storage was tuned over another search space.*"
                                         r"'depth': stored .*'high': 2.*now .*'high': 4.*`study_name`"):
        _tuner(tmp_path, search_space=other, catch=()).fit(_never_train, DigitsData())
    # the same space resumes as before, also when it was stored before Int's to_dict() had "log"
    stored = _tuner(tmp_path).load_study()
    stored.set_user_attr("tetra:search_space", {**stored.user_attrs["tetra:search_space"],
                                                "depth": {"type": "int", "low": 1, "high": 2, "step": 1}})
    assert _tuner(tmp_path).load_study().trials[0].value == 0.5


def test_case_9_a_monitor_never_logged_fails_fast_listing_the_logged_keys(tmp_path) -> None:
    tuner = _tuner(tmp_path, monitor="val_accuracy", budget=5)
    with pytest.raises(MisconfigurationException,
                       match=r"monitor 'val_accuracy' is not in .*\['train_loss', 'val_acc', 'val_loss'\]"):
        tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert [t.state for t in tuner.load_study().trials] == [TrialState.FAIL]  # one training, recorded


def test_case_9_a_misspelled_trainer_argument_fails_before_any_trial(tmp_path) -> None:
    tuner = _tuner(tmp_path)
    with pytest.raises(TypeError, match=r"`trainer_kwargs` has 'max_epoch'.*did you mean 'max_epochs'.*"
                                        r"accepts.*'accelerator'"):
        tuner.fit(_never_train, DigitsData(), trainer_kwargs={"max_epoch": 1})
    assert tuner.load_study().trials == []


# ------------------------------------------------------------------ 10. param names
def test_case_10_a_space_name_the_objective_never_suggests_warns_once_naming_both() -> None:
    study = optuna.create_study(sampler=TetraOptSampler({"x": Int(0, 9)}, seed=0))
    with pytest.warns(UserWarning, match=r"suggests 'X'.*not in its search space.*'x'") as caught:
        study.optimize(lambda t: float(t.suggest_int("X", 0, 9)), n_trials=4)
    assert sum("'X'" in str(w.message) for w in caught) == 1
    # a param outside the space that resembles none of its names is the documented fallback: no warning
    study = optuna.create_study(sampler=TetraOptSampler({"x": Int(0, 9)}, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study.optimize(lambda t: t.suggest_int("x", 0, 9) + t.suggest_float("noise", 0, 1e-3), n_trials=3)
