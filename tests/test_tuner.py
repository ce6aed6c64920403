"""TetraOptTuner end to end on a tiny MLP: search quality, failures, NaN, pruning, loggers, bad inputs."""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from torch import nn

from tests.helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner import TetraOptTuner, TrialPruningCallback, TuneResult, run_trial

SPACE = {"lr": Float(1e-3, 1.0, log=True, grid=8), "width": Categorical([4, 16, 64]), "depth": Int(1, 2)}


class CountFits(Callback):
    def __init__(self) -> None:
        self.fits = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fits += 1


def _tuner(tmp_path, **kwargs) -> TetraOptTuner:
    defaults = {
        "monitor": "val_acc", "mode": "max", "budget": 3, "storage": f"sqlite:///{tmp_path / 'tune.db'}",
        "study_name": "test", "progress_bar": False,
    }
    defaults.update(kwargs)
    return TetraOptTuner(defaults.pop("search_space", SPACE), **defaults)


def test_fit_finds_a_config_better_than_the_median_and_logs_each_trial(tmp_path, caplog):
    callback = CountFits()
    trainer_kwargs = dict(FAST_TRAINER, logger=CSVLogger(tmp_path / "logs", name="cnn"), callbacks=[callback])
    tuner = _tuner(tmp_path, budget=8, progress_bar=True)
    with caplog.at_level(logging.INFO, logger="tetra_lightning"):
        result = tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=trainer_kwargs)

    values = result.trials["value"].to_numpy(dtype=float)
    assert len(values) == 8 and (result.trials["state"] == "COMPLETE").all()
    assert result.best_value == pytest.approx(values.max())
    assert result.best_value > np.median(values) + 0.1
    assert result.best_value > 0.4
    assert result.best_params["lr"] > 0.1  # the good region of this objective: large SGD steps
    assert set(result.best_params) == {"lr", "width", "depth"}
    assert len({tuple(p) for p in result.trials[["params_lr", "params_width", "params_depth"]].to_numpy()}) == 8
    # one log line per trial, on the "tetra_lightning" logger tree
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Trial ")]
    assert len(lines) == 8 and all("COMPLETE val_acc=" in line for line in lines)
    # callbacks were deep-copied per trial (the user's instance never ran), loggers rebuilt per trial
    assert callback.fits == 0
    assert sorted(p.name for p in (tmp_path / "logs" / "cnn").iterdir()) == [f"trial-{i}" for i in range(8)]
    # history and importance plot
    png = result.plot(tmp_path / "plots" / "tune.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    importances = result.param_importances()
    assert set(importances) == {"lr", "width", "depth"} and sum(importances.values()) == pytest.approx(1.0)
    assert max(importances, key=importances.get) == "lr"
    # the budget is reached: a second fit runs nothing
    again = tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert len(again.trials) == 8


def test_a_failing_trial_is_recorded_with_its_traceback_and_the_study_goes_on(tmp_path):
    calls = []

    def model_fn(cfg):
        calls.append(cfg)
        return TinyMLP(**cfg, fail=len(calls) == 1)

    result = _tuner(tmp_path, budget=2).fit(model_fn, DigitsData(), trainer_kwargs=FAST_TRAINER)
    states = list(result.trials["state"])
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    failed = result.trials.iloc[0]
    assert failed["user_attrs_fail_reason"] == "RuntimeError: this config always crashes"
    assert "Traceback" in failed["user_attrs_traceback"] and "training_step" in failed["user_attrs_traceback"]
    assert math.isfinite(result.best_value)


def test_a_nan_loss_fails_the_trial_at_its_first_batch(tmp_path):
    calls = []

    def model_fn(cfg):
        calls.append(cfg)
        return TinyMLP(**cfg, nan=len(calls) == 1)

    result = _tuner(tmp_path, budget=1).fit(model_fn, DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert list(result.trials["state"]) == ["FAIL", "COMPLETE"]
    assert result.trials.iloc[0]["user_attrs_fail_reason"] == "training loss became nan at epoch 0, batch 0"


def test_catch_empty_fails_fast_and_records_the_trial(tmp_path):
    tuner = _tuner(tmp_path, budget=3, catch=())
    with pytest.raises(RuntimeError, match="always crashes"):
        tuner.fit(lambda cfg: TinyMLP(**cfg, fail=True), DigitsData(), trainer_kwargs=FAST_TRAINER)
    study = tuner.load_study()
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert "RuntimeError" in study.trials[0].user_attrs["traceback"]


class LogsValAccForDepthOne(TinyMLP):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        if len(self.net) == 3:  # depth 1
            self.log("val_acc", (logits.argmax(-1) == y).float().mean())


def test_unknown_monitor_fails_the_trial_listing_the_keys_and_failures_are_capped(tmp_path):
    tuner = _tuner(tmp_path, monitor="val_accuracy", budget=5, max_failures=2)
    # no trial of the study has finished: the monitor is wrong, not the config, so the first trial stops the tuner
    with pytest.raises(MisconfigurationException, match="monitor 'val_accuracy' is not in"):
        tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)
    result = TuneResult.from_study(tuner.load_study(), "val_accuracy", "max")
    assert list(result.trials["state"]) == ["FAIL"]
    reason = result.trials.iloc[0]["user_attrs_fail_reason"]
    assert "monitor 'val_accuracy' is not in trainer.callback_metrics" in reason
    assert "['train_loss', 'val_acc', 'val_loss']" in reason
    # an always-failing objective stops after max_failures
    crashing = _tuner(tmp_path, study_name="crash", budget=5, max_failures=2)
    result = crashing.fit(lambda cfg: TinyMLP(**cfg, fail=True), DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert list(result.trials["state"]) == ["FAIL", "FAIL"]
    with pytest.raises(ValueError, match=r"No trial of study 'crash' completed \(2 failed\)"):
        _ = result.best_params
    # once a trial has finished, a config that does not log the monitor is one failed config: the study goes on
    partial = _tuner(tmp_path, study_name="partial", max_failures=1, search_space={"depth": Int(1, 2)})
    partial.load_study().enqueue_trial({"depth": 1})
    result = partial.fit(lambda cfg: LogsValAccForDepthOne(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert list(result.trials["state"]) == ["COMPLETE", "FAIL"] and result.best_params == {"depth": 1}


def test_objective_best_takes_the_best_epoch_and_last_the_last():
    kwargs = dict(FAST_TRAINER, max_epochs=3)
    config = {"lr": 0.5, "width": 16, "depth": 1}
    common = {"model_fn": lambda cfg: TinyMLP(**cfg), "monitor": "val_loss", "mode": "min",
              "datamodule": DigitsData(), "trainer_kwargs": kwargs}
    best = run_trial(config, objective="best", **common)
    last = run_trial(config, objective="last", **common)
    assert best.status == last.status == "complete"
    assert sorted(best.epoch_values) == [0, 1, 2]
    assert best.value == pytest.approx(min(best.epoch_values.values()))
    assert last.value == pytest.approx(last.epoch_values[2])


def test_datamodule_fn_and_trainer_fn_let_the_config_address_data_and_trainer(tmp_path):
    space = {"lr": Categorical([0.5]), "batch_size": Categorical([16, 128]), "epochs": Int(1, 2)}
    models = []

    def model_fn(cfg):
        models.append((cfg, TinyMLP(lr=cfg["lr"])))
        return models[-1][1]

    kwargs = dict(FAST_TRAINER)
    kwargs.pop("max_epochs")
    result = _tuner(tmp_path, search_space=space, budget=2).fit(
        model_fn,
        datamodule_fn=lambda cfg: DigitsData(batch_size=cfg["batch_size"]),
        trainer_fn=lambda cfg: {"max_epochs": cfg["epochs"]},
        trainer_kwargs=kwargs,
    )
    assert result.n_complete == 2
    for cfg, model in models:
        assert model.trainer.max_epochs == cfg["epochs"]
        assert model.trainer.current_epoch == cfg["epochs"]
        assert model.trainer.datamodule.batch_size == cfg["batch_size"]


def test_pruning_callback_stops_a_trial_worse_than_the_median(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(0, 0))
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.5}, distributions={"lr": CategoricalDistribution([0.5, 1e-4])}, value=0.9,
            intermediate_values={0: 0.8, 1: 0.85, 2: 0.9, 3: 0.9}))
    trial = study.ask({"lr": CategoricalDistribution([0.5, 1e-4])})
    callback = TrialPruningCallback(trial, monitor="val_acc")
    trainer = Trainer(**dict(FAST_TRAINER, max_epochs=4, num_sanity_val_steps=1, callbacks=[callback]))
    trainer.fit(TinyMLP(lr=1e-4), DigitsData())
    assert callback.pruned and callback.pruned_epoch == 0
    assert trainer.current_epoch == 1  # stopped after the first epoch instead of running 4
    assert list(callback.reported) == [0]  # the sanity check was not reported
    assert callback.state_dict()["pruned"] is True
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0"):
        callback.check_pruned()


def test_tuner_with_pruning_records_pruned_trials_with_their_last_value(tmp_path):
    tuner = _tuner(tmp_path, search_space={"lr": Categorical([1e-4, 2e-4, 3e-4])}, budget=3, pruning=True,
                   n_warmup_trials=1, n_warmup_epochs=0)
    study = tuner.load_study()
    study.add_trial(optuna.trial.create_trial(  # an earlier, good trial sets the median
        params={"lr": 3e-4}, distributions=dict(tuner.distributions), value=0.9, intermediate_values={0: 0.8, 1: 0.9}))
    result = tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)
    pruned = result.trials[result.trials["state"] == "PRUNED"]
    assert len(pruned) == 2 and len(result.trials) == 3  # pruned trials count towards the budget
    for number in pruned["number"]:
        trial = result.study.trials[number]
        assert list(trial.intermediate_values) == [0]
        assert trial.value == pytest.approx(trial.intermediate_values[0]) and trial.value < 0.8


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="`search_space` is empty"):
        TetraOptTuner({}, monitor="val_acc")
    with pytest.raises(ValueError, match=r"`budget` must be >= 1, got 0"):
        TetraOptTuner(SPACE, monitor="val_acc", budget=0)
    with pytest.raises(TypeError, match="`budget` must be an int"):
        TetraOptTuner(SPACE, monitor="val_acc", budget=2.5)
    with pytest.raises(ValueError, match="`mode` must be 'max' or 'min', got 'maximize'"):
        TetraOptTuner(SPACE, monitor="val_acc", mode="maximize")
    with pytest.raises(ValueError, match="`objective` must be 'best' or 'last'"):
        TetraOptTuner(SPACE, monitor="val_acc", objective="mean")
    with pytest.raises(TypeError, match="Categorical, Int or Float"):
        TetraOptTuner({"lr": "1e-3"}, monitor="val_acc")
    with pytest.raises(TypeError, match="Categorical choices must be None, bool, int, float or str"):
        TetraOptTuner({"act": Categorical([torch.nn.ReLU, torch.nn.GELU])}, monitor="val_acc")
    with pytest.raises(ValueError, match="needs a storage on disk"):
        TetraOptTuner(SPACE, monitor="val_acc", n_jobs=2, storage="sqlite:///:memory:")
    tuner = _tuner(tmp_path, budget=2)
    with pytest.raises(TypeError, match="must return a lightning.pytorch.LightningModule, got Linear"):
        tuner.fit(lambda cfg: torch.nn.Linear(2, 2), DigitsData(), trainer_kwargs=FAST_TRAINER)
    assert tuner.load_study().trials[0].state == TrialState.FAIL
    with pytest.raises(TypeError, match="`model_fn` must be a callable"):
        tuner.fit("TinyMLP", DigitsData())
    with pytest.raises(ValueError, match="either `datamodule` or `datamodule_fn`"):
        tuner.fit(lambda cfg: TinyMLP(), DigitsData(), datamodule_fn=lambda cfg: DigitsData())
    other = _tuner(tmp_path, mode="min", budget=2)
    with pytest.raises(ValueError, match="created with direction maximize"):
        other.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=FAST_TRAINER)


