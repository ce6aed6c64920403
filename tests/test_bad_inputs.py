"""The bad inputs and faults the library has been tried with, one test per case, grouped by area.

Each case ends in an error that names the problem and the fix, a warning with a recorded reason, or the right
result: never in a silently wrong model or a raw error from deep inside torch, SQLAlchemy or Optuna. Every test
here failed before its fix (issue 19); add new cases to the area they belong to.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.trainer import quiet_trainer
from tetra_lightning.callbacks import PruningCallback, TensorCompressionCallback
from tetra_lightning.checkpoint import CompressibleMixin, check_checkpoint_fits, replay_history
from tetra_lightning.decompose import SVDConfig, SVDLinear, TuckerConfig, compress_, restore_structure
from tetra_lightning.prune import prune_, restore_pruned_structure
from tetra_lightning.report import count_parameters, tied_parameters
from tetra_lightning.tuner.storage import make_storage


# ----------------------------------------------------------------------------------------------------------
# tiny real models
# ----------------------------------------------------------------------------------------------------------
class Aliased(nn.Module):
    """One Linear registered under two names (``a`` and ``b``), applied twice, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = self.a
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class TiedLinears(nn.Module):
    """Two Linears sharing one weight (``dec.weight = enc.weight``), a wide body and a head."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.enc = nn.Linear(width, width, bias=False)
        self.dec = nn.Linear(width, width)
        self.dec.weight = self.enc.weight
        self.body = nn.Linear(width, 256)
        self.head = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dec(torch.relu(self.enc(x))))
        return self.head(torch.relu(self.body(h)))


class TiedLM(nn.Module):
    """Token embedding tied to the output layer (``head.weight = emb.weight``) around a residual MLP."""

    def __init__(self, vocab: int = 40, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).mean(1)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)


class Net(pl.LightningModule):
    """A LightningModule around any ``net`` trained with cross-entropy on fixed random data."""

    def __init__(self, net: nn.Module, inputs: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.net = net
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(inputs, torch.randint(0, classes, (len(inputs),), generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def _lm_module() -> Net:
    torch.manual_seed(0)
    return Net(TiedLM(), torch.randint(0, 40, (32, 5), generator=torch.Generator().manual_seed(1)), 40)


def _counted_once(history: list[dict[str, Any]]) -> int:
    """The model's parameter count after ``compress_`` as its history tells it."""
    return sum(entry.get("params_after", entry["params_before"]) for entry in history)


