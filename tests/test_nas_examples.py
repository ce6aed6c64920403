from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TABLE = SHARED / "nas-bench-201" / "nb201_accuracy.csv"
CIFAR = SHARED / "cifar10" / "cifar10_subset_uint8.npz"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not TABLE.is_file(), reason=f"NAS-Bench-201 table not found at {TABLE}")
def test_nas_nats_bench_compares_three_methods(capsys: pytest.CaptureFixture[str]) -> None:
    results = load_example("nas_nats_bench").main(["--quick", "--table", str(TABLE)])
    assert set(results) == {"tetra", "random", "tpe"}
    for row in results.values():
        assert row["queries"] == 20
        assert 80.0 < row["test_mean"] <= 94.38  # cifar10, 200 epochs: chance 10, optimum 94.37
    out = capsys.readouterr().out
    assert "tetra" in out and "tpe" in out and "best test accuracy in the table: 94.37" in out


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"CIFAR-10 subset not found at {CIFAR}")
@pytest.mark.parametrize(("space", "budget"), [("tss", 2), ("sss", 1)])
def test_nas_train_cifar10_runs_real_trainings(space: str, budget: int, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written next to the repository
    result = load_example("nas_train_cifar10").main([
        "--data", str(CIFAR), "--space", space, "--budget", str(budget), "--max-epochs", "1", "--channels", "4",
        "--cells", "1", "--batch-size", "32", "--val-size", "200", "--limit-batches", "2",
        "--limit-val-batches", "2",
    ])
    assert result["n_trials"] == budget and 0.0 <= result["best_value"] <= 1.0
    assert ("~" in result["best_arch"]) == (space == "tss")
    assert "best val_acc" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
