"""TetraOpt on the spaces users tune: continuous, log-scaled, integer, mixed and conditional (issue #16).

Every test asserts on the optimum found of a function whose optimum is known, with the budget a user would give.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from tetra_lightning.optim import Categorical, Float, Int, TetraOpt, minimize
from tetra_lightning.optim.surrogate import GridGP
from tetra_lightning.tuner import TetraOptSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _branin(p: dict) -> float:
    x, y = p["x"], p["y"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x * x + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def test_continuous_branin_near_its_minimum_in_30_evaluations_on_most_seeds() -> None:
    gaps = [minimize(_branin, {"x": Float(-5.0, 10.0), "y": Float(0.0, 15.0)}, budget=30, seed=seed).best_value
            - 0.397887 for seed in range(6)]  # three global minima of 0.397887
    assert max(gaps) < 0.1
    assert sum(gap < 0.01 for gap in gaps) >= 5


def test_log_scaled_learning_rate_and_weight_decay_found_within_a_factor_of_two() -> None:
    def loss(p: dict) -> float:  # a validation-loss-like bowl in log space, optimum lr=3e-3, wd=1e-4
        return (math.log10(p["lr"]) - math.log10(3e-3)) ** 2 + 0.5 * (math.log10(p["wd"]) + 4.0) ** 2

    space = {"lr": Float(1e-6, 1.0, log=True), "wd": Float(1e-8, 1e-1, log=True)}
    for seed in range(3):
        best = minimize(loss, space, budget=30, seed=seed).best_params
        assert abs(math.log10(best["lr"]) - math.log10(3e-3)) < math.log10(2.0)
        assert abs(math.log10(best["wd"]) + 4.0) < math.log10(4.0)


def test_integer_widths_on_a_log_scale_and_a_wide_integer_range() -> None:
    def loss(p: dict) -> float:  # best width 96, best batch size 40
        return (math.log2(p["width"]) - math.log2(96)) ** 2 + ((p["batch"] - 40) / 50.0) ** 2

    space = {"width": Int(8, 1024, log=True), "batch": Int(16, 512)}
    for seed in range(3):
        res = minimize(loss, space, budget=30, seed=seed)
        assert 64 <= res.best_params["width"] <= 144
        assert 16 <= res.best_params["batch"] <= 80
        assert all(isinstance(h["params"]["width"], int) for h in res.history)


def test_mixed_categorical_and_continuous_space_finds_the_right_choice_and_value() -> None:
    shift = {"sgd": 0.6, "adam": 0.2, "rmsprop": 0.4}
    bonus = {"sgd": 0.3, "adam": 0.0, "rmsprop": 0.2}

    def loss(p: dict) -> float:
        return (p["x"] - shift[p["opt"]]) ** 2 + (p["y"] - 0.5) ** 2 + bonus[p["opt"]]

    space = {"opt": Categorical(["sgd", "adam", "rmsprop"]), "x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    for seed in range(3):
        res = minimize(loss, space, budget=30, seed=seed)
        assert res.best_params["opt"] == "adam"
        assert res.best_value < 0.01


def test_a_plateau_does_not_stall_the_search() -> None:
    # a step function (as a decision tree's score): flat terraces, the lowest one around (0.37, 0.61)
    def loss(p: dict) -> float:
        return float(math.floor(8.0 * math.hypot(p["x"] - 0.37, p["y"] - 0.61)))

    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    reached = [minimize(loss, space, budget=40, seed=seed).best_value for seed in range(4)]
    assert reached.count(0.0) >= 3


def test_a_conditional_parameter_through_the_sampler_does_not_stall() -> None:
    # momentum exists only for SGD trials (define-by-run); the best config is SGD with lr 0.1 and momentum 0.9
    def objective(trial: optuna.Trial) -> float:
        opt = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
        value = (math.log10(lr) - (-1.0 if opt == "sgd" else -3.0)) ** 2
        if opt == "sgd":
            value += 4.0 * (trial.suggest_float("momentum", 0.0, 0.99) - 0.9) ** 2 - 0.2
        return value

    for seed in range(2):
        study = optuna.create_study(sampler=TetraOptSampler(seed=seed))
        study.optimize(objective, n_trials=40)
        points = {(t.params["optimizer"], round(t.params["lr"], 12)) for t in study.trials}
        assert len(points) == 40  # never the same point twice
        assert study.best_value < 0.05
        assert study.best_params["optimizer"] in ("sgd", "adam")


def test_the_trust_region_is_the_same_when_the_history_is_replayed_in_one_tell() -> None:
    space = {"x": Float(-2.0, 2.0), "y": Float(-2.0, 2.0)}
    opt = TetraOpt(space, budget=30, seed=4, direction="minimize")
    while batch := opt.ask(1):
        opt.tell(batch, [(p["x"] - 0.5) ** 2 + (p["y"] + 1.0) ** 2 for p in batch])
    replay = TetraOpt(space, seed=4, direction="minimize")
    replay.tell([h["params"] for h in opt.history], [h["value"] for h in opt.history])
    assert replay._strategy.width == pytest.approx(opt._strategy.width)
    assert replay.best_params == opt.best_params


def test_the_gaussian_process_interpolates_and_its_uncertainty_shrinks_at_the_data() -> None:
    rng = np.random.default_rng(0)
    coords = [np.linspace(0.0, 1.0, 33), None]
    x = np.stack([rng.integers(0, 33, 20), rng.integers(0, 3, 20)], axis=1)
    y = np.sin(4 * x[:, 0] / 32) + np.array([0.0, 1.0, -1.0])[x[:, 1]]
    gp = GridGP(coords, [33, 3], rng).fit(x, (y - y.mean()) / y.std())
    mean, std = gp.predict(x)
    assert np.abs(mean - (y - y.mean()) / y.std()).max() < 0.05
    far = np.array([[0, 0], [32, 2]])
    _, std_far = gp.predict(far)
    assert std.max() < std_far.max()
    # the interaction tensor along one mode matches point predictions
    line_mean, line_std = gp.line(x[:2], 0)
    full_mean, full_std = gp.predict(np.array([[level, x[0, 1]] for level in range(33)]))
    np.testing.assert_allclose(line_mean[0], full_mean, atol=1e-9)
    np.testing.assert_allclose(line_std[0], full_std, atol=1e-9)


def test_global_ei_candidates_and_multiscale_ascent_are_opt_in_and_still_find_the_optimum() -> None:
    space = {"x": Float(-5.0, 10.0), "y": Float(0.0, 15.0)}
    default = minimize(_branin, space, budget=30, seed=0)
    tuned = minimize(_branin, space, budget=30, seed=0, random_candidates=128, multiscale=True)
    assert tuned.best_value < 0.397887 + 0.05
    # the options change the proposals (they are not silently ignored)
    assert [h["params"] for h in tuned.history] != [h["params"] for h in default.history]
    with pytest.raises(ValueError, match="random_candidates"):
        minimize(_branin, space, budget=10, random_candidates=-1)


def test_the_gaussian_process_works_on_a_thousand_levels_without_level_by_level_matrices() -> None:
    coords = [np.linspace(0.0, 1.0, 1024), np.linspace(0.0, 1.0, 1024)]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 1024, size=(25, 2))
    y = np.cos(3 * x[:, 0] / 1023) * np.sin(2 * x[:, 1] / 1023)
    gp = GridGP(coords, [1024, 1024], rng).fit(x, (y - y.mean()) / y.std())
    assert not hasattr(gp, "level_dist")
    mean, _ = gp.predict(x)
    assert np.abs(mean - (y - y.mean()) / y.std()).max() < 0.05
    line_mean, _ = gp.line(x[:1], 1)
    full_mean, _ = gp.predict(np.array([[x[0, 0], level] for level in range(1024)]))
    np.testing.assert_allclose(line_mean[0], full_mean, atol=1e-9)


def test_a_deterministic_objective_caps_the_noise_so_one_sample_steps_on_a_plateau_stay_visible() -> None:
    rng = np.random.default_rng(0)
    coords = [np.linspace(0.0, 1.0, 128), np.linspace(0.0, 1.0, 128)]
    x = rng.integers(0, 128, size=(30, 2))
    # a cliff and a plateau whose values differ by one validation sample (a cross-validated accuracy)
    y = np.where(x[:, 0] / 127.0 < 0.2, -3.0, 0.0) + 0.05 * rng.integers(0, 3, size=30)
    z = (y - y.mean()) / y.std()
    free = GridGP(coords, [128, 128], np.random.default_rng(0)).fit(x, z)
    exact = GridGP(coords, [128, 128], np.random.default_rng(0), max_noise=1e-4).fit(x, z)
    assert free.noise > 3e-4  # the free fit explains the steps as noise
    assert exact.noise <= 1e-4 * (1 + 1e-9)
    free_err = np.abs(free.predict(x)[0] - z).max()
    exact_err = np.abs(exact.predict(x)[0] - z).max()
    assert exact_err < 0.01 < free_err


def test_deterministic_objective_sets_the_noise_cap_and_bad_values_name_the_fix() -> None:
    sampler = TetraOptSampler(seed=0, deterministic_objective=True)
    assert sampler._optimizer_kwargs["max_noise"] == 1e-4
    # an explicit option wins
    assert TetraOptSampler(seed=0, deterministic_objective=True,
                           optimizer_kwargs={"max_noise": 1e-3})._optimizer_kwargs["max_noise"] == 1e-3
    with pytest.raises(ValueError, match="deterministic_objective"):
        TetraOptSampler(deterministic_objective="yes")  # type: ignore[arg-type]
    space = {"x": Float(0.0, 1.0)}
    with pytest.raises(ValueError, match="max_noise.*1e-4"):
        minimize(lambda p: p["x"], space, budget=10, max_noise=2.0)
    res = minimize(lambda p: (p["x"] - 0.3) ** 2, space, budget=12, seed=0, max_noise=1e-4)
    assert res.best_value < 1e-3


def _rotated_ellipsoid(seed: int, condition: float = 1e4):
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    scales = condition ** (np.arange(3) / 2)
    center = rng.uniform(-3.0, 3.0, 3)
    return lambda p: float(scales @ (rotation @ (np.array([p["a"], p["b"], p["c"]]) - center)) ** 2)


def test_a_rotated_ill_conditioned_bowl_is_searched_along_its_valley() -> None:
    # BBOB's f10 in miniature: the previous defaults (Yeo-Johnson warping, which makes the bowl a log funnel, only
    # axis-subset perturbations, which cannot move along a diagonal valley, a free noise level) end ~3x further away
    space = {k: Float(-5.0, 5.0) for k in "abc"}

    def geometric_mean_best(**options: object) -> float:
        best = [minimize(_rotated_ellipsoid(s), space, budget=40, seed=s, **options).best_value for s in range(4)]
        return float(np.exp(np.mean(np.log(best))))

    new = geometric_mean_best()
    old = geometric_mean_best(transform="yj", gauss_candidates=0, max_noise=1.0)
    assert new < 80.0
    assert old > 2.5 * new


def test_clipped_scores_keep_good_values_evenly_spaced_and_bound_a_diverged_run() -> None:
    from tetra_lightning.optim.smooth import warp_scores

    y = -np.array([1e9, 4.0, 3.0, 2.0, 1.0])  # larger is better: one diverged run and an even staircase
    clip, yj = warp_scores(y, "clip"), warp_scores(y, "yj")
    np.testing.assert_allclose(np.diff(clip[1:]), np.diff(clip[1:])[0])  # a bowl stays a bowl
    assert np.ptp(np.diff(yj[1:])) > 0.05  # the power transform bends it
    assert clip[0] > clip[1] - 10.0  # the diverged run is clipped, not 1e9 away
    with pytest.raises(ValueError, match="transform.*clip"):
        minimize(lambda p: p["a"], {"a": Float(0.0, 1.0)}, budget=8, transform="log")
    with pytest.raises(ValueError, match="gauss_candidates"):
        minimize(lambda p: p["a"], {"a": Float(0.0, 1.0)}, budget=8, gauss_candidates=-1)
