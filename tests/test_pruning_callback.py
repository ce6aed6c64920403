from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tests.helpers.boring import BoringConvModule
from tests.helpers.trainer import SaveStatePerRank, load_rank_states, quiet_trainer
from tetra_lightning.callbacks import PruningCallback
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.prune import PrunableMixin, restore_from_checkpoint
from tetra_lightning.report import count_macs, count_parameters

X = torch.zeros(1, 3, 8, 8)


_trainer = functools.partial(quiet_trainer, limit_train_batches=2)


class Probe(Callback):
    """Per epoch: parameter count, and whether the optimizer holds exactly the module's parameters."""

    def __init__(self) -> None:
        self.params: dict[int, int] = {}
        self.exact: dict[int, bool] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        in_optimizer = [id(p) for p in optimizer_parameters(trainer)]
        self.exact[trainer.current_epoch] = sorted(in_optimizer) == sorted(
            id(p) for p in pl_module.parameters()
        )
        self.params[trainer.current_epoch] = count_parameters(pl_module)


def test_iterative_pruning_shrinks_the_model_and_rebuilds_the_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BoringConvModule()
    dense, dense_macs = count_parameters(model), count_macs(model, X)
    callback = PruningCallback(pruning_ratio=0.5, start_epoch=1, steps=2, verbose=False)
    probe = Probe()
    trainer = _trainer(tmp_path, [callback, probe], max_epochs=3)
    trainer.fit(model)

    assert probe.params[0] == dense
    assert dense > probe.params[1] > probe.params[2]
    # 1 - sqrt(0.5) ~ 29% of the channels per stage, half after both: ~4x fewer params (head outputs kept).
    assert 3.5 <= dense / probe.params[2] <= 4.8
    assert 3.5 <= dense_macs / count_macs(model, X) <= 4.8
    assert model.net.head.out_features == 4 and model.net.stem.in_channels == 3
    assert 7 <= model.net.stem.out_channels <= 8
    assert all(probe.exact.values()), probe.exact  # no stale parameter, every new one trained
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule continued
    assert [e["stage"] for e in callback.history] == [0, 1]
    assert callback.summary["params_after"] == count_parameters(model)
    assert float(trainer.callback_metrics["pruning/params_ratio"]) == pytest.approx(dense / probe.params[2])
    # the per-layer table: the stem lost the same output channels the model shows, over both stages
    stem_rows = [row for row in callback.layer_table if row["name"] == "net.stem"]
    assert [row["stage"] for row in stem_rows] == [0, 1]
    assert sum(row["out_removed"] for row in stem_rows) == 16 - model.net.stem.out_channels


def test_target_params_ratio(tmp_path: Path) -> None:
    model = BoringConvModule()
    dense = count_parameters(model)
    callback = PruningCallback(target_params_ratio=3.0, start_epoch=0, verbose=False, importance="l2")
    _trainer(tmp_path, [callback], max_epochs=1).fit(model)
    assert 3.0 <= dense / count_parameters(model) <= 3.6


class PrunableBoring(PrunableMixin, BoringConvModule):
    pass


def test_resume_and_load_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PrunableBoring()
    callback = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True).fit(model)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["tetra_lightning"]["history"] == callback.history

    class Restored(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}

    restored, fresh_callback, probe = Restored(), PruningCallback(0.5, start_epoch=1, verbose=False), Probe()
    fresh = BoringConvModule()  # no mixin: the callback's setup-time hook replays the history
    _trainer(tmp_path, [fresh_callback, restored, probe], max_epochs=3).fit(fresh, ckpt_path=str(last))
    for key, value in saved["state_dict"].items():
        assert torch.equal(restored.state[key], value), key
    assert fresh_callback.stages_done == 1 and fresh_callback.history == callback.history  # no second pruning
    assert probe.params[2] == count_parameters(model) and probe.exact[2]

    loaded = PrunableBoring.load_from_checkpoint(last, weights_only=True)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    plain = restore_from_checkpoint(BoringConvModule(), last)
    assert torch.equal(plain.eval()(x), model(x))


def test_ddp_spawn_ranks_end_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    trainer = _trainer(
        tmp_path, [callback, SaveStatePerRank(tmp_path)], max_epochs=2, strategy="ddp_spawn", devices=2
    )
    main = PrunableBoring()
    trainer.fit(main)
    # The launching process got the pruned structure and rank 0's weights (PrunableMixin.load_state_dict).
    assert main.net.stem.out_channels == 8
    rank0, _ = load_rank_states(tmp_path)
    assert rank0["state_dict"]["net.stem.weight"].shape[0] == 8
    for key, value in main.state_dict().items():
        assert torch.equal(value, rank0["state_dict"][key]), key


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pruning_ratio": 1.0}, ValueError, r"`pruning_ratio` must be in \(0, 1\)"),
        ({"pruning_ratio": -0.1}, ValueError, r"`pruning_ratio` must be in \(0, 1\)"),
        (
            {"importance": "hessian"},
            ValueError,
            r"`importance` must be one of 'l1', 'l2', 'bn_scale', 'taylor'",
        ),
        ({"start_epoch": -1}, ValueError, r"`start_epoch` must be an int >= 0, got -1"),
        ({"importance": "taylor", "start_epoch": 0}, ValueError, r"`start_epoch` must be >= 1, got 0"),
        ({"steps": 0}, ValueError, r"`steps` must be an int >= 1, got 0"),
        ({"filter_fn": "conv"}, TypeError, r"`filter_fn` must be callable"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PruningCallback(**kwargs)


def test_misconfigurations(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"prune at epoch 3 .* max_epochs=3"):
        _trainer(tmp_path, [PruningCallback(start_epoch=3)], max_epochs=3).fit(BoringConvModule())
    with pytest.raises(MisconfigurationException, match=r"`ignored_layers` names \['net.nope'\]"):
        _trainer(tmp_path, [PruningCallback(ignored_layers=["net.nope"])], max_epochs=2).fit(
            BoringConvModule()
        )
