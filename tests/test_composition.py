from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers.boring import BoringConvModule, make_dataset
from tetra_lightning.callbacks import PruningCallback, QuantizationCallback, TensorCompressionCallback
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.decompose import FactorizedLayer
from tetra_lightning.prune import restore_from_checkpoint
from tetra_lightning.report import count_parameters


def test_compress_then_prune_then_quantize(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BoringConvModule(lr=0.05)
    dense = count_parameters(module)
    compression = TensorCompressionCallback(method="svd", target_ratio=2.0, start_epoch=1, verbose=False)
    pruning = PruningCallback(pruning_ratio=0.3, start_epoch=2, verbose=False)
    quantization = QuantizationCallback(mode="int8", calibration_batches=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[compression, pruning, quantization, checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=4,
        limit_val_batches=2,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module)

    assert any(isinstance(m, FactorizedLayer) for m in module.modules())
    pruned = count_parameters(module)
    # SVD to 2x, then 30% of the channels (including the factorized layers' inner ranks) off.
    assert dense / pruned >= 2.0 * 1.6
    assert {id(p) for p in optimizer_parameters(trainer)} == {id(p) for p in module.parameters()}
    x, y = make_dataset().tensors
    module.eval()
    with torch.no_grad():
        float_out = module.net(x)
        int8_out = quantization.quantized_model(x)
    float_accuracy = float((float_out.argmax(1) == y).float().mean())
    assert float_accuracy > 0.45  # 4 classes (chance 0.25) after 16 steps, two rewrites
    assert float((int8_out.argmax(1) == y).float().mean()) >= float_accuracy - 0.05

    # The checkpoint holds the mixed history (decompositions then prunings) and restores on a dense model.
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    kinds = [entry.get("kind", "decompose") for entry in saved["tetra_lightning"]["history"]]
    assert kinds[-1] == "prune" and kinds[0] == "decompose"
    fresh = restore_from_checkpoint(BoringConvModule(), saved)
    assert torch.equal(fresh.eval()(x), module(x))