# ----------------------------------------------------------------------------------------------------------
# compress_: aliases, tied weights, layers it cannot factorize, what it is given
# ----------------------------------------------------------------------------------------------------------
def test_compress_module_registered_under_two_names_is_compressed_once() -> None:
    torch.manual_seed(0)
    model, x = Aliased(), torch.randn(8, 64)
    dense = count_parameters(model)
    history = compress_(model, SVDConfig(rank=0.25))
    assert isinstance(model.a, SVDLinear) and model.b is model.a  # every alias points at the new module
    entry = next(e for e in history if e["name"] == "a")
    assert entry["aliases"] == ["b"]
    assert sum(e["params_before"] for e in history) == dense == 4420
    assert count_parameters(model) == _counted_once(history) < dense / 3

    fresh = restore_structure(Aliased(), json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    assert fresh.b is fresh.a and torch.equal(fresh(x), model(x))


def test_compress_two_linears_sharing_one_weight_keep_the_tie_and_count_it_once() -> None:
    model = TiedLinears()
    dense = count_parameters(model)
    with pytest.warns(UserWarning, match=r"compress_ skips 'enc': it shares 'enc.weight' with 'dec.weight'"):
        history = compress_(model, SVDConfig(rank=0.25))
    assert type(model.enc) is nn.Linear and model.dec.weight is model.enc.weight
    skipped = {entry["name"]: entry for entry in history if "skipped" in entry}
    assert {"enc", "dec"} <= set(skipped) and "tied weights" in skipped["dec"]["skipped"]
    assert skipped["dec"]["tied_with"] == ["enc.weight"]
    # the history counts the shared weight once: its before-counts add up to the model's
    assert sum(entry["params_before"] for entry in history) == dense
    assert count_parameters(model) == _counted_once(history) < dense


def test_compress_mapping_naming_a_tied_layer_raises() -> None:
    with pytest.raises(ValueError, match=r"module 'dec' shares 'dec.weight' with 'enc.weight' \(tied weights\).*"
                                         r"Leave 'dec' out of `config`"):
        compress_(TiedLinears(), {"dec": SVDConfig(rank=4)})


def test_compression_callback_keeps_tied_weights_and_counts_them_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net(TiedLinears(), torch.randn(32, 64), 4)
    dense = count_parameters(model)
    callback = TensorCompressionCallback(
        method="svd", target_ratio=4.0, start_epoch=0, min_layer_params=0, verbose=False
    )
    quiet_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(model)
    assert type(model.net.enc) is nn.Linear and model.net.dec.weight is model.net.enc.weight
    factorized = {entry["name"] for entry in callback.history}
    assert "net.body" in factorized and not {"net.enc", "net.dec"} & factorized
    assert callback.summary["ratio"] == pytest.approx(dense / count_parameters(model))
    assert callback.summary["ratio"] >= 4.0


def test_compress_model_with_only_unsupported_conv_types_warns_and_records_a_skip_per_layer() -> None:
    model = nn.Sequential(nn.Conv1d(8, 16, 3), nn.Conv3d(4, 8, 3), nn.ConvTranspose2d(8, 8, 3))
    with pytest.warns(UserWarning, match=r"compress_ skips .*'1' \(Conv3d\), '2' \(ConvTranspose2d\)"):
        history = compress_(model, SVDConfig(rank=0.5))
    assert [entry["name"] for entry in history] == ["0", "1", "2"]  # no layer silently left out
    reasons = {entry["name"]: entry["skipped"] for entry in history if "skipped" in entry}
    assert "ConvTranspose2d" in reasons["2"] and "Conv3d" in reasons["1"] and "filter_fn" in reasons["2"]
    assert "0" not in reasons or "Conv1d" in reasons["0"]  # Conv1d: factorized, or skipped naming its type


def test_compress_model_given_as_a_string_raises() -> None:
    with pytest.raises(TypeError, match=r"`model` must be an nn.Module, got str 'model'\. Pass the module"):
        compress_("model", SVDConfig(rank=0.5))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# restore_structure / history replay: validated against the model before anything is replaced
# ----------------------------------------------------------------------------------------------------------
def _svd_history() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    return json.loads(json.dumps(compress_(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)),
                                           SVDConfig(rank=0.25))))


def test_restore_structure_on_a_module_of_another_type_raises() -> None:
    history = compress_(nn.Sequential(nn.Conv2d(10, 10, 3)), TuckerConfig(rank=0.3))
    other = nn.Sequential(nn.Linear(10, 10))
    with pytest.raises(ValueError, match=r"`history\[0\]` replaces '0' by a TuckerConv2d made from a Conv2d, but "
                                         r"the model's '0' is a Linear\. Replay"):
        restore_structure(other, history)
    assert type(other[0]) is nn.Linear


def test_restore_structure_on_a_module_of_another_shape_raises() -> None:
    history = compress_(nn.Sequential(nn.Conv2d(10, 10, 3)), TuckerConfig(rank=0.3))
    other = nn.Sequential(nn.Conv2d(20, 10, 3))
    with pytest.raises(ValueError, match=r"`history\[0\]`.*'0'.*in_channels=20 in the model, 10 in the history"):
        restore_structure(other, history)
    assert type(other[0]) is nn.Conv2d


def test_restore_structure_checks_every_entry_before_replacing_anything() -> None:
    other = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.raises(ValueError, match=r"`history\[1\]`.*'2'.*out_features=8 in the model, 4 in the history"):
        restore_structure(other, _svd_history())
    assert type(other[0]) is nn.Linear  # the first entry fitted, but nothing was replaced


def test_history_entry_without_rank_raises() -> None:
    history = _svd_history()
    del history[0]["spec"]["rank"], history[0]["ranks"]
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"`history\[0\]` \(module '0'\): the spec of SVDLinear lacks 'rank'"):
        restore_structure(model, history)
    assert type(model[0]) is nn.Linear


def test_history_entry_with_a_negative_rank_raises() -> None:
    history = _svd_history()
    history[0]["spec"]["rank"] = -3
    with pytest.raises(ValueError, match=r"`history\[0\]` \(module '0'\): .*`rank` must be a positive int or a list "
                                         r"of positive ints, got -3"):
        restore_structure(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)), history)


