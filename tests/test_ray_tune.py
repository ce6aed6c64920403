"""TetraOptSearch as a ray.tune Searcher, and TetraOptTuner(executor="ray"), on a local 2-CPU Ray instance."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is an optional extra: pip install 'tetra-lightning[ray]'")

import optuna  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from tests.helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP  # noqa: E402
from tetra_lightning.optim import Categorical, Float, Int, TetraOpt  # noqa: E402
from tetra_lightning.tuner import TetraOptTuner  # noqa: E402
from tetra_lightning.tuner.ray import TetraOptSearch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = {"x": Int(0, 9), "y": Int(0, 9)}
MLP_SPACE = {"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64]), "depth": Int(1, 2)}


def quadratic(config: dict) -> float:
    return -float((config["x"] - 7) ** 2 + (config["y"] - 2) ** 2)


def drive(search: TetraOptSearch, objective=quadratic, limit: int = 1000) -> list[dict]:
    """Plays Ray's role sequentially: suggest until FINISHED, completing each trial at once."""
    configs = []
    for number in range(limit):
        config = search.suggest(f"t{number}")
        if config == Searcher.FINISHED:
            break
        assert isinstance(config, dict)
        configs.append(config)
        search.on_trial_complete(f"t{number}", {"score": objective(config)})
    return configs


# ------------------------------------------------------------------ the searcher alone
def test_searcher_finds_the_optimum_within_its_budget_then_finishes() -> None:
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=30, seed=0)
    configs = drive(search)
    assert len(configs) == 30 and len({(c["x"], c["y"]) for c in configs}) == 30
    assert search.best_params == {"x": 7, "y": 2} and search.best_value == 0.0
    assert [h["value"] for h in search.history] == [quadratic(c) for c in configs]
    assert search.suggest("late") == Searcher.FINISHED
    # minimizing the negated objective walks the same path
    mirrored = TetraOptSearch(GRID, metric="score", mode="min", budget=30, seed=0)
    assert drive(mirrored, lambda c: -quadratic(c)) == configs


def test_batches_fill_the_free_slots_and_at_most_max_concurrent_trials_run(monkeypatch) -> None:
    sizes: list[int] = []
    ask = TetraOpt.ask

    def spy(self, n=1):
        sizes.append(n)
        return ask(self, n)

    monkeypatch.setattr(TetraOpt, "ask", spy)
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=10)
    assert search.set_max_concurrency(3) is True  # the searcher limits concurrency itself
    first = [search.suggest(f"t{i}") for i in range(5)]
    assert [isinstance(c, dict) for c in first] == [True, True, True, False, False]
    assert first[3] is None and sizes == [3]  # one batch of three points, then "wait"
    assert len({(c["x"], c["y"]) for c in first[:3]}) == 3
    search.on_trial_complete("t1", {"score": 1.0})
    fourth = search.suggest("t5")
    assert isinstance(fourth, dict) and sizes == [3, 1]  # one slot free: a batch of one
    assert search.suggest("t6") is None
    search.on_trial_complete("t0", {"score": 2.0})
    search.on_trial_complete("t2", {"score": 0.5})
    assert isinstance(search.suggest("t7"), dict) and isinstance(search.suggest("t8"), dict)
    assert sizes == [3, 1, 2] and search.n_suggested == 6


def test_failed_trials_are_told_as_failures_and_the_search_goes_on() -> None:
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=8, seed=1)
    results = [None, {"other": 1.0}, {"score": math.nan}, {"score": 3.0}]
    for number, result in enumerate(results):
        assert isinstance(search.suggest(f"t{number}"), dict)
        search.on_trial_complete(f"t{number}", result, error=number == 0)
    assert [h["state"] for h in search.history] == ["failed", "failed", "failed", "complete"]
    assert search.best_value == 3.0
    failed = {(h["params"]["x"], h["params"]["y"]) for h in search.history[:3]}
    rest = drive(search, lambda c: 0.0)
    assert len(rest) == 4  # failures use the budget by default: 8 - 4
    assert not failed & {(c["x"], c["y"]) for c in rest}  # a failed point is never proposed again
    search.on_trial_complete("unknown-trial", {"score": 99.0})  # ignored
    assert search.best_value == 3.0


