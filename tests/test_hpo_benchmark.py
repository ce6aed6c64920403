"""benchmarks/hpo.py: a tiny run end to end, Bayesmark's normalization on hand-made curves, the problems."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from benchmarks import hpo
from benchmarks.hpo_problems import (
    BBOBObjective,
    get_problem,
    problem_names,
    suggest_bayesmark,
)


def _runs(label: str, curves: list[list[float]], method: str | None = None) -> list[dict]:
    return [{"label": label, "method": method or label, "seed": seed, "values": curve,
             "best": list(np.minimum.accumulate(curve))} for seed, curve in enumerate(curves)]


def test_normalized_scores_match_bayesmark_formula_by_hand() -> None:
    # random: best-so-far [10, 8] and [6, 4] -> R(t) = [8, 6]; best value ever seen: 2 (method "a" at t=2)
    runs = _runs("random", [[10.0, 8.0], [6.0, 4.0]]) + _runs("a", [[5.0, 2.0], [30.0, 40.0]])
    scores = hpo.normalized_scores(runs, "minimize", checkpoints=[1, 2])
    np.testing.assert_allclose(scores["random"], [[-2 / 6, -2 / 4], [2 / 6, 2 / 4]])
    # (R - b) / (R - best): 3/6 at t=1, 4/4 = 1 (it holds the best ever) at t=2; the second run is clipped at -1
    np.testing.assert_allclose(scores["a"], [[0.5, 1.0], [-1.0, -1.0]])
    assert scores["random"].mean(axis=0) == pytest.approx([0.0, 0.0])


def test_normalized_scores_mirror_for_maximization() -> None:
    runs = _runs("random", [[-10.0, -8.0], [-6.0, -4.0]]) + _runs("a", [[-5.0, -2.0], [-30.0, -40.0]])
    for run in runs:  # the same problem, maximized: best so far is the running max of the values
        run["best"] = list(np.maximum.accumulate(run["values"]))
    minimized = hpo.normalized_scores(
        _runs("random", [[10.0, 8.0], [6.0, 4.0]]) + _runs("a", [[5.0, 2.0], [30.0, 40.0]]), "minimize", [1, 2])
    maximized = hpo.normalized_scores(runs, "maximize", [1, 2])
    for label in ("random", "a"):
        np.testing.assert_allclose(maximized[label], minimized[label])


def test_normalized_scores_where_random_search_already_holds_the_best_value() -> None:
    runs = _runs("random", [[1.0], [1.0]]) + _runs("a", [[1.0], [3.0]])
    scores = hpo.normalized_scores(runs, "minimize", [1])
    np.testing.assert_allclose(scores["a"], [[0.0], [-1.0]])  # as good as random: 0; worse: -1
    np.testing.assert_allclose(scores["random"], [[0.0], [0.0]])


def test_normalized_scores_needs_random_runs_and_a_long_enough_budget() -> None:
    with pytest.raises(ValueError, match="no 'random' runs"):
        hpo.normalized_scores(_runs("a", [[1.0, 0.5]]), "minimize", [1])
    with pytest.raises(ValueError, match="checkpoint 3 is beyond the budget 2"):
        hpo.normalized_scores(_runs("random", [[1.0, 0.5]]), "minimize", [3])


def test_tiny_run_end_to_end(tmp_path) -> None:
    out = tmp_path / "hpo.json"
    results = hpo.main(["--problems", "DT-breast-acc,bbob-f1-sphere-5d", "--methods", "tpe,tpe_mv,random",
                        "--seeds", "2", "--budget", "6", "--overhead-trials", "4", "--overhead-methods", "random",
                        "--out", str(out), "--quiet"])
    saved = json.loads(out.read_text())
    assert saved["meta"]["budget"] == 6 and saved["summary"]["checkpoints"] == [6]
    assert {(r["problem"], r["label"], r["seed"]) for r in saved["runs"]} == {
        (p, m, s) for p in ("DT-breast-acc", "bbob-f1-sphere-5d") for m in ("tpe", "tpe_mv", "random")
        for s in (0, 1)}
    # in Optuna >= 5 TPESampler() is multivariate: on these unconditional spaces tpe_mv's runs are tpe's
    copied = [r for r in saved["runs"] if r["label"] == "tpe_mv"]
    assert all(r.get("same_as") == "tpe" for r in copied) == hpo.tpe_default_is_multivariate()
    for run in saved["runs"]:
        direction = saved["problems"][run["problem"]]["direction"]
        pick = min if direction == "minimize" else max
        assert len(run["values"]) == len(run["best"]) == 6 and run["failures"] == 0
        assert run["best"] == [pick(run["values"][: t + 1]) for t in range(6)]
        assert run["eval_s"] > 0 and run["sampler_s"] > 0 and run["wall_s"] >= run["eval_s"]
        assert 0 < run["eval_cpu_s"] < run["cpu_s"] and 0 < run["sampler_cpu_s"] <= run["overhead_cpu_s"]
    assert saved["problems"]["DT-breast-acc"]["direction"] == "maximize"
    assert 0.5 < max(r["best"][-1] for r in saved["runs"] if r["problem"] == "DT-breast-acc") <= 1.0
    summary = results["summary"]
    for name, problem in summary["problems"].items():
        # random search is the 0 of the scale; a run holding the best value ever seen scores 1
        assert problem["methods"]["random"]["score_mean"] == [pytest.approx(0.0, abs=1e-12)]
        assert all(v <= 1.0 for m in problem["methods"].values() for v in m["score_mean"])
        mine = [r for r in saved["runs"] if r["problem"] == name]
        scores = hpo.normalized_scores(mine, saved["problems"][name]["direction"], [6])
        by_run = {(label, seed): row[0] for label, rows in scores.items()
                  for seed, row in zip((0, 1), rows, strict=True)}
        holders = [(r["label"], r["seed"]) for r in mine if r["best"][-1] == problem["best_ever"]]
        reference = np.mean([r["best"][-1] for r in mine if r["label"] == "random"])
        assert holders and all(by_run[h] == (1.0 if reference != problem["best_ever"] else 0.0) for h in holders)
    assert summary["suite"]["random"]["score_mean"] == [pytest.approx(0.0, abs=1e-9)]
    assert summary["suite"]["tpe"]["problems"] == summary["suite"]["tpe_mv"]["problems"] == 2
    overhead = saved["overhead"]["random"]
    assert overhead["trials"] == 4 and len(overhead["ms_per_trial"]) == len(overhead["cpu_ms_per_trial"]) == 4
    assert saved["estimate"]["seeds"] == hpo.DEFAULT_SEEDS and saved["estimate"]["cpu_s"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "### DT-breast-acc" in markdown and "| random | 0.00 ± 0.00 |" in markdown

    # --merge replaces the (problem, label, seed) runs made now and keeps the others
    hpo.main(["--problems", "bbob-f1-sphere-5d", "--methods", "random", "--seeds", "2", "--first-seed", "1",
              "--budget", "6", "--overhead-trials", "0", "--out", str(out), "--merge", "--quiet"])
    merged = json.loads(out.read_text())
    sphere_random = [r for r in merged["runs"] if r["problem"] == "bbob-f1-sphere-5d" and r["label"] == "random"]
    assert len(merged["runs"]) == 13 and sorted(r["seed"] for r in sphere_random) == [0, 1, 2]
    assert next(r for r in sphere_random if r["seed"] == 1)["values"] == next(
        r for r in saved["runs"] if r["problem"] == "bbob-f1-sphere-5d" and r["label"] == "random"
        and r["seed"] == 1)["values"]  # seeded: the rerun of seed 1 repeats it exactly
    assert len(merged["meta"]["invocations"]) == 2
    with pytest.raises(SystemExit, match="has budget 6, not 7"):
        hpo.main(["--problems", "bbob-f1-sphere-5d", "--methods", "random", "--seeds", "1", "--budget", "7",
                  "--overhead-trials", "0", "--out", str(out), "--merge", "--quiet"])


def test_bad_arguments_name_what_is_allowed(tmp_path) -> None:
    with pytest.raises(SystemExit, match="unknown problem 'nope'; use a family"):
        hpo.main(["--problems", "nope", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['sobol'\]"):
        hpo.main(["--problems", "bbob", "--methods", "sobol", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="--tetra-kwargs must be a JSON object"):
        hpo.main(["--problems", "bbob", "--tetra-kwargs", "[1]", "--out", str(tmp_path / "x.json")])
    cnn = get_problem("CNN-digits-acc")
    with pytest.raises(ValueError, match="`method` must be one of"):
        hpo.method_settings("hyperopt", cnn, {})
    with pytest.raises(ValueError, match="'cmaes' does not apply to 'CNN-digits-acc'"):
        hpo.make_sampler("cmaes", 0, cnn, {})
    with pytest.raises(KeyError, match="unknown problem 'nope'; known problems: DT-breast-acc"):
        get_problem("nope")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_method_settings_per_space() -> None:
    cnn, dt = get_problem("CNN-digits-acc"), get_problem("DT-breast-acc")
    assert cnn.conditional and cnn.categorical and dt.continuous_only
    assert hpo.method_settings("cmaes", cnn, {}) is None
    assert hpo.method_settings("tpe_mv", cnn, {})["kwargs"] == {"multivariate": True, "group": True}
    assert hpo.method_settings("tpe_mv", dt, {})["kwargs"] == {"multivariate": True}
    assert hpo.method_settings("tpe_indep", dt, {})["kwargs"] == {"multivariate": False}
    assert hpo.same_sampler_as("tpe_mv", cnn) is None and hpo.same_sampler_as("tpe", dt) is None
    assert hpo.method_settings("gp", dt, {})["kwargs"] == {"deterministic_objective": True}
    sampler = hpo.make_sampler("gp", 3, dt)
    assert isinstance(sampler, optuna.samplers.GPSampler)
    # --tetra-kwargs reach TetraOptSampler's constructor (an unknown one is refused there)
    assert type(hpo.make_sampler("tetra", 0, dt, {})).__name__ == "TetraOptSampler"
    with pytest.raises(TypeError):
        hpo.make_sampler("tetra", 0, dt, {"no_such_option": 1})


def test_sampler_timer_counts_time_inside_the_sampler() -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    timer = hpo.SamplerTimer(sampler)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert study.sampler is sampler and timer.seconds > 0
    assert len(study.trials) == 3 and len({t.params["x"] for t in study.trials}) == 3


def test_bayesmark_spaces_map_logit_log_int_and_bool() -> None:
    space = {"split": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
             "C": {"type": "real", "space": "log", "range": (1e-2, 1e2)},
             "depth": {"type": "int", "space": "linear", "range": (1, 15)},
             "iters": {"type": "int", "space": "log", "range": (10, 5000)},
             "positive": {"type": "bool"}}
    trial = optuna.trial.FixedTrial({"split_logit": 0.0, "C": 3.0, "depth": 4, "iters": 100, "positive": True})
    assert suggest_bayesmark(trial, space) == {"split": 0.5, "C": 3.0, "depth": 4, "iters": 100, "positive": True}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest_bayesmark(trial, space)
    dists = trial.distributions
    assert dists["split_logit"].low == pytest.approx(math.log(0.01 / 0.99))
    assert dists["C"].log and dists["iters"].log and not dists["depth"].log
    assert isinstance(dists["positive"], optuna.distributions.CategoricalDistribution)


def test_problems_are_deterministic_and_families_are_balanced() -> None:
    assert len(problem_names("sklearn")) >= 6 and len(problem_names("lightning")) == 1
    assert len(problem_names("bbob")) == 8
    dt = get_problem("DT-breast-acc")
    params = {"max_depth": 3, "min_samples_split_logit": -2.0, "min_samples_leaf_logit": -3.0,
              "min_weight_fraction_leaf_logit": -3.0, "max_features_logit": 1.0, "min_impurity_decrease": 0.0}
    first = dt.objective(optuna.trial.FixedTrial(params))
    assert first == dt.objective(optuna.trial.FixedTrial(params)) and 0.85 < first <= 1.0
    bbob = BBOBObjective(1, 5)
    x = {f"x{i}": 0.5 * i - 1.0 for i in range(5)}
    assert bbob(optuna.trial.FixedTrial(x)) == bbob.evaluate(np.array(list(x.values())))
    assert bbob.evaluate(np.zeros(5)) != bbob.evaluate(np.ones(5))


@pytest.fixture()
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the benchmark's workers (and much faster on a shared CPU)
    yield
    torch.set_num_threads(threads)


def test_digits_cnn_trial_is_deterministic_and_momentum_is_conditional(one_thread) -> None:
    cnn = get_problem("CNN-digits-acc")
    adam = {"lr": 1e-2, "weight_decay": 1e-5, "dropout": 0.1, "width": 8, "batch_size": 32, "optimizer": "adam"}
    first = cnn.objective(optuna.trial.FixedTrial(adam))
    assert first == cnn.objective(optuna.trial.FixedTrial(adam)) and 0.3 < first <= 1.0
    sgd = dict(adam, optimizer="sgd", lr=0.1, momentum=0.9)
    assert cnn.objective(optuna.trial.FixedTrial(sgd)) != first  # momentum and the optimizer reach the Trainer
    with pytest.raises(ValueError, match="momentum"):  # an SGD trial suggests momentum
        cnn.objective(optuna.trial.FixedTrial(dict(adam, optimizer="sgd")))
