"""Every example runs as a user would start it, shrunk with its own --quick flag and a tiny budget."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tune_from_script_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("tune_from_script")
    png = tmp_path / "tune.png"
    result = example.main(["--quick", "--budget", "3", "--storage", f"sqlite:///{tmp_path / 'tune.db'}",
                           "--plot", str(png)])
    out = capsys.readouterr().out
    assert "best val_acc" in out
    assert len(result.trials) == 3
    assert result.best_value == max(result.trials["value"].dropna())
    assert 0.1 < result.best_value <= 1.0
    assert png.stat().st_size > 1000