def test_max_failures_hands_failed_slots_back_and_stops_after_that_many() -> None:
    calls = []

    def first_two_fail(config: dict) -> float:
        calls.append(config)
        return math.nan if len(calls) <= 2 else 1.0

    search = TetraOptSearch(GRID, metric="score", mode="max", budget=3, max_failures=4, seed=0)
    configs = drive(search, first_two_fail)
    assert [h["state"] for h in search.history] == ["failed", "failed", "complete", "complete", "complete"]
    assert len(configs) == 5  # the two failures handed their slots back
    always_failing = TetraOptSearch(GRID, metric="score", mode="max", budget=5, max_failures=2)
    assert len(drive(always_failing, lambda c: math.nan)) == 2
    # with max_failures a running trial may hand its slot back: the searcher waits instead of finishing
    waiting = TetraOptSearch(GRID, metric="score", mode="max", budget=1, max_failures=3)
    assert isinstance(waiting.suggest("a"), dict) and waiting.suggest("b") is None
    waiting.on_trial_complete("a", {"score": math.inf})
    assert isinstance(waiting.suggest("c"), dict)
    waiting.on_trial_complete("c", {"score": 1.0})
    assert waiting.suggest("d") == Searcher.FINISHED


def test_an_exhausted_grid_finishes_the_search() -> None:
    search = TetraOptSearch({"act": Categorical(["relu", "gelu"]), "depth": Int(1, 2)}, metric="score", mode="max")
    configs = drive(search, lambda c: float(c["depth"]))
    assert sorted((c["act"], c["depth"]) for c in configs) == [("gelu", 1), ("gelu", 2), ("relu", 1), ("relu", 2)]
    assert search.best_value == 2.0


def test_points_to_evaluate_run_first_count_in_the_budget_and_are_not_repeated() -> None:
    start = [{"x": 7, "y": 2}, {"x": 0, "y": 0}]
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=6, points_to_evaluate=start)
    search.set_max_concurrency(4)
    running = [search.suggest(f"t{i}") for i in range(4)]
    assert running[:2] == start and all(isinstance(c, dict) for c in running)
    keys = [(c["x"], c["y"]) for c in running]
    assert len(set(keys)) == 4
    for number, config in enumerate(running):
        search.on_trial_complete(f"t{number}", {"score": quadratic(config)})
    rest = drive(search)
    assert len(rest) == 2 and not {(c["x"], c["y"]) for c in rest} & set(keys)
    assert search.best_params == {"x": 7, "y": 2}


def test_save_and_restore_continue_the_same_search(tmp_path) -> None:
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=20, seed=3)
    search.set_max_concurrency(2)
    drive(search, limit=8)
    running = search.suggest("live")  # a trial running while the experiment is checkpointed
    assert isinstance(running, dict)
    path = tmp_path / "searcher.pkl"
    search.save(str(path))
    restored = TetraOptSearch()
    restored.restore(str(path))
    assert restored.history == search.history and restored.n_suggested == 9 and restored.budget == 20
    for copy in (search, restored):
        copy.on_trial_complete("live", {"score": quadratic(running)})
    assert drive(restored, limit=100) == drive(search, limit=100)  # same rng state, same proposals
    assert restored.n_suggested == 20 and restored.best_value == search.best_value
    (tmp_path / "other.pkl").write_bytes(b"\x80\x04N.")  # a pickled None
    with pytest.raises(ValueError, match="holds no TetraOptSearch state"):
        restored.restore(str(tmp_path / "other.pkl"))


