from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.helpers.boring import BoringConvModule
from tests.helpers.trainer import quiet_trainer
from tetra_lightning.callbacks import LRRewarmCallback, TensorCompressionCallback

STEPS_PER_EPOCH = 4
EPOCHS = 3
TOTAL = STEPS_PER_EPOCH * EPOCHS


class _PlainSGD(BoringConvModule):
    """SGD without momentum or weight decay (a step moves a parameter by exactly ``-lr * grad``), per-step LR."""

    def __init__(self, schedule: str) -> None:
        super().__init__(lr=0.05)
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        if self.schedule == "onecycle":
            scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=0.1, total_steps=TOTAL, cycle_momentum=False  # plain SGD, no momentum
            )
        elif self.schedule == "cosine":  # chainable: each step's LR is computed from the previous one
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _EffectiveLR(Callback):
    """The LR each optimizer step really used, from the update of the dense head's bias: ``-(b1 - b0) / grad``."""

    def __init__(self) -> None:
        self.effective: list[float] = []
        self.scheduled: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        # between two steps the optimizer holds the schedule's LR (the re-warm scales it inside `step` only)
        self.scheduled.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        bias = pl_module.net.head.bias
        self._grad, self._before = bias.grad.detach().clone(), bias.detach().clone()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        bias = pl_module.net.head.bias.detach()
        moved = self._grad.abs() > 1e-4
        self.effective.append(float(((self._before - bias)[moved] / self._grad[moved]).median()))


def _run(tmp_path: Path, schedule: str, rewrite: bool, rewarm: LRRewarmCallback | None) -> _EffectiveLR:
    torch.manual_seed(0)
    probe = _EffectiveLR()
    callbacks: list[Callback] = [probe]
    if rewrite:
        callbacks.insert(0, TensorCompressionCallback(method="svd", target_ratio=2.0, start_epoch=1, verbose=False))
    if rewarm is not None:
        callbacks.append(rewarm)
    quiet_trainer(tmp_path, callbacks, max_epochs=EPOCHS, limit_train_batches=STEPS_PER_EPOCH).fit(
        _PlainSGD(schedule)
    )
    return probe


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "lambda"])
def test_rewarm_scales_the_steps_after_a_rewrite_and_the_schedule_goes_on(tmp_path: Path, schedule: str) -> None:
    uninterrupted = _run(tmp_path, schedule, rewrite=False, rewarm=None)
    compressed = _run(tmp_path, schedule, rewrite=True, rewarm=None)
    rewarm = LRRewarmCallback(steps=3, start_factor=0.25)
    rewarmed = _run(tmp_path, schedule, rewrite=True, rewarm=rewarm)

    # The optimizer rebuilt at the rewrite continues the schedule, with or without the re-warm.
    assert compressed.scheduled == pytest.approx(uninterrupted.scheduled, rel=1e-6)
    assert rewarmed.scheduled == pytest.approx(uninterrupted.scheduled, rel=1e-6)
    # The steps really taken: 0.25, 0.5, 0.75 of the schedule right after the rewrite (epoch 1), 1x elsewhere.
    factors = [1.0] * TOTAL
    factors[STEPS_PER_EPOCH : STEPS_PER_EPOCH + 3] = [0.25, 0.5, 0.75]
    expected = [lr * f for lr, f in zip(uninterrupted.scheduled, factors, strict=True)]
    assert rewarmed.effective == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert compressed.effective == pytest.approx(uninterrupted.scheduled, rel=1e-3, abs=1e-7)
    assert rewarm.rewarms == 1 and rewarm.factors_used == [0.25, 0.5, 0.75] and not rewarm.warming_up


def test_no_rewrite_no_rewarm(tmp_path: Path) -> None:
    rewarm = LRRewarmCallback(steps=3)
    probe = _run(tmp_path, "cosine", rewrite=False, rewarm=rewarm)
    assert rewarm.rewarms == 0
    assert probe.effective == pytest.approx(probe.scheduled, rel=1e-3, abs=1e-7)


def test_every_stage_of_a_multi_step_compression_is_rewarmed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, steps=2, verbose=False)
    rewarm = LRRewarmCallback(steps=2, start_factor=0.5)
    quiet_trainer(tmp_path, [compression, rewarm], max_epochs=3, limit_train_batches=STEPS_PER_EPOCH).fit(
        BoringConvModule()
    )
    assert compression.stages_done == 2 and rewarm.rewarms == 2


def test_resume_in_the_middle_of_a_warm_up_finishes_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    compression = TensorCompressionCallback(method="svd", target_ratio=2.0, start_epoch=1, verbose=False)
    rewarm = LRRewarmCallback(steps=6, start_factor=0.4)  # 4 steps in epoch 1, 2 more in epoch 2
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(
        tmp_path, [compression, rewarm, checkpoint], max_epochs=2, limit_train_batches=STEPS_PER_EPOCH,
        enable_checkpointing=True,
    )
    trainer.fit(_PlainSGD("cosine"))
    assert rewarm.warming_up and len(rewarm.factors_used) == 4
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]["LRRewarmCallback"]
    assert state["done"] == 4 and state["rewarms"] == 1

    fresh = LRRewarmCallback(steps=6, start_factor=0.4)
    probe = _EffectiveLR()
    again = TensorCompressionCallback(method="svd", target_ratio=2.0, start_epoch=1, verbose=False)
    quiet_trainer(tmp_path, [again, fresh, probe], max_epochs=3, limit_train_batches=STEPS_PER_EPOCH).fit(
        _PlainSGD("cosine"), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert fresh.rewarms == 1 and fresh.factors_used == pytest.approx([0.4 + 0.6 * 4 / 6, 0.4 + 0.6 * 5 / 6])
    factors = [0.4 + 0.6 * 4 / 6, 0.4 + 0.6 * 5 / 6, 1.0, 1.0]
    expected = [lr * f for lr, f in zip(probe.scheduled, factors, strict=True)]
    assert probe.effective == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_start_warmup_by_hand(tmp_path: Path) -> None:
    class StartAtEpochOne(Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                rewarm.start_warmup(trainer)

    rewarm = LRRewarmCallback(steps=2, start_factor=0.0)
    torch.manual_seed(0)
    probe = _EffectiveLR()
    quiet_trainer(
        tmp_path, [StartAtEpochOne(), rewarm, probe], max_epochs=2, limit_train_batches=STEPS_PER_EPOCH
    ).fit(_PlainSGD("lambda"))
    assert rewarm.rewarms == 1 and rewarm.factors_used == [0.0, 0.5]
    assert probe.effective[STEPS_PER_EPOCH] == pytest.approx(0.0, abs=1e-7)
    assert probe.effective[STEPS_PER_EPOCH + 1] == pytest.approx(0.5 * probe.scheduled[STEPS_PER_EPOCH + 1], rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "`steps` must be an int >= 1, got 0"),
        ({"steps": 2.5}, "`steps` must be an int >= 1, got 2.5"),
        ({"steps": 10, "start_factor": 1.0}, "`start_factor` must be a number in \\[0, 1\\), got 1.0"),
        ({"steps": 10, "start_factor": -0.1}, "`start_factor` must be a number in \\[0, 1\\)"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LRRewarmCallback(**kwargs)
