"""The main job (`make demo`) end to end, shrunk to a few epochs of a narrow CNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tetra_lightning.demo import DigitsCNN, main


def test_demo_trains_compresses_and_reports(tmp_path: Path) -> None:
    results = main(["--epochs", "3", "--start-epoch", "1", "--target-ratio", "3", "--width", "16",
                    "--method", "svd", "--out-dir", str(tmp_path), "--no-progress"])
    written = json.loads((tmp_path / "demo.json").read_text())
    assert written["ratios"]["params_ratio"] == pytest.approx(results["ratios"]["params_ratio"])
    # the whole model is compressed to the target within 10%
    assert results["ratios"]["params_ratio"] == pytest.approx(3.0, rel=0.10)
    assert results["compressed"]["params"] < results["dense"]["params"] / 2.7
    # digits are easy: both models learn far above chance (10%) in three epochs
    assert results["dense"]["val_acc"] > 0.8
    assert results["compressed"]["val_acc"] > 0.8
    assert {row["method"] for row in results["compressed"]["layers"]} == {"svd"}


def test_digits_cnn_parameter_count() -> None:
    model = DigitsCNN(width=8)
    convs = 1 * 8 * 9 + 8 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9
    bns = 2 * (8 + 16 + 32 + 32)
    assert sum(p.numel() for p in model.parameters()) == convs + bns + 32 * 10 + 10