def test_space_metric_and_mode_can_come_from_the_tuner() -> None:
    search = TetraOptSearch(budget=5)
    assert search.set_search_properties("score", "max", {"x": GRID["x"], "y": GRID["y"], "epochs": 3}) is True
    assert search.metric == "score" and search.mode == "max" and list(search.space) == ["x", "y"]
    assert set(drive(search)[0]) == {"x", "y"}  # constants stay in Ray's config, not in the searcher
    with pytest.raises(ValueError, match="created with metric='score' but TuneConfig passes metric='loss'"):
        search.set_search_properties("loss", None, {})
    with pytest.raises(ValueError, match="Define them in one place only"):
        search.set_search_properties(None, None, {"z": Int(0, 3)})
    with pytest.raises(TypeError, match=r"`param_space\['lr'\]` is a Ray Tune sampling domain"):
        TetraOptSearch(metric="s", mode="max").set_search_properties(None, None, {"lr": tune.uniform(0, 1)})


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"`space\['lr'\]` is a Ray Tune sampling domain.*"
                                        r"'lr': Float\(0.0001, 0.1, log=True\)"):
        TetraOptSearch({"lr": tune.loguniform(1e-4, 1e-1), "x": Int(0, 3)}, metric="s", mode="max")
    with pytest.raises(TypeError, match=r"'act': Categorical\(\['relu', 'gelu'\]\)"):
        TetraOptSearch({"act": tune.choice(["relu", "gelu"])})
    with pytest.raises(TypeError, match=r"'n': Int\(1, 7\)"):
        TetraOptSearch({"n": tune.randint(1, 8)})
    with pytest.raises(TypeError, match=r"grid_search.*'b': Categorical\(\[1, 2\]\)"):
        TetraOptSearch({"b": tune.grid_search([1, 2])})
    with pytest.raises(TypeError, match="must be Categorical, Int or Float"):
        TetraOptSearch({"x": 3})
    with pytest.raises(ValueError, match="`mode` must be 'max', 'min' or None, got 'maximize'"):
        TetraOptSearch(GRID, mode="maximize")
    with pytest.raises(ValueError, match="single objective"):
        TetraOptSearch(GRID, metric=["a", "b"])
    with pytest.raises(ValueError, match=r"`budget` must be >= 1, got 0"):
        TetraOptSearch(GRID, budget=0)
    with pytest.raises(ValueError, match=r"TetraOptSearch sets \['direction'\] of TetraOpt itself"):
        TetraOptSearch(GRID, direction="minimize")
    with pytest.raises(ValueError, match="unknown option"):
        TetraOptSearch(GRID, bogus=1)
    with pytest.raises(ValueError, match=r"`points_to_evaluate\[1\]` = \{'x': 12, 'y': 0\} is not a point"):
        TetraOptSearch(GRID, points_to_evaluate=[{"x": 1, "y": 1}, {"x": 12, "y": 0}])
    with pytest.raises(RuntimeError, match="has no search space"):
        TetraOptSearch(metric="s", mode="max").suggest("t")
    with pytest.raises(RuntimeError, match="has no mode"):
        TetraOptSearch(GRID, metric="s").suggest("t")


def test_ray_placeholder_tokens_are_still_rays() -> None:
    from ray.tune.impl.placeholder import _FunctionResolver, _RefResolver

    from tetra_lightning.tuner.ray import RAY_PLACEHOLDER_TOKENS

    assert RAY_PLACEHOLDER_TOKENS == (_RefResolver.TOKEN, _FunctionResolver.TOKEN)


def test_executor_argument_is_validated() -> None:
    with pytest.raises(ValueError, match="`executor` must be 'local' or 'ray', got 'dask'"):
        TetraOptTuner(MLP_SPACE, monitor="val_acc", executor="dask")
    with pytest.raises(ValueError, match="`pruning` is not supported with `executor='ray'`"):
        TetraOptTuner(MLP_SPACE, monitor="val_acc", executor="ray", pruning=True)
    tuner = TetraOptTuner(MLP_SPACE, monitor="val_acc", executor="ray", n_jobs=2, storage="sqlite:///:memory:")
    assert tuner.executor == "ray" and tuner.n_jobs == 2  # Ray's driver alone writes the study


def test_importing_the_package_does_not_import_ray() -> None:
    code = "import sys, tetra_lightning; tetra_lightning.TetraOptTuner; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ on a local Ray instance
@pytest.fixture(scope="module")
def local_ray():
    # workers import this module (pytest names it `test_ray_tune`) and tests.helpers by reference
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _objective(config: dict) -> None:
    tune.report({"score": quadratic(config) + config["bonus"]})


