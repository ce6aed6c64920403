"""TensorCompressionCallback and PruningCallback in a real ``Trainer.fit`` on attention models a user brings: a
torchvision ``VisionTransformer`` and a ``nn.TransformerEncoder`` text classifier (tiny configurations). One epoch
rewrites and trains the model; a fresh model with a fresh callback resumes from the checkpoint with the same
structure, weights and outputs, and without a second rewrite."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.trainer import quiet_trainer
from tetra_lightning.callbacks import PruningCallback, TensorCompressionCallback
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.models import TransformerTextClassifier
from tetra_lightning.report import count_parameters


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=4)


def _text_transformer() -> nn.Module:
    return TransformerTextClassifier(vocab_size=100, d_model=64, nhead=4, num_layers=2, dim_feedforward=128,
                                     num_classes=4, max_len=16)


def _images(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(64, 3, 16, 16, generator=generator)


def _tokens(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 100, (64, 12), generator=generator)


NETS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], torch.Tensor]]] = {
    "vit": (_vit, _images),
    "text_transformer": (_text_transformer, _tokens),
}


class ZooModule(pl.LightningModule):
    """A BoringModel-like LightningModule around one of :data:`NETS`: fixed random data, SGD + cosine LR."""

    def __init__(self, net: str, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        make, inputs = NETS[net]
        self.net = make()
        generator = torch.Generator().manual_seed(0)
        self.inputs = inputs(generator)
        self.labels = torch.randint(0, 4, (64,), generator=generator)
        self.example_input_array = self.inputs[:2]  # PruningCallback traces the model at epoch 0, before any batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.inputs, self.labels), batch_size=16)


class AtTrainStart(Callback):
    """The structure, weights and eval outputs the model has when training (re)starts, and the optimizer's fit."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.structure = _structure(pl_module)
        self.state = {key: value.clone() for key, value in pl_module.state_dict().items()}
        pl_module.eval()
        with torch.no_grad():
            self.output = pl_module(self.x)
        pl_module.train()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.exact = sorted(id(p) for p in optimizer_parameters(trainer)) == sorted(
            id(p) for p in pl_module.parameters()
        )


def _structure(model: nn.Module) -> list[tuple[str, str, tuple[tuple[int, ...], ...]]]:
    return [
        (name, type(module).__name__, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
        for name, module in model.named_modules()
    ]


CALLBACKS: dict[str, Callable[[], pl.Callback]] = {
    "compression": lambda: TensorCompressionCallback(
        method="auto", target_ratio=3.0, start_epoch=0, min_layer_params=512, verbose=False
    ),
    "pruning": lambda: PruningCallback(pruning_ratio=0.3, start_epoch=0, verbose=False),
}

_trainer = functools.partial(quiet_trainer, limit_train_batches=2)


@pytest.mark.parametrize("kind", list(CALLBACKS))
@pytest.mark.parametrize("net", list(NETS))
def test_one_epoch_fit_then_resume_from_the_checkpoint(tmp_path: Path, net: str, kind: str) -> None:
    model = ZooModule(net)
    dense = count_parameters(model)
    callback = CALLBACKS[kind]()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = AtTrainStart(model.inputs[:4])
    _trainer(tmp_path, [callback, checkpoint, first], max_epochs=1, enable_checkpointing=True).fit(model)

    assert callback.stages_done == 1 and first.exact  # the rewrite happened and the optimizer holds its parameters
    ratio = dense / count_parameters(model)
    assert ratio >= (2.5 if kind == "compression" else 1.6), ratio
    split = [entry for entry in callback.history if entry.get("kind") == "attention"]
    assert (len(split) == 2) == (kind == "compression")  # both encoder layers' attention split, then factorized
    model.eval()
    with torch.no_grad():
        expected = model(model.inputs[:4])
    assert expected.shape == (4, 4) and torch.isfinite(expected).all()
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["tetra_lightning"]["history"] == callback.history

    fresh = ZooModule(net, seed=1)  # dense, other weights: everything must come from the checkpoint
    fresh_callback = CALLBACKS[kind]()
    resumed = AtTrainStart(model.inputs[:4])
    _trainer(tmp_path, [fresh_callback, resumed], max_epochs=2).fit(fresh, ckpt_path=str(last))

    assert resumed.structure == _structure(model)
    assert resumed.state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state[key], value), key
    assert torch.equal(resumed.output, expected)
    assert fresh_callback.stages_done == 1 and fresh_callback.history == callback.history  # no second rewrite
    assert resumed.exact and count_parameters(fresh) == count_parameters(model)
