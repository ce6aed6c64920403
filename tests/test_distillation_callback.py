from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn import functional as F

from tests.helpers.boring import BoringConvModule, make_dataset
from tests.helpers.trainer import SaveStatePerRank, load_rank_states, quiet_trainer
from tetra_lightning.callbacks import DistillationCallback, TensorCompressionCallback
from tetra_lightning.callbacks.distillation import distillation_loss
from tetra_lightning.decompose import FactorizedLayer


def _kl_to_teacher(student: nn.Module, teacher: nn.Module) -> float:
    """KL(teacher || student) of the softmax outputs on the training set, in nats per sample."""
    x, _ = make_dataset(num_samples=256, seed=0).tensors
    student.eval(), teacher.eval()
    with torch.no_grad():
        log_s, log_t = F.log_softmax(student(x), -1), F.log_softmax(teacher(x), -1)
    return float(F.kl_div(log_s, log_t, reduction="batchmean", log_target=True))


def _factorized(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, FactorizedLayer)]


def _compress_and_distill(tmp_path: Path, alpha: float) -> tuple[BoringConvModule, DistillationCallback, pl.Trainer]:
    torch.manual_seed(0)
    model = BoringConvModule()
    compression = TensorCompressionCallback(method="svd", target_ratio=4.0, start_epoch=2, verbose=False)
    distillation = DistillationCallback(alpha=alpha, temperature=4.0, verbose=False)
    trainer = quiet_trainer(tmp_path, [compression, distillation], max_epochs=6)
    trainer.fit(model)
    return model, distillation, trainer


# --------------------------------------------------------------------------------------------------------
# the effect: a compressed model distilled from its dense self stays much closer to it
# --------------------------------------------------------------------------------------------------------