def test_ray_tune_tuner_runs_a_tetraopt_study_end_to_end(local_ray, tmp_path) -> None:
    search = TetraOptSearch(GRID, metric="score", mode="max", budget=12, seed=0)
    tuner = tune.Tuner(
        _objective,
        param_space={"bonus": 0.5},
        tune_config=tune.TuneConfig(search_alg=search, num_samples=-1, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name="quadratic", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 12 and not results.errors
    points = {(r.config["x"], r.config["y"]) for r in results}
    assert len(points) == 12 and all(r.config["bonus"] == 0.5 for r in results)
    best = results.get_best_result(metric="score", mode="max")
    assert best.metrics["score"] == search.best_value  # the searcher saw what the trials reported
    assert search.best_value - 0.5 >= -5.0  # within distance sqrt(5) of the optimum (7, 2) after 12 of 100 points
    # Ray checkpointed the searcher with the experiment: a fresh one resumes from that state
    restored = TetraOptSearch()
    restored.restore_from_dir(str(tmp_path / "quadratic"))
    assert len(restored.history) == 12 and restored.best_value == search.best_value
    assert restored.suggest("next") == Searcher.FINISHED
    # Tuner.restore resumes through that state: the budget is spent, so no trial is added
    resumed = tune.Tuner.restore(str(tmp_path / "quadratic"), trainable=_objective).fit()
    assert len(resumed) == 12 and not resumed.errors


def _mlp(cfg: dict) -> TinyMLP:
    return TinyMLP(**cfg)


def _mlp_or_crash(cfg: dict) -> TinyMLP:
    return TinyMLP(**cfg, fail=cfg["width"] == 4)


def test_tetraopt_tuner_on_ray_records_trials_fails_configs_resumes_and_reraises(local_ray, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'tune.db'}"

    def make(budget: int, **kwargs) -> TetraOptTuner:
        return TetraOptTuner(MLP_SPACE, monitor="val_acc", mode="max", budget=budget, storage=storage,
                             study_name="ray", n_jobs=2, executor="ray", progress_bar=False, **kwargs)

    result = make(4).fit(_mlp_or_crash, DigitsData(), trainer_kwargs=FAST_TRAINER)
    trials = result.trials
    complete = trials[trials["state"] == "COMPLETE"]
    failed = trials[trials["state"] == "FAIL"]
    # the balanced initial design covers every width among the first 3 points, so width 4 crashed at least once
    assert len(complete) == 4 and len(failed) >= 1
    assert (failed["params_width"] == 4).all() and (complete["params_width"] != 4).all()
    assert (failed["user_attrs_fail_reason"] == "RuntimeError: this config always crashes").all()
    assert failed["user_attrs_traceback"].str.contains("this config always crashes").all()
    assert result.best_value == pytest.approx(complete["value"].max()) and 0.1 < result.best_value <= 1.0
    params = trials[["params_lr", "params_width", "params_depth"]].to_numpy()
    assert len({tuple(p) for p in params}) == len(trials)  # no point ran twice
    assert sorted(trials["number"]) == list(range(len(trials)))
    # learning curves are stored as intermediate values, as on the local path
    first = result.study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert sorted(first.intermediate_values) == [0, 1]
    assert (tmp_path / "ray_results").is_dir()  # Ray's folders next to the SQLite study

    # resume: an enqueued config runs first, the study grows to the new budget
    study = optuna.load_study(study_name="ray", storage=storage)
    study.enqueue_trial({"lr": 1.0, "width": 64, "depth": 1})
    again = make(5).fit(_mlp_or_crash, DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert (again.trials["state"] == "COMPLETE").sum() == 5
    newest = again.trials.iloc[-1]
    assert (newest["params_lr"], newest["params_width"], newest["params_depth"]) == (1.0, 64, 1)
    assert newest["state"] == "COMPLETE" and not (again.trials["state"] == "WAITING").any()

    # a model_fn bug is not a failed config: the trial is recorded and the TypeError raised, as locally
    with pytest.raises(TypeError, match="must return a lightning.pytorch.LightningModule, got object"):
        make(6).fit(lambda cfg: object(), DigitsData(), trainer_kwargs=FAST_TRAINER)
    last = optuna.load_study(study_name="ray", storage=storage).trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["fail_reason"].startswith("TypeError: `model_fn")


def test_tetraopt_tuner_on_ray_stops_at_once_when_the_monitor_is_never_logged(local_ray, tmp_path) -> None:
    tuner = TetraOptTuner(MLP_SPACE, monitor="val_accuracy", mode="max", budget=4, n_jobs=1, executor="ray",
                          storage=f"sqlite:///{tmp_path / 'tune.db'}", study_name="ray", progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"monitor 'val_accuracy' is not in .*'val_acc'"):
        tuner.fit(_mlp, DigitsData(), trainer_kwargs=FAST_TRAINER)
    trials = optuna.load_study(study_name="ray", storage=f"sqlite:///{tmp_path / 'tune.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_example_ray_tune_lightning_quick(local_ray, tmp_path, capsys, monkeypatch) -> None:
    from tests.test_examples import load_example

    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    example = load_example("ray_tune_lightning")
    # loaded from its path, the example is no importable module: ship its functions to the workers by value
    ray.cloudpickle.register_pickle_by_value(example)
    results = example.main(["--quick", "--budget", "2", "--storage-path", str(tmp_path / "ray_results")])
    out = capsys.readouterr().out
    assert "2 trials, 0 errors" in out and "best val_acc" in out
    best = results.get_best_result(metric="val_acc", mode="max")
    assert 0.1 < best.metrics["val_acc"] <= 1.0
    assert os.path.isdir(tmp_path / "ray_results" / "tetra-digits")
