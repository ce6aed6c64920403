from __future__ import annotations

import csv
import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tests.helpers.boring import BoringConvModule, make_dataset
from tests.helpers.trainer import quiet_trainer
from tetra_lightning.callbacks import QuantizationCallback
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.checkpoint import CompressibleMixin

_trainer = functools.partial(quiet_trainer, limit_val_batches=1.0)


def _accuracy(model: torch.nn.Module) -> float:
    x, y = make_dataset().tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_ptq_keeps_accuracy_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BoringConvModule(lr=0.05)
    callback = QuantizationCallback(mode="int8", calibration_batches=4, export_path=tmp_path / "q.pt2")
    _trainer(tmp_path, [callback], max_epochs=4).fit(module)
    module.eval()
    float_accuracy = _accuracy(module.net)
    assert float_accuracy > 0.8
    assert _accuracy(callback.quantized_model) >= float_accuracy - 0.03
    assert 3.5 <= callback.summary["bytes_before"] / callback.summary["bytes_after"] <= 4.1
    reloaded = torch.export.load(str(tmp_path / "q.pt2")).module()
    x = make_dataset(num_samples=16).tensors[0]
    assert torch.equal(reloaded(x), callback.quantized_model(x))
    assert type(module.net).__name__ == "BoringConvNet"  # the LightningModule stays float


class QatProbe(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.exact = {id(p) for p in optimizer_parameters(trainer)} == {
                id(p) for p in pl_module.parameters()
            }
            self.fake_quant = any("FakeQuant" in type(m).__name__ for m in pl_module.modules())


def test_qat_trains_with_fake_quant_then_converts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BoringConvModule(lr=0.05)
    callback, probe = QuantizationCallback(mode="int8", qat_start_epoch=1), QatProbe()
    _trainer(tmp_path, [callback, probe], max_epochs=3, limit_val_batches=1).fit(module)
    assert probe.exact and probe.fake_quant and callback.qat_active
    assert module.mean_epoch_loss(2) < module.mean_epoch_loss(0)
    assert _accuracy(callback.quantized_model) > 0.8
    path = callback.export(tmp_path / "qat.pt2")
    x = make_dataset(num_samples=8).tensors[0]
    assert torch.equal(torch.export.load(path).module()(x), callback.quantized_model(x))


def test_fp16_mode_and_sizes_reach_the_loggers(tmp_path: Path) -> None:
    callback = QuantizationCallback(mode="fp16")
    module = BoringConvModule()
    logger = CSVLogger(tmp_path, name="q")
    _trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=logger).fit(module)
    assert callback.quantized_model.head.weight.dtype == torch.float16
    assert module.net.head.weight.dtype == torch.float32
    assert callback.summary["bytes_before"] == 2 * callback.summary["bytes_after"]
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    logged = {key: float(value) for row in rows for key, value in row.items() if key.startswith("quantization/") and value}
    assert logged["quantization/bytes_before"] == callback.summary["bytes_before"]
    assert logged["quantization/bytes_after"] == callback.summary["bytes_after"]
    assert logged["quantization/bytes_ratio"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "int4"}, r"`mode` must be one of 'int8', 'int8_weight_only', 'fp16', 'bf16', got 'int4'"),
        ({"qat_start_epoch": -1}, r"`qat_start_epoch` must be None or an int >= 0, got -1"),
        ({"mode": "fp16", "qat_start_epoch": 1}, r"`qat_start_epoch` needs mode='int8'"),
        ({"calibration_batches": 0}, r"`calibration_batches` must be an int >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantizationCallback(**kwargs)


def test_misconfigurations(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"start QAT at epoch 3 .* max_epochs=3"):
        _trainer(tmp_path, [QuantizationCallback(qat_start_epoch=3)], max_epochs=3).fit(BoringConvModule())
    with pytest.raises(MisconfigurationException, match=r"`submodule='body'` is not a child"):
        _trainer(tmp_path, [QuantizationCallback(submodule="body")], max_epochs=1).fit(BoringConvModule())
    with pytest.raises(RuntimeError, match="nothing is quantized yet"):
        QuantizationCallback().export(tmp_path / "x.pt2")


class StopAfterEpoch(Callback):
    """Stops ``fit`` at the end of ``epoch`` as if the job had been killed (the last checkpoint is on disk)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_resume_mid_qat_restores_fake_quant_weights_and_optimizer(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = BoringConvModule(lr=0.05)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = QuantizationCallback(mode="int8", qat_start_epoch=1)
    _trainer(tmp_path, [first, checkpoint, StopAfterEpoch(1)], max_epochs=4, limit_val_batches=1,
             enable_checkpointing=True).fit(module)
    assert first.qat_active
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert sum("activation_post_process" in key for key in saved["state_dict"]) >= 4

    class Inspect(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            state = pl_module.state_dict()
            self.same_keys = set(state) == set(saved["state_dict"])
            self.identical = all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())
            self.momentum = sum(len(s) for s in trainer.optimizers[0].state.values())
            self.epoch = trainer.current_epoch

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.exact = {id(p) for p in optimizer_parameters(trainer)} == {id(p) for p in pl_module.parameters()}
            self.fake_quant = sum("FakeQuant" in type(m).__name__ for m in pl_module.modules())

    torch.manual_seed(1)
    fresh = BoringConvModule(lr=0.05)
    second, inspect = QuantizationCallback(mode="int8", qat_start_epoch=1), Inspect()
    _trainer(tmp_path, [second, inspect], max_epochs=4, limit_val_batches=1).fit(fresh, ckpt_path=last)
    assert inspect.same_keys and inspect.identical and inspect.epoch == 2
    assert inspect.momentum == len(list(fresh.parameters()))  # SGD momentum buffers of every parameter came back
    assert inspect.exact and inspect.fake_quant >= 4  # QAT went on; nothing prepared twice
    assert second.qat_active and sorted(fresh.epoch_losses) == [2, 3]
    assert _accuracy(second.quantized_model) > 0.8
    x = make_dataset(num_samples=8).tensors[0]
    assert torch.equal(torch.export.load(second.export(tmp_path / "resumed.pt2")).module()(x),
                       second.quantized_model(x))

    # The same checkpoint loads into a plain model with `load_from_checkpoint` through CompressibleMixin.
    class Model(CompressibleMixin, BoringConvModule):
        pass

    restored = Model.load_from_checkpoint(last)
    assert set(restored.state_dict()) == set(saved["state_dict"])


def test_example_of_one_row_and_missing_export_folder(tmp_path: Path) -> None:
    """A 1-row `example_input_array` (the model summary's pass) must not fix the exported batch size to 1."""
    torch.manual_seed(0)
    module = BoringConvModule(lr=0.05)
    module.example_input_array = torch.randn(1, 3, 8, 8)
    callback = QuantizationCallback(mode="int8", calibration_batches=2, export_path=tmp_path / "new" / "dir" / "q.pt2")
    _trainer(tmp_path, [callback], max_epochs=1, enable_model_summary=True).fit(module)
    x = make_dataset(num_samples=5).tensors[0]
    reloaded = torch.export.load(str(tmp_path / "new" / "dir" / "q.pt2")).module()
    assert reloaded(x).shape == (5, 4) and torch.equal(reloaded(x), callback.quantized_model(x))
