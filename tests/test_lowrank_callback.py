from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tests.helpers.boring import BoringConvModule
from tests.helpers.trainer import SaveStatePerRank, load_rank_states, quiet_trainer
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.callbacks.lowrank import LowRankCallback
from tetra_lightning.checkpoint import restore_from_checkpoint
from tetra_lightning.decompose import SVDConv2d, SVDLinear
from tetra_lightning.lowrank import GammaGaussianPrior, layer_ranks


class OptimizerProbe(Callback):
    """Checks the optimizer contract at every epoch start (runs after LowRankCallback) and records ranks."""

    def __init__(self) -> None:
        self.checked: list[int] = []
        self.ranks: dict[int, dict[str, list[int]]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        in_optimizer = {id(p) for p in optimizer_parameters(trainer)}
        trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}
        assert in_optimizer == trainable, "stale or missing parameters in the optimizer"
        self.checked.append(trainer.current_epoch)
        self.ranks[trainer.current_epoch] = layer_ranks(pl_module)


_trainer = quiet_trainer


def _callback(**kwargs: Any) -> LowRankCallback:
    options: dict[str, Any] = {
        "method": "svd",
        "rank": 64,  # capped at every layer's full rank: nothing is lost at the start
        "prior": GammaGaussianPrior(a=1.0, b=1e-4),
        "prior_weight": 0.02,
        "threshold": 0.05,
        "shrink_epochs": [2, 3],
        "verbose": False,
    }
    options.update(kwargs)
    return LowRankCallback(**options)


def test_callback_shrinks_ranks_and_keeps_optimizer_contract(tmp_path):
    torch.manual_seed(0)
    model = BoringConvModule(width=8, num_samples=128)
    callback, probe = _callback(), OptimizerProbe()
    _trainer(tmp_path, [callback, probe], max_epochs=4).fit(model)
    start = probe.ranks[0]
    # Full ranks at the start: min(C_out, C_in k k) for convs, min(out, in) for the head.
    assert start == {"net.stem": [8], "net.conv1": [16], "net.conv2": [16], "net.conv3": [16], "net.head": [4]}
    assert probe.checked == [0, 1, 2, 3]
    final = layer_ranks(model)
    assert callback.shrunk_at == [2, 3]
    assert sum(r[0] for r in final.values()) < 0.75 * sum(r[0] for r in start.values())
    assert all(isinstance(m, (SVDConv2d, SVDLinear)) for n, m in model.named_modules() if n in final)
    assert callback.rank_history[3] == final
    assert any(entry["method"] == "shrink" for entry in callback.history)
    # Training went on after the shrinks and still learns the task.
    assert model.mean_epoch_loss(3) < model.mean_epoch_loss(0)


def test_resume_after_shrink_restores_structure_and_weights(tmp_path):
    torch.manual_seed(0)
    model = BoringConvModule(width=8)
    callback = _callback(shrink_epochs=[1])
    trainer = _trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(model)
    path = tmp_path / "shrunk.ckpt"
    trainer.save_checkpoint(path)

    resumed_callback = _callback(shrink_epochs=[1])
    fresh = BoringConvModule(width=8)
    _trainer(tmp_path, [resumed_callback], max_epochs=2).fit(fresh, ckpt_path=path)
    assert layer_ranks(fresh) == layer_ranks(model)
    assert resumed_callback.shrunk_at == [1] and resumed_callback.rank_history == callback.rank_history
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    loaded = restore_from_checkpoint(BoringConvModule(width=8), str(path))
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


def _ranks(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    return {"ranks": layer_ranks(pl_module)}


def test_ddp_spawn_ranks_shrink_identically(tmp_path):
    """Rank 0 decides which components go and broadcasts; both processes end with the same layers and weights."""
    torch.manual_seed(0)
    callback = _callback(shrink_epochs=[1], threshold=0.2)
    trainer = _trainer(
        tmp_path, [callback, SaveStatePerRank(tmp_path, extra=_ranks)], max_epochs=2, limit_train_batches=3,
        strategy="ddp_spawn", devices=2,
    )
    trainer.fit(BoringConvModule(width=8))
    rank0, rank1 = load_rank_states(tmp_path)
    full = {"net.stem": [8], "net.conv1": [16], "net.conv2": [16], "net.conv3": [16], "net.head": [4]}
    assert rank0["ranks"] == rank1["ranks"] != full  # something was removed, the same on both ranks


def test_callback_errors(tmp_path):
    with pytest.raises(ValueError, match="`method` must be 'svd' or 'tt'"):
        LowRankCallback(method="cp")
    with pytest.raises(ValueError, match="`rank` must be a positive int, a float in"):
        LowRankCallback(rank=-3)
    with pytest.raises(ValueError, match=r"`threshold` must be a float in \[0, 1\)"):
        LowRankCallback(threshold=2.0)
    with pytest.raises(ValueError, match="`shrink_epochs` must be a sequence of ints >= 1"):
        LowRankCallback(shrink_epochs=[0])
    with pytest.raises(TypeError, match="`prior` must be a GammaGaussianPrior"):
        LowRankCallback(prior="gamma")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`prior_weight` must be a finite float"):
        LowRankCallback(prior_weight=-1.0)

    class Empty(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()

    with pytest.raises(MisconfigurationException, match="found no SVD/TT layer"):
        LowRankCallback(rank=None).setup(_trainer(tmp_path, [], 1), Empty(), "fit")


def test_trainer_misconfigurations(tmp_path):
    """The checks every staged callback makes: the last shrink before max_epochs, a strategy that is not sharded."""
    with pytest.raises(MisconfigurationException, match=r"would shrink the ranks at epoch 3 \(shrink_epochs=\[1, 3\]\)"
                       r" but the Trainer stops after max_epochs=3"):
        _trainer(tmp_path, [_callback(shrink_epochs=[3, 1])], max_epochs=3).fit(BoringConvModule(width=8))
    trainer = _trainer(tmp_path, [], max_epochs=3)
    trainer.strategy.__class__ = type("FSDPStrategy", (type(trainer.strategy),), {})
    with pytest.raises(MisconfigurationException, match=r"LowRankCallback supports single-device and DDP strategies"):
        _callback().setup(trainer, BoringConvModule(width=8), "fit")
