"""The main job (`make demo`) end to end with --quick: tune, compress, prune, quantize, report, plot, W&B."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers.shared_data import CIFAR_PACKED
from tetra_lightning.callbacks import TensorCompressionCallback
from tetra_lightning.data import DigitsDataModule
from tetra_lightning.demo import (
    STAGES,
    DigitsCNN,
    HeldOutDigitsDataModule,
    Recipe,
    StageSnapshots,
    main,
    run_demo,
    wandb_mode,
)
from tetra_lightning.report import count_parameters

PACKED = CIFAR_PACKED
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_stages(report: dict, target_ratio: float) -> dict[str, dict]:
    """The numbers every demo report must satisfy, whatever the data; returns the stages by name."""
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == list(STAGES)
    dense, compressed, pruned, int8 = (stages[name] for name in STAGES)
    # factorizing reaches the whole-model target within 10%, and cuts MACs too
    assert dense["params"] / compressed["params"] == pytest.approx(target_ratio, rel=0.10)
    assert compressed["macs"] < dense["macs"]
    # pruning 30% of the channels (inner ranks included) removes parameters and MACs of the compressed network
    assert pruned["params"] < 0.8 * compressed["params"]
    assert pruned["macs"] < compressed["macs"]
    # int8 stores the pruned network's weights in a byte each: at least 3x smaller than its float32 bytes
    assert int8["bytes"] * 3 <= pruned["bytes"]
    assert int8["params"] == pruned["params"] and int8["macs"] == pruned["macs"]
    # quantizing costs at most a few points of accuracy
    assert int8["test_acc"] >= pruned["test_acc"] - 0.05
    for row in stages.values():
        assert row["latency_ms"] > 0 and row["bytes"] > 0
    assert report["ratios"]["int8"]["bytes_ratio"] == pytest.approx(dense["bytes"] / int8["bytes"])
    assert [row["epoch"] for row in report["stages"]] == [
        report["settings"]["recipe"][key] for key in ("compress_epoch", "prune_epoch", "epochs", "epochs")
    ]
    return stages


def read_table(run_dir: Path, key: str) -> dict:
    (path,) = sorted(run_dir.glob(f"files/media/table/{key}_*.table.json"))
    return json.loads(path.read_text())


def test_quick_demo_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pytest.importorskip("wandb")
    from tests.test_wandb_logging import read_wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    report = main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert torch.get_num_threads() == threads  # the demo's one training thread is restored

    out = capsys.readouterr().out
    assert "test acc" in out and "int8" in out and "done in" in out
    assert json.loads((tmp_path / "report.json").read_text())["stages"] == json.loads(
        json.dumps(report["stages"])
    )

    stages = check_stages(report, target_ratio=3.0)
    # digits are easy: every stage is far above chance (10%) after three quick epochs
    for row in stages.values():
        assert row["test_acc"] > 0.6, row
    # measured on the 359 held-out test images: every accuracy is a multiple of 1/359
    for row in stages.values():
        assert row["test_acc"] * 359 == pytest.approx(round(row["test_acc"] * 359), abs=1e-6)

    tuning = report["tuning"]
    assert tuning["n_trials"] == tuning["n_complete"] == 3
    assert tuning["best_value"] == max(trial["value"] for trial in tuning["trials"])
    assert 0.1 < tuning["best_value"] <= 1.0
    assert (tmp_path / "tune.db").stat().st_size > 0

    png = tmp_path / "accuracy_vs_size.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("\n| ") == 1 + len(STAGES)  # header + one row per stage
    assert f"| int8 | {report['settings']['recipe']['epochs']} | {100 * stages['int8']['test_acc']:.2f}% |" in markdown

    # The offline W&B run holds the trials table, both callbacks' per-layer tables, the stage table and the plot.
    run_dir = Path(report["files"]["wandb_run"])
    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    trials = read_table(run_dir, "tuning/trials")
    assert len(trials["data"]) == 3 and "params_width" in trials["columns"]
    value = trials["columns"].index("value")
    assert max(row[value] for row in trials["data"]) == pytest.approx(tuning["best_value"])
    table = read_table(run_dir, "report/stages")
    assert [row[0] for row in table["data"]] == list(STAGES)
    acc = table["columns"].index("test_acc")
    assert [row[acc] for row in table["data"]] == pytest.approx([stages[name]["test_acc"] for name in STAGES])
    layers = read_table(run_dir, "compression/layers")
    assert len(layers["data"]) == len(report["layers"]["compression"]) > 0
    assert len(read_table(run_dir, "pruning/layers")["data"]) == len(report["layers"]["pruning"]) > 0
    (image,) = run_dir.glob("files/media/images/report/accuracy_vs_size_*.png")
    assert image.read_bytes()[:8] == PNG_MAGIC

    history, summary = read_wandb_run(run_dir)
    logged = {key for row in history for key in row}
    assert {"compression/layers", "pruning/layers", "val_acc"} <= logged
    assert any("compression/ratio" in row for row in history)
    # The records of the last wandb.log calls and the final summary can still be in flight when an offline run
    # closes (see test_wandb_logging); their files above are written at logging time. Check what arrived.
    rows = [row for row in history if "report/stages" in row]
    for row in rows:
        assert row["report/stages"]["_type"] == "table-file" and row["report/stages"]["nrows"] == len(STAGES)
    if "report/int8/bytes" in summary:
        assert summary["report/int8/bytes"] == stages["int8"]["bytes"]
        assert summary["report/dense/test_acc"] == pytest.approx(stages["dense"]["test_acc"])


@pytest.mark.skipif(not PACKED.is_file(), reason=f"shared CIFAR-10 not found at {PACKED} (set TETRA_DATA_DIR)")
def test_quick_demo_on_cifar10(tmp_path: Path) -> None:
    report = run_demo(data="cifar10", data_dir=PACKED.parent, out_dir=tmp_path, quick=True, use_wandb=False,
                      progress=False)
    stages = check_stages(report, target_ratio=3.0)
    assert report["tuning"]["n_complete"] == 2
    assert report["tuning"]["best_params"]["width"] in (0.125, 0.1875)
    # 60 steps of a narrow ResNet-18 learn something: the best stage is above chance (10%) by over 3 standard
    # errors on the 500 class-balanced test images (every 20th of the sorted test set)
    assert max(row["test_acc"] for row in stages.values()) > 0.15
    assert (tmp_path / "accuracy_vs_size.png").read_bytes()[:8] == PNG_MAGIC
    assert "wandb_run" not in report["files"]


def test_held_out_digits_split_is_fixed_and_disjoint() -> None:
    dm = HeldOutDigitsDataModule(batch_size=32)
    dm.setup("fit")
    assert (dm.num_train, dm.num_val, dm.num_test) == (1150, 288, 359)
    other = HeldOutDigitsDataModule(batch_size=128, val_fraction=0.3)
    other.setup("fit")
    # the test split depends only on the seed: the same images whatever the batch size and validation fraction
    x_test, y_test = dm._splits["test"]
    assert torch.equal(other._splits["test"][1], y_test)
    # normalised with the train split's statistics, which differ between the two; compare the pixel order instead
    assert torch.equal(other._splits["test"][0].flatten(1).argsort(1), x_test.flatten(1).argsort(1))
    test_batches = list(dm.test_dataloader())
    assert sum(len(y) for _, y in test_batches) == 359
    assert torch.equal(torch.cat([y for _, y in test_batches]), y_test)
    # no test image is also a training image (the 1797 digits have no duplicate images)
    train_rows = {tuple(row.tolist()) for row in dm._splits["train"][0].flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in x_test.flatten(1))


def test_stage_snapshots_keep_the_dense_network_before_the_rewrite() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    dense_params = count_parameters(model.net)
    snapshots = StageSnapshots({"dense": 1})
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[snapshots, compression],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    copy = snapshots.models["dense"]
    assert snapshots.epochs_taken == {"dense": 1}
    assert count_parameters(copy) == dense_params
    assert dense_params / count_parameters(model.net) == pytest.approx(3.0, rel=0.10)
    assert not copy.training and copy is not model.net
    # the stem conv stays dense (too small to factorize) and kept training after the copy: the weights differ
    assert copy[0].weight.shape == model.net[0].weight.shape
    assert not torch.equal(copy[0].weight, model.net[0].weight)


def test_digits_cnn_parameter_count() -> None:
    model = DigitsCNN(width=8)
    convs = 1 * 8 * 9 + 8 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9
    bns = 2 * (8 + 16 + 32 + 32)
    assert sum(p.numel() for p in model.parameters()) == convs + bns + 32 * 10 + 10


def test_recipes_fit_in_their_epochs() -> None:
    for data in ("digits", "cifar10"):
        for quick in (False, True):
            recipe = Recipe.for_data(data, quick=quick)
            assert 0 < recipe.compress_epoch < recipe.prune_epoch < recipe.epochs
    assert Recipe.for_data("digits").trials == 16


def test_wandb_mode_reads_the_environment() -> None:
    assert wandb_mode({"WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode({"WANDB_MODE": "dryrun"}) == "offline"
    assert wandb_mode({"WANDB_MODE": "online"}) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled"}) == "disabled"


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: run_demo(data="mnist"), ValueError, r"`data` must be one of 'digits', 'cifar10', got 'mnist'"),
        (lambda: run_demo(trials=0), ValueError, r"`trials` must be an int >= 1, got 0"),
        (lambda: run_demo(threads=0), ValueError, r"`threads` must be None or an int >= 1, got 0"),
        (lambda: Recipe(trials=4, trial_epochs=1, epochs=5, compress_epoch=3, prune_epoch=2), ValueError,
         r"0 < compress_epoch < prune_epoch < epochs, got compress_epoch=3, prune_epoch=2"),
        (lambda: Recipe(trials=0, trial_epochs=1, epochs=5, compress_epoch=1, prune_epoch=2), ValueError,
         r"`trials` and `trial_epochs` must be >= 1"),
        (lambda: Recipe(trials=1, trial_epochs=1, epochs=5, compress_epoch=1, prune_epoch=2, test_stride=0),
         ValueError, r"`test_stride` must be >= 1, got 0"),
        (lambda: StageSnapshots({"dense": -1}), ValueError, r"`epochs\['dense'\]` must be an int >= 0"),
        (lambda: HeldOutDigitsDataModule(test_fraction=1.5), ValueError, r"`test_fraction` must be in \(0, 1\)"),
    ],
)
def test_errors_name_the_argument(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


def test_cli_rejects_a_data_dir_for_digits(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--data-dir", "/somewhere"])
    assert "--data-dir is for --data cifar10" in capsys.readouterr().err
