"""LightningCLI: the callbacks and their arguments come from a YAML config (examples/cli/)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("jsonargparse")

CLI_DIR = Path(__file__).resolve().parents[1] / "examples" / "cli"
CONFIG = CLI_DIR / "config.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false"]
SHORT = [
    "--model.width=16",
    "--trainer.limit_train_batches=8",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=4",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    # LightningCLI(args=...) warns when sys.argv carries pytest's own arguments
    monkeypatch.setattr(sys, "argv", ["train.py"])


def load_cli_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_cli_train", CLI_DIR / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_metrics(path: Path) -> dict[str, float]:
    """Last non-empty value of every column of a CSVLogger metrics.csv."""
    values: dict[str, float] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


def test_cli_config_compresses_and_prunes(tmp_path: Path) -> None:
    from tetra_lightning import PruningCallback, TensorCompressionCallback
    from tetra_lightning.decompose import FactorizedLayer

    example = load_cli_example()
    cli = example.main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_epochs=3",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            *QUIET,
            *SHORT,
        ]
    )

    # the short class_paths of config.yaml resolve through the package's lazy exports
    compression = [cb for cb in cli.trainer.callbacks if isinstance(cb, TensorCompressionCallback)]
    pruning = [cb for cb in cli.trainer.callbacks if isinstance(cb, PruningCallback)]
    assert len(compression) == 1 and len(pruning) == 1
    compression_cb, pruning_cb = compression[0], pruning[0]
    assert (compression_cb.method, compression_cb.target_ratio, compression_cb.start_epoch) == ("svd", 3.0, 1)
    assert (pruning_cb.pruning_ratio, pruning_cb.start_epoch) == (0.3, 2)
    assert cli.trainer.current_epoch == 3

    # the model was factorized to the target, then pruned further
    assert any(isinstance(m, FactorizedLayer) for m in cli.model.modules())
    assert compression_cb.stages_done == 1 and pruning_cb.stages_done == 1
    assert compression_cb.summary["ratio"] == pytest.approx(3.0, rel=0.1)
    assert compression_cb.summary["params_after"] < compression_cb.summary["params_before"]
    assert pruning_cb.summary["params_after"] < pruning_cb.summary["params_before"]
    assert pruning_cb.summary["params_before"] == compression_cb.summary["params_after"]

    # the logger of the config got the metrics, and the resolved config was saved next to them
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    metrics = read_metrics(log_dir / "metrics.csv")
    assert metrics["compression/ratio"] == pytest.approx(compression_cb.summary["ratio"])
    assert metrics["compression/params_after"] == compression_cb.summary["params_after"]
    assert metrics["pruning/params_after"] == pruning_cb.summary["params_after"]
    assert "val_acc" in metrics
    saved = (log_dir / "config.yaml").read_text()
    assert "tetra_lightning.TensorCompressionCallback" in saved or "TensorCompressionCallback" in saved


@pytest.mark.parametrize(
    "class_path",
    ["tetra_lightning.TensorCompressionCallback", "tetra_lightning.callbacks.TensorCompressionCallback"],
)
def test_cli_callback_arguments_from_the_command_line(tmp_path: Path, class_path: str) -> None:
    from tetra_lightning.callbacks import TensorCompressionCallback

    example = load_cli_example()
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  max_epochs: 3\n"
        "  logger: false\n"
        "  callbacks:\n"
        f"    - class_path: {class_path}\n"
        "      init_args:\n"
        "        method: tucker\n"
        "        target_ratio: 2.5\n"
        "        steps: 2\n"
        "        verbose: false\n"
        "        auto_methods: [svd, tt]\n"
    )
    cli = example.main(["--config", str(config), f"--trainer.default_root_dir={tmp_path}", *QUIET], run=False)
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TensorCompressionCallback)]
    assert (callback.method, callback.target_ratio, callback.steps, callback.verbose) == (
        "tucker",
        2.5,
        2,
        False,
    )
    assert callback.auto_methods == ("svd", "tt")
    assert callback.start_epoch == 1  # defaults kept


def test_cli_rejects_a_bad_callback_argument(tmp_path: Path) -> None:
    example = load_cli_example()
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: tetra_lightning.TensorCompressionCallback\n"
        "      init_args:\n"
        "        target_ratio: 0.5\n"
    )
    with pytest.raises(ValueError, match="target_ratio"):
        example.main(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
