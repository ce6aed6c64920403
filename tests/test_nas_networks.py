from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from tetra_lightning.nas import (
    SSS_GENOTYPE,
    NATSLightningModule,
    NATSSizeSpace,
    NATSTopologySpace,
    build_nats_network,
    nats_layer_channels,
)

ZERO_COST = (Path(__file__).resolve().parents[2] / "shared" / "data" / "nas-bench-201"
             / "nb201_zero_cost_subset_naslib.csv")
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# NAS-Bench-201 `params` (MB = 1e6 parameters) as exported by NASLib (naslib/data/zc_nasbench201.json, commit
# 1bdbd960), copied into nb201_zero_cost_subset_naslib.csv: (dataset classes, arch_index, arch_str, params)
CITED = [
    (10, 1618, "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|avg_pool_3x3~1|none~2|", 0.073306),
    (10, 1666, "|nor_conv_1x1~0|+|avg_pool_3x3~0|skip_connect~1|+|nor_conv_3x3~0|nor_conv_1x1~1|avg_pool_3x3~2|",
     0.372346),
    (10, 1462, ALL_CONV3, 1.531546),
    (100, 1618, "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|avg_pool_3x3~1|none~2|", 0.079156),
    (100, 1178, "|avg_pool_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     0.378196),
    (120, 1178, "|avg_pool_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     0.379496),
    (120, 1462, ALL_CONV3, 1.538696),
]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macro_params(C: int, num_classes: int) -> int:
    """Parameters outside the cells: stem conv+BN, two residual reduction blocks, last BN, classifier."""
    stem = 27 * C + 2 * C
    block_1 = 9 * C * 2 * C + 4 * C + 9 * (2 * C) ** 2 + 4 * C + C * 2 * C
    block_2 = 9 * 2 * C * 4 * C + 8 * C + 9 * (4 * C) ** 2 + 8 * C + 2 * C * 4 * C
    return stem + block_1 + block_2 + 8 * C + 4 * C * num_classes + num_classes


@pytest.mark.parametrize(("num_classes", "index", "arch", "params"), CITED)
def test_parameter_counts_equal_the_published_ones(num_classes: int, index: int, arch: str, params: float) -> None:
    assert NATSTopologySpace().index(arch) == index
    assert n_params(build_nats_network(arch, num_classes)) == round(params * 1e6)


@pytest.mark.skipif(not ZERO_COST.is_file(), reason=f"{ZERO_COST} not found (shared data folder absent)")
def test_parameter_counts_equal_the_zero_cost_table_on_a_sample() -> None:
    with open(ZERO_COST, newline="") as fh:
        rows = list(csv.DictReader(fh))[::60]  # 37 of the 2173 rows, all three datasets
    classes = {"cifar10": 10, "cifar100": 100, "ImageNet16-120": 120}
    for row in rows:
        assert n_params(build_nats_network(row["arch_str"], classes[row["dataset"]])) == round(
            float(row["params"]) * 1e6), row


@pytest.mark.parametrize(("C", "N", "num_classes"), [(16, 5, 10), (8, 1, 100), (4, 3, 7)])
def test_parameter_count_formulas(C: int, N: int, num_classes: int) -> None:
    # cells of only `none` edges have no parameters; a cell of six 3x3 ReLU-Conv-BN of width c has 6 (9c^2 + 2c)
    assert n_params(build_nats_network(ALL_NONE, num_classes, C, N)) == macro_params(C, num_classes)
    conv_cells = sum(N * 6 * (9 * c * c + 2 * c) for c in (C, 2 * C, 4 * C))
    assert n_params(build_nats_network(ALL_CONV3, num_classes, C, N)) == macro_params(C, num_classes) + conv_cells


def test_size_space_network_is_the_fixed_cell_with_per_layer_channels() -> None:
    # with the tss channels of C=16, N=1 the sss network is tss arch 9930 (its fixed genotype) with N=1
    assert nats_layer_channels(16, 1) == [16, 32, 32, 64, 64]
    assert NATSTopologySpace().index(SSS_GENOTYPE) == 9930
    sss_net = build_nats_network("16:32:32:64:64")
    assert n_params(sss_net) == n_params(build_nats_network(SSS_GENOTYPE, 10, C=16, N=1))
    assert [type(c).__name__ for c in sss_net.cells] == ["InferCell", "ResNetBasicblock", "InferCell",
                                                        "ResNetBasicblock", "InferCell"]
    # channel changes inside a cell: edges from node 0 map 32 -> 48 channels (two 3x3 ReLU-Conv-BN and, on the
    # skip edge 0 -> 3, a 1x1 conv + BN), the three other 3x3 edges keep 48
    net = build_nats_network("64:32:48:16:64", num_classes=10)
    cell = net.cells[2]
    assert (cell.in_channels, cell.out_channels) == (32, 48)
    expected_cell = 2 * (9 * 32 * 48 + 96) + 3 * (9 * 48 * 48 + 96) + (32 * 48 + 96)
    assert n_params(cell) == expected_cell
    assert n_params(build_nats_network("8:8:8:8:8")) == 11714
    assert n_params(NATSSizeSpace().build_network(32767)) == 713674


def test_forward_shapes_on_both_spaces() -> None:
    x = torch.randn(2, 3, 32, 32)
    for arch, kwargs in [(ALL_CONV3, {"C": 4, "N": 1}), ("8:16:8:16:24", {}),
                         ("|skip_connect~0|+|avg_pool_3x3~0|none~1|+|nor_conv_1x1~0|skip_connect~1|none~2|",
                          {"C": 4, "N": 2})]:
        net = build_nats_network(arch, num_classes=7, **kwargs).eval()
        assert net(x).shape == (2, 7)
    assert build_nats_network({"layer_0": 8, "layer_1": 8, "layer_2": 8, "layer_3": 8, "layer_4": 16},
                              space="sss").channels == (8, 8, 8, 8, 16)
    assert build_nats_network(9930, space="tss", C=4, N=1).ops[3] == "skip_connect"
    # an all-`none` cell passes nothing: the stage output (and so the logits) no longer depend on the input
    net = build_nats_network(ALL_NONE, C=4, N=1).eval()
    assert torch.allclose(net(x)[0], net(torch.randn(2, 3, 32, 32))[0])


def test_build_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="needs `space='tss'` or `space='sss'`"):
        build_nats_network(17)
    with pytest.raises(ValueError, match="`C` must be a positive int"):
        build_nats_network(ALL_NONE, C=0)
    with pytest.raises(ValueError, match="not a NATS-Bench size-space architecture"):
        build_nats_network("8:8:8")
    with pytest.raises(ValueError, match="`lr` must be positive"):
        NATSLightningModule(ALL_NONE, lr=0.0)


def test_lightning_module_trains_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    module = NATSLightningModule(ALL_CONV3, num_classes=4, C=4, N=1, lr=0.05, weight_decay=0.0)
    with torch.no_grad():
        loss_before = module.loss_fn(module.eval()(x), y).item()
    module.train()
    trainer = Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    assert trainer.callback_metrics["train_loss"].item() < 0.5 * loss_before
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to min_lr
    assert 0.0 <= trainer.callback_metrics["val_acc"].item() <= 1.0
    trainer.save_checkpoint(tmp_path / "nats.ckpt")
    restored = NATSLightningModule.load_from_checkpoint(tmp_path / "nats.ckpt")
    module.eval(), restored.eval()
    assert restored.num_parameters == module.num_parameters == n_params(build_nats_network(ALL_CONV3, 4, 4, 1))
    assert torch.equal(restored(x), module(x))