def test_distillation_keeps_the_compressed_model_close_to_the_dense_one(tmp_path: Path) -> None:
    plain, plain_kd, _ = _compress_and_distill(tmp_path, alpha=0.0)
    distilled, kd, trainer = _compress_and_distill(tmp_path, alpha=1.0)

    # Both teachers are the dense model at the start of epoch 2 (the same seed trains the same dense epochs).
    assert kd.teacher_epoch == plain_kd.teacher_epoch == 2
    assert not _factorized(kd.teacher) and _factorized(distilled)
    for (name, a), b in zip(kd.teacher.state_dict().items(), plain_kd.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert plain_kd.steps_distilled == 0 and kd.steps_distilled == 4 * 8  # epochs 2-5, 8 batches each

    # Measured on this model: KL 0.19 with distillation against 0.73 without.
    kl_distilled, kl_plain = _kl_to_teacher(distilled, kd.teacher), _kl_to_teacher(plain, kd.teacher)
    assert kl_distilled < 0.4 * kl_plain, (kl_distilled, kl_plain)
    assert float(trainer.callback_metrics["distillation/kl"]) > 0
    # The teacher never trains and is not part of the model.
    assert all(not p.requires_grad for p in kd.teacher.parameters())
    assert not any(p is q for p in distilled.parameters() for q in kd.teacher.parameters())


class _Recorder(pl.LightningModule):
    """A linear classifier that records what its training step saw, for checking the loss numerically."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.seen.append((x, logits.detach().clone(), loss.detach().clone()))
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> Any:
        generator = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(8, 6, generator=generator), torch.arange(8) % 3)
        return torch.utils.data.DataLoader(data, batch_size=4)


class _LossProbe(Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def test_the_loss_is_cross_entropy_plus_alpha_t2_kl(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(6, 3)
    model, probe = _Recorder(), _LossProbe()
    callback = DistillationCallback(alpha=0.7, temperature=2.0, teacher=teacher, verbose=False)
    quiet_trainer(tmp_path, [callback, probe], max_epochs=1).fit(model)

    assert callback.start_epoch == 0 and callback.steps_distilled == 2
    for (x, logits, ce), loss in zip(model.seen, probe.losses, strict=True):
        with torch.no_grad():
            soft_t = F.softmax(teacher(x) / 2.0, -1)
            kl = (soft_t * (soft_t.log() - F.log_softmax(logits / 2.0, -1))).sum(-1).mean()
        assert float(loss) == pytest.approx(float(ce + 0.7 * 4.0 * kl), rel=1e-5)
        assert float(loss) > float(ce) + 1e-3  # the term is really there


def test_distillation_loss_flattens_every_dimension_but_the_classes() -> None:
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    flat = distillation_loss(student.reshape(10, 7), teacher.reshape(10, 7), temperature=3.0)
    assert float(distillation_loss(student, teacher, temperature=3.0)) == pytest.approx(float(flat))
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), temperature=1.0)


# --------------------------------------------------------------------------------------------------------
# resume: the teacher is in the callback state and rebuilt on a fresh model
# --------------------------------------------------------------------------------------------------------


class _TeacherProbe(Callback):
    """Captures the distillation callback's teacher once training starts (after the restore)."""

    def __init__(self, callback: DistillationCallback) -> None:
        self.callback = callback

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.callback.teacher is not None
        self.state = {k: v.clone() for k, v in self.callback.teacher.state_dict().items()}
        self.factorized_student = _factorized(pl_module)


def test_resume_after_the_rewrite_rebuilds_the_same_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BoringConvModule()
    # DistillationCallback first: the teacher is the dense model whatever the order.
    distillation = DistillationCallback(verbose=False)
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(
        tmp_path, [distillation, compression, checkpoint], max_epochs=2, limit_train_batches=2,
        enable_checkpointing=True,
    )
    trainer.fit(model)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    state = saved["callbacks"]["DistillationCallback"]
    assert state["teacher_epoch"] == 1 and state["teacher_history"] == []
    assert set(state["teacher"]) == set(BoringConvModule().state_dict())  # the dense structure
    assert _factorized(model)

    fresh_distillation = DistillationCallback(verbose=False)
    fresh_compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    probe = _TeacherProbe(fresh_distillation)
    trainer = quiet_trainer(
        tmp_path, [fresh_compression, fresh_distillation, probe], max_epochs=3, limit_train_batches=2
    )
    trainer.fit(BoringConvModule(), ckpt_path=str(last))

    assert probe.factorized_student == _factorized(model)
    assert fresh_distillation.teacher_epoch == 1
    assert not _factorized(fresh_distillation.teacher)
    for key, value in state["teacher"].items():
        assert torch.equal(probe.state[key], value), key
    x = torch.randn(4, 3, 8, 8)
    distillation.teacher.eval()
    assert torch.equal(fresh_distillation.teacher(x), distillation.teacher(x))
    assert fresh_distillation.steps_distilled == 2  # the resumed epoch is distilled


def test_a_second_fit_takes_its_own_teacher(tmp_path: Path) -> None:
    distillation = DistillationCallback(verbose=False)
    teachers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
        trainer = quiet_trainer(tmp_path, [compression, distillation], max_epochs=2, limit_train_batches=2)
        trainer.fit(BoringConvModule())
        teachers.append({k: v.clone() for k, v in distillation.teacher.state_dict().items()})
    assert not torch.equal(teachers[0]["net.conv1.weight"], teachers[1]["net.conv1.weight"])


def _dense_checkpoint(tmp_path: Path, epochs: int, callbacks: list[Callback] | None = None) -> Path:
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "dense", save_last=True)
    trainer = quiet_trainer(
        tmp_path, [*(callbacks or []), checkpoint], max_epochs=epochs, limit_train_batches=2,
        enable_checkpointing=True,
    )
    trainer.fit(BoringConvModule())
    return tmp_path / "dense" / "last.ckpt"


def test_resume_at_the_rewrite_from_a_checkpoint_without_a_teacher_takes_the_loaded_model(tmp_path: Path) -> None:
    # The benchmark's path: a dense run saved its state at the rewrite epoch, without this callback.
    last = _dense_checkpoint(tmp_path, epochs=1)
    dense_state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    distillation = DistillationCallback(verbose=False)
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    model = BoringConvModule()
    quiet_trainer(tmp_path, [compression, distillation], max_epochs=2, limit_train_batches=2).fit(
        model, ckpt_path=str(last)
    )
    assert distillation.teacher_epoch == 1 and _factorized(model)
    for key, value in dense_state.items():
        assert torch.equal(distillation.teacher.state_dict()[key], value), key


def test_resume_after_the_rewrite_without_a_teacher_is_a_misconfiguration(tmp_path: Path) -> None:
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    last = _dense_checkpoint(tmp_path, epochs=2, callbacks=[compression])
    distillation = DistillationCallback(verbose=False)
    again = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    trainer = quiet_trainer(tmp_path, [again, distillation], max_epochs=3, limit_train_batches=2)
    with pytest.raises(MisconfigurationException, match="holds no teacher"):
        trainer.fit(BoringConvModule(), ckpt_path=str(last))