@pytest.mark.parametrize("replay", [restore_structure, restore_pruned_structure, replay_history])
def test_history_none_raises(replay: Any) -> None:
    with pytest.raises(TypeError, match=r"`history` must be a list of history entries \(dicts\).* got None\. Pass"):
        replay(nn.Linear(4, 4), None)


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------
class PlainConvModule(Net):
    """No CompressibleMixin, no ``example_input_array``."""

    def __init__(self) -> None:
        super().__init__(_conv_net(), torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)), 4)


def test_load_from_checkpoint_without_the_mixin_names_the_fix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PlainConvModule()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = PruningCallback(pruning_ratio=0.5, start_epoch=0, verbose=False, example_input=torch.zeros(1, 3, 8, 8))
    trainer = quiet_trainer(tmp_path, [callback, checkpoint], max_epochs=1, enable_checkpointing=True)
    with pytest.warns(UserWarning, match=r"PlainConvModule.load_from_checkpoint` needs `class PlainConvModule\("
                                         r"CompressibleMixin, LightningModule\)`.*restore_from_checkpoint"):
        trainer.fit(model)
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(RuntimeError, match=r"size mismatch"):  # torch's own error: nothing of ours runs there
        PlainConvModule.load_from_checkpoint(last, weights_only=True)
    with pytest.raises(RuntimeError, match=r"The checkpoint holds 1 structural rewrite \(prune\) that "
                                           r"PlainConvModule has not been through: .*net\.0\.weight.*CompressibleMixin.*"
                                           r"restore_from_checkpoint"):
        check_checkpoint_fits(PlainConvModule(), last)

    class Mixed(CompressibleMixin, PlainConvModule):
        pass

    loaded = Mixed.load_from_checkpoint(last, weights_only=True)
    check_checkpoint_fits(loaded, last)  # fits now: nothing raised
    assert loaded.net[0].out_channels == model.net[0].out_channels == 8


# ----------------------------------------------------------------------------------------------------------
# prune_ and PruningCallback
# ----------------------------------------------------------------------------------------------------------
def test_prune_keeps_an_embedding_tied_to_the_output_layer_tied() -> None:
    torch.manual_seed(0)
    model, tokens = TiedLM(), torch.randint(0, 40, (2, 5))
    dense = count_parameters(model)
    history = json.loads(json.dumps(prune_(model, tokens, pruning_ratio=0.5)))
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (40, 16)
    assert tied_parameters(model) == [["emb.weight", "head.weight"]]
    assert history[0]["params_after"] == count_parameters(model) < dense

    fresh = restore_pruned_structure(TiedLM(), history)
    assert fresh.head.weight is fresh.emb.weight
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(tokens), model(tokens))


