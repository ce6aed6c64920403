"""Every example runs as a user would start it, shrunk with its own --quick flag and a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers.shared_data import CIFAR_SUBSET
from tetra_lightning import (
    PruningCallback,
    QuantizationCallback,
    TensorCompressionCallback,
    restore_from_checkpoint,
)

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


# ------------------------------------------------------------------------------------------------ add_callbacks


def test_add_callbacks_quick(tmp_path: Path) -> None:
    example = load_example("add_callbacks")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network on a shared 2-core CPU: one thread is faster and steadier
    try:
        result = example.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    callbacks = {type(cb): cb for cb in result["trainer"].callbacks}
    compression = callbacks[TensorCompressionCallback]
    pruning = callbacks[PruningCallback]
    quantization = callbacks[QuantizationCallback]
    # 4x fewer parameters after factorizing, 30% of the channels (and so about half the parameters) pruned after
    assert compression.summary["ratio"] == pytest.approx(4.0, rel=0.10)
    assert pruning.summary["params_after"] < 0.8 * compression.summary["params_after"]
    assert quantization.summary["bytes_after"] * 3 <= quantization.summary["bytes_before"]
    assert result["test_acc"] > 0.5  # 10 classes: chance is 0.1

    # The checkpoint restores the factorized, pruned structure on a fresh dense model, with the same outputs.
    model = result["model"].eval()
    x = torch.randn(16, 1, 8, 8)
    fresh = restore_from_checkpoint(example.LitCNN(), tmp_path / "digits.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        # The exported int8 program reloads and computes what the callback's int8 model computes.
        reloaded = torch.export.load(str(tmp_path / "digits_int8.pt2")).module()
        assert torch.allclose(reloaded(x), quantization.quantized_model(x))


def _reverse_apply(diff: str, new_text: str) -> str:
    """The text before a unified diff, given the text after it (hunks replaced in order)."""
    hunks = re.split(r"^@@[^\n]*@@\n", diff.split("\n+++ ", 1)[1].split("\n", 1)[1], flags=re.M)[1:]
    for hunk in hunks:
        lines = hunk.splitlines()
        new = [line[1:] for line in lines if line[:1] in (" ", "+")]
        old = [line[1:] for line in lines if line[:1] in (" ", "-")]
        assert "\n".join(new) in new_text, "the diff does not match examples/add_callbacks.py"
        new_text = new_text.replace("\n".join(new), "\n".join(old), 1)
    return new_text


def test_add_callbacks_diff_is_the_marked_lines() -> None:
    diff = (EXAMPLES / "add_callbacks.diff").read_text()
    source = (EXAMPLES / "add_callbacks.py").read_text()
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    marked = [line for line in source.splitlines() if line.endswith("# added")]
    # a few lines: the six marked ones (and a blank line after the import), nothing removed
    assert len(marked) == 6 and [line for line in added if line] == marked and removed == []
    plain = _reverse_apply(diff, source)
    assert not re.search(r"^\s*(from|import) tetra_lightning", plain, flags=re.M) and "callbacks=" not in plain
    compile(plain, "train.py", "exec")  # the script without tetra-lightning is still a valid program
    assert len(source.splitlines()) - len(plain.splitlines()) == 7


# ------------------------------------------------------------------------------------------------ ResNet-18 CIFAR-10


SUBSET = CIFAR_SUBSET


@pytest.mark.skipif(not SUBSET.is_file(), reason=f"shared CIFAR-10 subset not found at {SUBSET} (set TETRA_DATA_DIR)")
def test_resnet18_cifar10_quick(tmp_path: Path) -> None:
    example = load_example("resnet18_cifar10")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network on a shared 2-core CPU: one thread is faster and steadier
    try:
        report = example.main(["--quick", "--data", str(SUBSET), "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == ["dense", "compressed", "pruned", "int8"]
    assert stages["dense"]["params"] / stages["compressed"]["params"] == pytest.approx(3.0, rel=0.10)
    assert stages["compressed"]["macs"] < stages["dense"]["macs"]
    assert stages["pruned"]["params"] < 0.8 * stages["compressed"]["params"]
    assert stages["pruned"]["macs"] < stages["compressed"]["macs"]
    assert stages["int8"]["bytes"] * 3 <= stages["pruned"]["bytes"]
    assert all(0.0 <= row["test_acc"] <= 1.0 and row["latency_ms"] > 0 for row in stages.values())
    written = json.loads((tmp_path / "report.json").read_text())
    assert [row["params"] for row in written["stages"]] == [row["params"] for row in report["stages"]]
    assert len(written["layers"]["compression"]) > 0 and len(written["layers"]["pruning"]) > 0
    # the exported int8 program reloads and computes what the callback's int8 model computes
    x = torch.randn(8, 3, 32, 32)
    reloaded = torch.export.load(str(tmp_path / "resnet18_int8.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(reloaded(x), report["quantized_model"](x))