# --------------------------------------------------------------------------------------------------------
# DDP: the wrapped training_step runs through Lightning's forward redirection on every rank
# --------------------------------------------------------------------------------------------------------


def _ddp_extra(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    distillation = next(cb for cb in trainer.callbacks if isinstance(cb, DistillationCallback))
    return {"distilled": distillation.steps_distilled, "teacher_epoch": distillation.teacher_epoch}


def test_ddp_spawn_ranks_distill_and_end_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    distillation = DistillationCallback(verbose=False)
    saver = SaveStatePerRank(tmp_path, _ddp_extra)
    trainer = quiet_trainer(
        tmp_path, [compression, distillation, saver], max_epochs=2, limit_train_batches=2,
        strategy="ddp_spawn", devices=2,
    )
    trainer.fit(BoringConvModule())
    rank0, rank1 = load_rank_states(tmp_path)
    assert rank0["distilled"] == rank1["distilled"] == 2
    assert rank0["teacher_epoch"] == rank1["teacher_epoch"] == 1


# --------------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": -1.0}, ValueError, "`alpha` must be a number in \\[0, inf\\)"),
        ({"temperature": 0.0}, ValueError, "`temperature` must be a number in \\(0, inf\\]"),
        ({"start_epoch": -1}, ValueError, "`start_epoch` must be None or an int >= 0"),
        ({"teacher": "resnet"}, TypeError, "`teacher` must be None"),
        ({"module": 3}, TypeError, "`module` must be a submodule name"),
        ({"logits_fn": "logits"}, TypeError, "`logits_fn` must be callable"),
        ({"stop_epoch": 0}, ValueError, "`stop_epoch` must be None or an int >= 1"),
        ({"start_epoch": 3, "stop_epoch": 3}, ValueError, "`stop_epoch` must come after `start_epoch` \\(3\\)"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DistillationCallback(**kwargs)


def test_stop_epoch_ends_the_distillation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    compression = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=1, verbose=False)
    distillation = DistillationCallback(stop_epoch=2, verbose=False)
    quiet_trainer(tmp_path, [compression, distillation], max_epochs=4, limit_train_batches=2).fit(BoringConvModule())
    assert distillation.start_epoch == 1 and distillation.steps_distilled == 2  # epoch 1 only

    early = DistillationCallback(stop_epoch=1)
    trainer = quiet_trainer(
        tmp_path, [TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=2), early], max_epochs=3
    )
    with pytest.raises(MisconfigurationException, match="stop_epoch=1\\) comes before the first distilled epoch 2"):
        trainer.fit(BoringConvModule())


def test_without_a_structural_callback_start_epoch_is_needed(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [DistillationCallback(verbose=False)], max_epochs=1)
    with pytest.raises(MisconfigurationException, match="no structural callback"):
        trainer.fit(BoringConvModule())


def test_unknown_module_lists_the_submodules(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [DistillationCallback(start_epoch=0, module="backbone")], max_epochs=1)
    with pytest.raises(MisconfigurationException, match="has no such submodule.*'net'"):
        trainer.fit(BoringConvModule())


class _ManualModule(BoringConvModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


def test_manual_optimization_is_a_misconfiguration(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [DistillationCallback(start_epoch=0)], max_epochs=1)
    with pytest.raises(MisconfigurationException, match="automatic optimization"):
        trainer.fit(_ManualModule())


class _CallsTheNetDirectly(BoringConvModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


def test_a_training_step_that_bypasses_forward_names_the_fix(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [DistillationCallback(start_epoch=0)], max_epochs=1, limit_train_batches=1)
    with pytest.raises(MisconfigurationException, match="never called `self\\(x\\)`.*Pass `module="):
        trainer.fit(_CallsTheNetDirectly())
    # naming the submodule distills its calls instead
    callback = DistillationCallback(start_epoch=0, module="net", verbose=False)
    quiet_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(_CallsTheNetDirectly())
    assert callback.steps_distilled == 1


class _DictOutput(BoringConvModule):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": self.net(x)}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x)["logits"], y)


def test_outputs_that_are_not_logits_need_logits_fn(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [DistillationCallback(start_epoch=0)], max_epochs=1, limit_train_batches=1)
    with pytest.raises(MisconfigurationException, match="Pass `logits_fn="):
        trainer.fit(_DictOutput())
    callback = DistillationCallback(start_epoch=0, logits_fn=lambda out: out["logits"], verbose=False)
    quiet_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(_DictOutput())
    assert callback.steps_distilled == 1