class TiedChain(nn.Module):
    """``a`` and ``b`` share one square weight and follow each other: no channel of it can go alone."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.hidden = nn.Linear(32, 32)
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(torch.relu(self.inp(x))))
        return self.head(torch.relu(self.b(torch.relu(self.a(h)))))


def test_prune_leaves_channels_that_would_untie_weights_and_records_why() -> None:
    torch.manual_seed(0)
    model = TiedChain()
    with pytest.warns(UserWarning, match=r"prune_ left 3 groups of coupled channels unpruned: pruning them would "
                                         r"untie 'a.weight' = 'b.weight'"):
        history = prune_(model, torch.randn(2, 8), pruning_ratio=0.5)
    assert model.b.weight is model.a.weight and model.a.weight.shape == (32, 32)
    assert model.inp.out_features == 16 and model.hidden.in_features == 16  # the untied channels were pruned
    assert [sorted(item["layers"]) for item in history[0]["untouched"]][0] and all(
        "untie" in item["reason"] for item in history[0]["untouched"]
    )


def test_pruning_callback_keeps_tied_weights_tied(tmp_path: Path) -> None:
    model = _lm_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    quiet_trainer(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True).fit(model)
    assert model.net.head.weight is model.net.emb.weight and model.net.emb.weight.shape == (40, 16)
    assert callback.summary["params_after"] == count_parameters(model)

    fresh = _lm_module()
    resumed = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    quiet_trainer(tmp_path, [resumed], max_epochs=3).fit(fresh, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert fresh.net.head.weight is fresh.net.emb.weight


def test_pruning_callback_resumes_from_the_checkpoint_written_before_the_prune_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    first = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    model = PlainConvModule()  # no example_input_array: the stage traces the first batch's shape
    quiet_trainer(tmp_path, [first, checkpoint], max_epochs=2, enable_checkpointing=True).fit(model)
    before_prune = tmp_path / "ckpt" / "epoch=0.ckpt"
    assert torch.load(before_prune, weights_only=True)["tetra_lightning"]["history"] == []

    resumed = PruningCallback(pruning_ratio=0.5, start_epoch=1, verbose=False)
    fresh = PlainConvModule()
    quiet_trainer(tmp_path, [resumed], max_epochs=2).fit(fresh, ckpt_path=str(before_prune))
    assert resumed.stages_done == 1 and fresh.net[0].out_channels == model.net[0].out_channels == 8
    assert resumed.history[0]["ops"] == first.history[0]["ops"]


def test_pruning_callback_unreachable_target_params_ratio_warns(tmp_path: Path) -> None:
    model = PlainConvModule()
    callback = PruningCallback(target_params_ratio=1e6, start_epoch=0, verbose=False,
                               example_input=torch.zeros(1, 3, 8, 8))
    with pytest.warns(UserWarning, match=r"PruningCallback: target_params_ratio=1e\+06 is not reachable at stage 0 "
                                         r"\(\d+ -> at best \d+ params\).*max_pruning_ratio"):
        quiet_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(model)
    assert callback.stages_done == 1 and count_parameters(model) < callback.summary["params_before"]


class EmbeddingOnly(Net):
    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Embedding(10, 4), nn.Flatten()), torch.randint(0, 10, (16, 1)), 4)


def test_pruning_callback_with_nothing_prunable_raises(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"PruningCallback found nothing to prune: no nn.Linear / "
                                                        r"conv layer in EmbeddingOnly \(it has: Embedding, Flatten"):
        quiet_trainer(tmp_path, [PruningCallback(verbose=False)], max_epochs=2).fit(EmbeddingOnly())
    everything_ignored = PruningCallback(verbose=False, filter_fn=lambda module, name: False)
    with pytest.raises(MisconfigurationException, match=r"found nothing to prune: .*accepted by `filter_fn`"):
        quiet_trainer(tmp_path, [everything_ignored], max_epochs=2).fit(PlainConvModule())


def test_pruning_callback_on_a_model_whose_only_layer_is_its_output_warns(tmp_path: Path) -> None:
    head_only = Net(nn.Linear(8, 4), torch.randn(16, 8), 4)
    callback = PruningCallback(start_epoch=1, verbose=False)
    with pytest.warns(UserWarning, match=r"PruningCallback: nothing was pruned at stage 0"):
        quiet_trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=1).fit(head_only)
    assert head_only.net.out_features == 4 and head_only.net.in_features == 8


# ----------------------------------------------------------------------------------------------------------
# tuner storage URLs
# ----------------------------------------------------------------------------------------------------------
def test_storage_sqlite_url_in_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"names an SQLite file in the folder '.*/missing', which does not exist\. "
                                         r"Create it first"):
        make_storage(f"sqlite:///{tmp_path}/missing/study.db")
    assert not (tmp_path / "missing").exists()


def test_storage_file_that_is_not_a_database_raises(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("a text file, not a database\n" * 20)
    with pytest.raises(ValueError, match=r"notes\.db': the file is not an SQLite database \(it starts with b'a text file, not'\)"
                                         r"\. Pass a new file name"):
        make_storage(f"sqlite:///{notes}")
    assert notes.read_text().startswith("a text file")  # left as it was


def test_storage_truncated_database_raises(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    make_storage(f"sqlite:///{path}")  # creates the tables
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ValueError, match=rf"study\.db': the file is truncated: its header says {len(whole)} bytes, the file has "
                                         rf"{len(whole) // 3}\. .*restore the database from a backup"):
        make_storage(f"sqlite:///{path}")


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="the MySQL driver is installed here")
def test_storage_mysql_url_without_its_driver_raises() -> None:
    with pytest.raises(ImportError, match=r"`storage` 'mysql://tuner:\*\*\*@db-host/tetra' needs the module "
                                          r"'MySQLdb', which is not installed: `pip install pymysql`.*mysql\+pymysql"):
        make_storage("mysql://tuner:secret@db-host/tetra")
