"""The callbacks' logging, read back: a W&B offline run (per-layer table + compression/* metrics) and CSVLogger."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger

from tests.helpers.boring import BoringConvModule
from tetra_lightning.callbacks import PruningCallback, TensorCompressionCallback

TARGET = 2.0
_BLOCK = 32768  # block size of the W&B run file
LAYER_COLUMNS = ["stage", "name", "method", "ranks", "params_before", "params_after", "rel_error"]


def fit(logger: Logger) -> tuple[TensorCompressionCallback, PruningCallback]:
    """Dense epoch 0, SVD to TARGET at epoch 1, 30% of the channels pruned at epoch 2."""
    torch.manual_seed(0)
    compression = TensorCompressionCallback(method="svd", target_ratio=TARGET, start_epoch=1, verbose=False)
    pruning = PruningCallback(pruning_ratio=0.3, start_epoch=2, verbose=False)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[compression, pruning],
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringConvModule(width=16, num_samples=128))
    assert compression.stages_done == 1 and pruning.stages_done == 1
    return compression, pruning


def check_numbers(metrics: dict[str, float], compression: TensorCompressionCallback) -> None:
    assert metrics["compression/params_after"] < metrics["compression/params_before"]
    assert metrics["compression/ratio"] == pytest.approx(TARGET, rel=0.1)
    assert metrics["compression/params_before"] / metrics["compression/params_after"] == pytest.approx(
        metrics["compression/ratio"]
    )
    assert metrics["compression/params_after"] == compression.summary["params_after"]
    assert metrics["compression/stage"] == 0


def check_pruning_numbers(metrics: dict[str, float]) -> None:
    assert metrics["pruning/params_after"] < metrics["pruning/params_before"]
    assert metrics["pruning/params_before"] == metrics["compression/params_after"]


def read_wandb_records(path: Path) -> list[bytes]:
    """The records of a ``run-*.wandb`` file: a 7-byte ``:W&B`` header, then LevelDB-log framing (32 KiB blocks
    of ``crc32, length, type`` headed chunks), as written by wandb's datastore in every version so far."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind == 1:  # FULL
            records.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            records.append(pending + chunk)
    return records


def _items_to_dict(items: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        target = row
        for key in keys[:-1]:  # a wandb.Table is logged as a nested dict describing its file
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(item.value_json)
    return row


def read_wandb_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The history rows (one per ``wandb.log`` call) and the final summary of an offline run."""
    from wandb.proto import wandb_internal_pb2

    history, summary = [], {}
    for data in read_wandb_records(next(run_dir.glob("run-*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(_items_to_dict(record.history.item))
        elif kind == "summary":
            summary.update(_items_to_dict(record.summary.update))
    return history, summary


def test_wandb_offline_run_holds_the_layer_table_and_metrics(tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="tetra-test", save_dir=str(tmp_path), offline=True)
    try:
        compression, pruning = fit(logger)
    finally:
        wandb.finish()

    (run_dir,) = sorted((tmp_path / "wandb").glob("offline-run-*"))
    tables = sorted(run_dir.glob("files/media/table/compression/layers_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == LAYER_COLUMNS
    assert len(table["data"]) == len(compression.layer_table) > 0
    names = [row[1] for row in table["data"]]
    assert names == [row["name"] for row in compression.layer_table]
    for row in table["data"]:
        assert row[0] == 0 and row[2] == "svd" and row[5] < row[4]

    # wandb's service process writes the run file; on a loaded machine its last records can land just after
    # wandb.finish() returns, so read until the table's history row is there (at most 20 s)
    deadline = time.monotonic() + 20.0
    history, summary = read_wandb_run(run_dir)
    while not any("compression/layers" in row for row in history) and time.monotonic() < deadline:
        time.sleep(0.5)
        history, summary = read_wandb_run(run_dir)
    (logged,) = [row["compression/layers"] for row in history if "compression/layers" in row]
    assert logged["_type"] == "table-file" and logged["nrows"] == len(table["data"]) and logged["ncols"] == 7
    assert run_dir / "files" / logged["path"] == tables[0]
    # The run summary keeps the last value of every key; the history rows hold each wandb.log call (the very last
    # row can still be in flight when an offline run closes, so both are read).
    metrics = {k: v for k, v in summary.items() if k.startswith(("compression/", "pruning/"))}
    for row in history:
        metrics.update({k: v for k, v in row.items() if k.startswith(("compression/", "pruning/"))})
    assert any("compression/ratio" in row for row in history)
    check_numbers(metrics, compression)
    if "pruning/params_after" in metrics:  # the last row, logged at the final epoch end, may be unflushed
        check_pruning_numbers(metrics)


def test_csv_logger_gets_the_compression_metrics(tmp_path: Path) -> None:
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    compression, pruning = fit(logger)

    metrics: dict[str, float] = {}
    with (Path(logger.log_dir) / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            metrics.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    check_numbers(metrics, compression)
    check_pruning_numbers(metrics)
    assert metrics["pruning/params_after"] == pruning.summary["params_after"]
