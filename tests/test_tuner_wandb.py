"""W&B: every trial is a run in the study's group, and a summary run holds the table of all trials."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.helpers.tuner_models import FAST_TRAINER, DigitsData, TinyMLP
from tetra_lightning.optim import Float
from tetra_lightning.tuner import TetraOptTuner

wandb = pytest.importorskip("wandb")


def test_wandb_offline_runs_hold_the_trials_table(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tuner = TetraOptTuner({"lr": Float(1e-3, 1.0, log=True, grid=8)}, monitor="val_acc", budget=2,
                          storage=f"sqlite:///{tmp_path / 't.db'}", study_name="wbstudy", progress_bar=False)
    logger = WandbLogger(project="tetra-test", save_dir=str(tmp_path), offline=True)
    result = tuner.fit(lambda cfg: TinyMLP(**cfg), DigitsData(), trainer_kwargs=dict(FAST_TRAINER, logger=logger))

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # trial-0, trial-1, the summary
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/trials_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["number", "value", "state", "params_lr"]
    assert [row[0] for row in table["data"]] == [0, 1]
    assert [row[1] for row in table["data"]] == pytest.approx(list(result.trials["value"]))
    trial_runs = [r for r in runs if not (r / "files" / "media").exists()]
    # the run folders sort by start second, then by a random id: two trials started in one second come in either
    # order, so match each run to its trial by the name it holds. wandb's service process writes the run file and
    # can land its records just after finish() returns on a loaded machine (as in test_wandb_logging): read until
    # a trial name is there, at most 20 s.
    names = []
    for run in trial_runs:
        deadline = time.monotonic() + 20.0
        record = next(run.glob("run-*.wandb")).read_bytes()
        while not re.search(rb"trial-\d+", record) and time.monotonic() < deadline:
            time.sleep(0.5)
            record = next(run.glob("run-*.wandb")).read_bytes()
        assert b"wbstudy" in record  # the group
        names.append(set(re.findall(rb"trial-\d+", record)))
    assert names in ([{b"trial-0"}, {b"trial-1"}], [{b"trial-1"}, {b"trial-0"}])