def test_tune_result_from_a_hand_made_study():
    study = optuna.create_study(direction="minimize")
    dist = {"x": CategoricalDistribution([1, 2, 3])}
    for x, value in [(1, 3.0), (2, 1.0), (3, 2.0)]:
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value))
    result = TuneResult.from_study(study, "val_loss", "min")
    assert result.best_params == {"x": 2} and result.best_value == 1.0
    np.testing.assert_allclose(result.best_so_far(), [3.0, 1.0, 1.0])


def test_result_leaves_out_surplus_claims_but_keeps_real_failures() -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from tetra_lightning.tuner.result import TuneResult
    from tetra_lightning.tuner.storage import FAIL_REASON_KEY

    study = optuna.create_study(direction="maximize")
    x = {"x": FloatDistribution(0, 1)}
    study.add_trial(create_trial(params={"x": 0.1}, distributions=x, value=0.5))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={FAIL_REASON_KEY: "surplus: budget used"}))
    study.add_trial(create_trial(params={"x": 0.2}, distributions=x, state=TrialState.FAIL,
                                 user_attrs={FAIL_REASON_KEY: "RuntimeError: boom"}))
    study.add_trial(create_trial(params={"x": 0.3}, distributions=x, value=0.7))
    result = TuneResult.from_study(study, "val_acc", "max")
    assert list(result.trials["number"]) == [0, 2, 3]
    assert [t.number for t in result.failures()] == [2]
    assert list(result.best_so_far()) == [0.5, 0.5, 0.7]
    assert result.best_value == 0.7
