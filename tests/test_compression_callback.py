from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from tests.helpers.boring import BoringConvModule
from tests.helpers.trainer import SaveStatePerRank, load_rank_states, quiet_trainer
from tetra_lightning.callbacks import TensorCompressionCallback
from tetra_lightning.callbacks._surgery import optimizer_parameters
from tetra_lightning.checkpoint import CompressibleMixin, restore_from_checkpoint
from tetra_lightning.decompose import FactorizedLayer

LR = 0.02


def _dense_params() -> int:
    return sum(p.numel() for p in BoringConvModule().parameters())


def _factorized(module: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in module.named_modules() if isinstance(m, FactorizedLayer)}


_trainer = quiet_trainer


def _cosine_lr(epoch: int, t_max: int = 10, base: float = LR) -> float:
    return base * (1 + math.cos(math.pi * epoch / t_max)) / 2


class EpochProbe(Callback):
    """Records the parameter count and the factorized layers at the end of every training epoch."""

    def __init__(self) -> None:
        self.params: dict[int, int] = {}
        self.factorized: dict[int, dict[str, str]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.params[trainer.current_epoch] = sum(p.numel() for p in pl_module.parameters())
        self.factorized[trainer.current_epoch] = _factorized(pl_module)


class TableLogger(CSVLogger):
    """A CSVLogger that also accepts tables, like WandbLogger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tables: list[dict[str, Any]] = []

    def log_table(self, key: str, columns: list[str], data: list[list[Any]], step: int | None = None) -> None:
        self.tables.append({"key": key, "columns": columns, "data": data})


# --------------------------------------------------------------------------------------------------------
# 1. fit: decompose at start_epoch, keep learning, reach the ratio
# --------------------------------------------------------------------------------------------------------


def test_fit_decomposes_at_start_epoch_and_keeps_learning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BoringConvModule()
    dense = _dense_params()
    callback = TensorCompressionCallback(method="svd", target_ratio=3.0, start_epoch=2)
    probe = EpochProbe()
    logger = TableLogger(tmp_path)
    trainer = _trainer(tmp_path, [callback, probe], max_epochs=6, logger=logger)
    trainer.fit(model)

    assert probe.factorized[0] == probe.factorized[1] == {}
    assert probe.params[1] == dense
    assert set(probe.factorized[2]) == set(probe.factorized[5]) and probe.factorized[2]
    assert probe.params[2] == probe.params[5]
    reached = dense / probe.params[5]
    assert 3.0 <= reached <= 3.3
    assert callback.summary["ratio"] == pytest.approx(reached)
    assert callback.summary["params_before"] == dense
    assert callback.summary["params_after"] == probe.params[5]
    assert callback.summary["macs_after"] < callback.summary["macs_before"]
    assert float(trainer.callback_metrics["compression/ratio"]) == pytest.approx(reached, rel=1e-5)
    assert float(trainer.callback_metrics["compression/params_after"]) == probe.params[5]
    # The 3-channel stem and the tiny head stay dense.
    assert "net.stem" not in probe.factorized[5] and "net.head" not in probe.factorized[5]

    # Per-layer table: every factorized layer, with the parameters it saved adding up to the total saving.
    assert {row["name"] for row in callback.layer_table} == set(probe.factorized[5])
    assert (
        sum(r["params_before"] - r["params_after"] for r in callback.layer_table) == dense - probe.params[5]
    )
    assert all(0.0 <= r["rel_error"] < 1.0 and r["method"] == "svd" for r in callback.layer_table)
    assert len(logger.tables) == 1 and logger.tables[0]["columns"][:3] == ["stage", "name", "method"]
    assert len(logger.tables[0]["data"]) == len(callback.layer_table)

    # Fine-tuning works: the loss right after the rewrite falls by the last epoch.
    after_rewrite, last = model.mean_epoch_loss(2), model.mean_epoch_loss(5)
    assert last < 0.8 * after_rewrite, (after_rewrite, last)

    metrics = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "compression/params_after" in metrics and "compression/ratio" in metrics


def test_steps_reach_the_ratio_in_geometric_stages(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _dense_params()
    callback = TensorCompressionCallback(
        method="svd", target_ratio=3.0, start_epoch=1, steps=2, epochs_between_steps=2, verbose=False
    )
    probe = EpochProbe()
    _trainer(tmp_path, [callback, probe], max_epochs=5, limit_train_batches=2).fit(BoringConvModule())

    assert probe.params[0] == dense
    first_stage = dense / probe.params[1]
    assert probe.params[1] == probe.params[2]
    assert math.sqrt(3.0) <= first_stage <= 1.1 * math.sqrt(3.0)
    final = dense / probe.params[4]
    assert probe.params[3] == probe.params[4]
    assert 3.0 <= final <= 3.3
    assert callback.stages_done == 2
    assert sorted({row["stage"] for row in callback.layer_table}) == [0, 1]
    # The history holds every rewrite of both stages, in order.
    assert [entry["name"] for entry in callback.history] == [row["name"] for row in callback.layer_table]


def test_auto_records_the_chosen_method_per_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = TensorCompressionCallback(method="auto", target_ratio=2.5, start_epoch=0, verbose=False)

    class SanityProbe(Callback):
        dense_during_sanity: bool | None = None

        def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.dense_during_sanity = not _factorized(pl_module)

    sanity = SanityProbe()
    model = BoringConvModule()
    trainer = _trainer(
        tmp_path,
        [callback, sanity],
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
    )
    trainer.fit(model)

    assert sanity.dense_during_sanity is True  # never decomposed during the sanity check
    assert callback.layer_table
    classes = _factorized(model)
    for row in callback.layer_table:
        assert row["method"] in {"svd", "tucker", "cp"}
        assert set(row["candidates"]) == {"svd", "tucker", "cp"}
        assert row["candidates"][row["method"]] == pytest.approx(min(row["candidates"].values()), abs=1e-6)
        assert row["rel_error"] == pytest.approx(row["candidates"][row["method"]], abs=1e-5)
        assert classes[row["name"]].lower().startswith(row["method"])
    assert 2.5 <= callback.summary["ratio"] <= 2.75


# --------------------------------------------------------------------------------------------------------
# 5. optimizer contract and LR schedule
# --------------------------------------------------------------------------------------------------------


class OptimizerProbe(Callback):
    """Checks the optimizer right after the rewrite at epoch 1 (runs after the compression callback)."""

    def __init__(self) -> None:
        self.checked = False
        self.factor_changed: bool | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.old_params = list(pl_module.parameters())
            optimizer = trainer.optimizers[0]
            self.stem_momentum = optimizer.state[pl_module.net.stem.weight]["momentum_buffer"].clone()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != 1:
            return
        optimizer = trainer.optimizers[0]
        in_optimizer = {id(p) for p in optimizer_parameters(trainer)}
        current = list(pl_module.parameters())
        current_ids = {id(p) for p in current}
        removed = [p for p in self.old_params if id(p) not in current_ids]
        added = [p for p in current if all(p is not old for old in self.old_params)]
        self.removed, self.added = len(removed), len(added)
        self.no_stale = not any(id(p) in in_optimizer for p in removed)
        self.all_new = all(id(p) in in_optimizer for p in added)
        self.exact = in_optimizer == current_ids and len(optimizer_parameters(trainer)) == len(current)
        self.momentum_kept = torch.equal(
            optimizer.state[pl_module.net.stem.weight]["momentum_buffer"], self.stem_momentum
        )
        self.new_without_state = all(len(optimizer.state.get(p, {})) == 0 for p in added)
        self.lr = optimizer.param_groups[0]["lr"]
        self.last_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.factor_before = {id(p): p.detach().clone() for p in added}
        self.added_params = added
        self.checked = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.current_epoch == 1 and self.factor_changed is None:
            self.factor_changed = all(
                not torch.equal(p.detach(), self.factor_before[id(p)]) for p in self.added_params
            )


def test_optimizer_is_rebuilt_and_lr_schedule_continues(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = TensorCompressionCallback(method="tucker", target_ratio=2.0, start_epoch=1, verbose=False)
    probe = OptimizerProbe()
    trainer = _trainer(tmp_path, [callback, probe], max_epochs=3, limit_train_batches=2)
    trainer.fit(BoringConvModule())

    assert probe.checked
    assert probe.removed > 0 and probe.added > 0
    assert probe.no_stale, "a removed parameter is still in the optimizer"
    assert probe.all_new, "a new factor parameter is missing from the optimizer"
    assert probe.exact
    assert probe.momentum_kept, "momentum of an untouched parameter was lost"
    assert probe.new_without_state
    assert probe.factor_changed is True, "factor weights did not change after an optimizer step"
    # The cosine schedule continues: lr at epoch 1 is the one the old schedule had, not the base lr.
    assert probe.last_epoch == 1
    assert probe.lr == pytest.approx(_cosine_lr(1), rel=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(_cosine_lr(3), rel=1e-6)


def test_recompose_epoch_returns_to_dense_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _dense_params()
    callback = TensorCompressionCallback(
        method="svd", target_ratio=2.0, start_epoch=1, recompose_epoch=2, verbose=False
    )
    probe = EpochProbe()
    trainer = _trainer(tmp_path, [callback, probe], max_epochs=3, limit_train_batches=2)
    model = BoringConvModule()
    trainer.fit(model)

    assert probe.factorized[1] and not probe.factorized[2]
    assert probe.params[2] == dense
    assert callback.recomposed and callback.summary["recomposed"] is True
    assert [e["method"] for e in callback.history[-len(probe.factorized[1]) :]] == ["dense"] * len(
        probe.factorized[1]
    )
    assert {id(p) for p in optimizer_parameters(trainer)} == {id(p) for p in model.parameters()}
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in model.net.children())


# --------------------------------------------------------------------------------------------------------
# 2. resume and load_from_checkpoint
# --------------------------------------------------------------------------------------------------------


class CompressibleBoring(CompressibleMixin, BoringConvModule):
    pass


class RestoreProbe(Callback):
    """Captures weights, optimizer and scheduler state once everything is restored (on_train_start)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state_dict = {k: v.clone() for k, v in pl_module.state_dict().items()}
        # state_dict() holds the live momentum tensors, which later steps update in place: copy them.
        self.optimizer_state = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.last_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.factorized = _factorized(pl_module)


def _train_and_checkpoint(tmp_path: Path, module_cls: type[BoringConvModule] = BoringConvModule):
    torch.manual_seed(0)
    model = module_cls()
    callback = TensorCompressionCallback(method="auto", target_ratio=2.5, start_epoch=1, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(
        tmp_path, [callback, checkpoint], max_epochs=2, limit_train_batches=2, enable_checkpointing=True
    )
    trainer.fit(model)
    return model, callback, tmp_path / "ckpt" / "last.ckpt"


def test_resume_from_checkpoint_on_a_fresh_dense_model(tmp_path: Path) -> None:
    model, callback, last = _train_and_checkpoint(tmp_path)
    saved = torch.load(last, map_location="cpu", weights_only=True)  # plain types only
    assert saved["tetra_lightning"]["history"] == callback.history
    factorized = _factorized(model)
    assert factorized

    fresh, fresh_callback, probe, epochs = BoringConvModule(), None, RestoreProbe(), EpochProbe()
    fresh_callback = TensorCompressionCallback(method="auto", target_ratio=2.5, start_epoch=1, verbose=False)
    trainer = _trainer(tmp_path, [fresh_callback, probe, epochs], max_epochs=3, limit_train_batches=2)
    trainer.fit(fresh, ckpt_path=str(last))

    assert probe.factorized == factorized
    assert probe.state_dict.keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(probe.state_dict[key], value), key
    old_opt = saved["optimizer_states"][0]
    assert probe.optimizer_state["param_groups"][0]["lr"] == old_opt["param_groups"][0]["lr"]
    assert old_opt["state"] and probe.optimizer_state["state"].keys() == old_opt["state"].keys()
    for index, state in old_opt["state"].items():
        assert torch.equal(probe.optimizer_state["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert probe.last_epoch == saved["lr_schedulers"][0]["last_epoch"] == 2
    # No second decomposition: same history, same layers after the resumed epoch.
    assert fresh_callback.stages_done == 1
    assert fresh_callback.history == callback.history
    assert epochs.factorized[2] == factorized
    assert epochs.params[2] == sum(p.numel() for p in model.parameters())


def test_load_from_checkpoint_through_the_mixin(tmp_path: Path) -> None:
    model, callback, last = _train_and_checkpoint(tmp_path, CompressibleBoring)
    loaded = CompressibleBoring.load_from_checkpoint(last, weights_only=True)
    assert _factorized(loaded) == _factorized(model)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    x = torch.randn(4, 3, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))

    # Without the mixin: restore_from_checkpoint on any fresh model, from a path or a dict.
    plain = restore_from_checkpoint(BoringConvModule(), last)
    assert torch.equal(plain.eval()(x), model(x))
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    again = restore_from_checkpoint(BoringConvModule(), checkpoint)
    assert _factorized(again) == _factorized(model)
    # Replaying twice is a no-op.
    restore_from_checkpoint(again, checkpoint)
    assert _factorized(again) == _factorized(model)


# --------------------------------------------------------------------------------------------------------
# 3. DDP
# --------------------------------------------------------------------------------------------------------


def _ddp_extra(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    return {"factorized": _factorized(pl_module), "ratio": trainer.callback_metrics["compression/ratio"].item()}


def test_ddp_spawn_ranks_end_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = TensorCompressionCallback(method="auto", target_ratio=2.5, start_epoch=1, verbose=False)
    trainer = _trainer(
        tmp_path,
        [callback, SaveStatePerRank(tmp_path, extra=_ddp_extra)],
        max_epochs=2,
        limit_train_batches=2,
        strategy="ddp_spawn",
        devices=2,
    )
    trainer.fit(BoringConvModule())

    rank0, rank1 = load_rank_states(tmp_path)
    assert rank0["factorized"] and rank0["factorized"] == rank1["factorized"]
    for state in (rank0, rank1):
        assert 2.5 <= state["ratio"] <= 2.75


# --------------------------------------------------------------------------------------------------------
# 4. bad input
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"method": "qr"},
            ValueError,
            "`method` must be one of 'auto', 'svd', 'cp', 'tucker', 'tt', got 'qr'",
        ),
        ({"target_ratio": 1.0}, ValueError, r"`target_ratio` must be > 1 .* got 1.0"),
        ({"target_ratio": 0.5}, ValueError, r"`target_ratio` must be > 1"),
        ({"target_ratio": "4"}, TypeError, r"`target_ratio` must be a number > 1, got str"),
        ({"start_epoch": -1}, ValueError, r"`start_epoch` must be an int >= 0, got -1"),
        ({"steps": 0}, ValueError, r"`steps` must be an int >= 1, got 0"),
        ({"epochs_between_steps": 0}, ValueError, r"`epochs_between_steps` must be an int >= 1"),
        (
            {"start_epoch": 2, "recompose_epoch": 2},
            ValueError,
            r"`recompose_epoch` must be None or an int after",
        ),
        ({"ratio_metric": "flops"}, ValueError, r"`ratio_metric` must be one of 'params', 'bytes'"),
        ({"auto_methods": ("svd", "qr")}, ValueError, r"`auto_methods` must be a non-empty subset"),
        ({"filter_fn": "conv"}, TypeError, r"`filter_fn` must be callable"),
        ({"allocation": "uniform"}, ValueError, r"`allocation` must be one of 'greedy', 'capped'"),
        ({"max_rel_error": 0.0}, ValueError, r"`max_rel_error` must be a number in \(0, 1\]"),
        ({"min_rank": 0}, ValueError, r"`min_rank` must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TensorCompressionCallback(**kwargs)


def test_start_epoch_beyond_max_epochs_is_a_misconfiguration(tmp_path: Path) -> None:
    callback = TensorCompressionCallback(start_epoch=3)
    with pytest.raises(MisconfigurationException, match=r"decompose at epoch 3 .* max_epochs=3"):
        _trainer(tmp_path, [callback], max_epochs=3).fit(BoringConvModule())
    staged = TensorCompressionCallback(start_epoch=1, steps=3)
    with pytest.raises(MisconfigurationException, match=r"decompose at epoch 3 \(start_epoch=1, steps=3"):
        _trainer(tmp_path, [staged], max_epochs=3).fit(BoringConvModule())
    recompose = TensorCompressionCallback(start_epoch=1, recompose_epoch=4)
    with pytest.raises(
        MisconfigurationException, match=r"`recompose_epoch=4` is never reached with max_epochs=3"
    ):
        _trainer(tmp_path, [recompose], max_epochs=3).fit(BoringConvModule())


def test_nothing_to_compress(tmp_path: Path) -> None:
    callback = TensorCompressionCallback(filter_fn=lambda module, name: False)
    with pytest.raises(
        MisconfigurationException, match="found nothing to compress: no nn.Linear / nn.Conv2d"
    ):
        _trainer(tmp_path, [callback], max_epochs=2).fit(BoringConvModule())

    # Layers exist but all are too small to save anything: a warning, the model stays dense.
    small = TensorCompressionCallback(method="svd", start_epoch=0, min_layer_params=10**6, verbose=False)
    model = BoringConvModule()
    with pytest.warns(UserWarning, match="nothing was factorized at stage 0"):
        _trainer(tmp_path, [small], max_epochs=1, limit_train_batches=1).fit(model)
    assert not _factorized(model)
    assert small.stages_done == 1 and small.history == []


def test_ratio_metric_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BoringConvModule()
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    callback = TensorCompressionCallback(
        method="svd", target_ratio=2.0, start_epoch=0, ratio_metric="bytes", verbose=False
    )
    _trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(model)
    after = sum(p.numel() * p.element_size() for p in model.parameters())
    assert callback.summary["bytes_dense"] == dense_bytes
    assert callback.summary["ratio"] == pytest.approx(dense_bytes / after)
    assert 2.0 <= dense_bytes / after <= 2.2


# --------------------------------------------------------------------------------------------------------
# allocation strategies through the callback
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["greedy", "capped", "fisher", "fisher_capped"])
def test_allocation_strategies_reach_the_ratio(tmp_path: Path, allocation: str) -> None:
    torch.manual_seed(0)
    callback = TensorCompressionCallback(
        method="svd",
        target_ratio=3.0,
        start_epoch=1,
        allocation=allocation,
        max_rel_error=0.9,
        min_rank=2,
        verbose=False,
    )
    _trainer(tmp_path, [callback], max_epochs=2).fit(BoringConvModule())
    assert 3.0 <= callback.summary["ratio"] <= 3.3
    assert callback.summary["allocation"] == allocation  # "fisher*" found the gradients of epoch 0
    if allocation.endswith("capped"):
        cap = callback.summary["cap_max_rel_error"]
        assert all(row["rel_error"] <= cap + 1e-3 for row in callback.layer_table)
    assert callback._grad_sq == {} and callback._grad_batches == 0  # consumed by the stage


def test_fisher_without_gradients_falls_back_with_a_warning(tmp_path: Path) -> None:
    callback = TensorCompressionCallback(method="svd", target_ratio=2.0, start_epoch=0, allocation="fisher")
    with pytest.warns(UserWarning, match="no training gradients were seen"):
        _trainer(tmp_path, [callback], max_epochs=1).fit(BoringConvModule())
    assert callback.summary["allocation"] == "greedy"
    assert 2.0 <= callback.summary["ratio"] <= 2.2


# --------------------------------------------------------------------------------------------------------
# gradual (multi-step, MUSCO-style) compression
# --------------------------------------------------------------------------------------------------------


def test_later_stages_decompose_small_factorized_layers_further(tmp_path: Path) -> None:
    # After a first stage the factors of a layer can hold fewer than min_layer_params parameters; the later stages
    # judge a factorized layer by its dense size, so they still reach the target (6.9x of 10x before the fix).
    torch.manual_seed(0)
    callback = TensorCompressionCallback(
        method="svd", target_ratio=10.0, start_epoch=1, steps=3, epochs_between_steps=1, verbose=False
    )
    probe = EpochProbe()
    _trainer(tmp_path, [callback, probe], max_epochs=4, limit_train_batches=2).fit(BoringConvModule())
    dense = _dense_params()
    ratios = [dense / probe.params[epoch] for epoch in (1, 2, 3)]
    assert ratios[0] < ratios[1] < ratios[2]
    assert 10.0 <= ratios[2] <= 12.0, ratios
    ranks: dict[str, list[int]] = {}
    for row in callback.layer_table:
        ranks.setdefault(row["name"], []).append(row["ranks"][0])
    assert any(len(r) > 1 for r in ranks.values())  # a factorized layer was decomposed again
    assert all(r == sorted(r, reverse=True) for r in ranks.values()), ranks


def test_gradual_compression_of_a_young_model_loses_less_than_one_shot(tmp_path: Path) -> None:
    # MUSCO's argument on a tiny model: rewritten after one epoch, when it has barely learned, the model
    # compressed 4x in one shot stays stuck near chance (final training loss 1.33 for ln 4 = 1.39), while three
    # stages of 4 ** (1 / 3) each, one epoch apart, keep it learning (0.77). A model trained longer before the
    # rewrite shows no such gap (measured 0.34 one-shot vs 0.39 in three stages at 6x from epoch 4).
    losses = {}
    for steps in (1, 3):
        torch.manual_seed(0)
        model = BoringConvModule()
        callback = TensorCompressionCallback(method="svd", target_ratio=4.0, start_epoch=1, steps=steps, verbose=False)
        _trainer(tmp_path, [callback], max_epochs=7).fit(model)
        assert 4.0 <= callback.summary["ratio"] <= 4.6
        losses[steps] = model.mean_epoch_loss(6)
    assert losses[3] < 0.8 * losses[1], losses
