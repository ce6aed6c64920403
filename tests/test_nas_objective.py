from __future__ import annotations

from pathlib import Path

import pytest

from tetra_lightning.nas import (
    EDGES,
    NB201_OPS,
    TABLE_ENV_VAR,
    NASBench201Objective,
    arch_str_to_ops,
    ops_to_arch_str,
)
from tetra_lightning.optim import TetraOpt

TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nas-bench-201" / "nb201_accuracy.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(),
                                 reason=f"NAS-Bench-201 table not found at {TABLE} (shared data folder absent)")

ARCH_1 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")


def test_arch_string_and_op_list_round_trip() -> None:
    ops = arch_str_to_ops(ARCH_1)
    assert ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert ops_to_arch_str(ops) == ARCH_1
    with pytest.raises(ValueError, match="has 6 edges"):
        ops_to_arch_str(ops[:5])
    with pytest.raises(ValueError, match="unknown op 'conv_5x5'"):
        ops_to_arch_str(("conv_5x5",) + ops[1:])
    with pytest.raises(ValueError, match="not a NAS-Bench-201 architecture string"):
        arch_str_to_ops("|nor_conv_3x3~0|+|nor_conv_3x3~1|")


def test_missing_table_error_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TABLE_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=f"pass `table=.*{TABLE_ENV_VAR}"):
        NASBench201Objective("cifar10")
    with pytest.raises(FileNotFoundError, match="not found"):
        NASBench201Objective("cifar10", table=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        NASBench201Objective("mnist", table=tmp_path / "missing.csv")


class FakeNATS:
    """Stands in for `nats_bench.create(path, 'tss')`: records the queries it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __len__(self) -> int:
        return 15625

    def query_index_by_arch(self, arch: str) -> int:
        return 1 if arch == ARCH_1 else 7

    def arch(self, index: int) -> str:
        return ARCH_1

    def get_more_info(self, index: int, dataset: str, hp: str = "12", is_random: bool = True) -> dict:
        self.calls.append((index, dataset, hp, is_random))
        return {"valid-accuracy": 50.0 + float(hp), "test-accuracy": 60.0 + float(hp)}


def test_api_backend_queries_the_protocol_metrics() -> None:
    api = FakeNATS()
    obj = NASBench201Objective("cifar10", api=api)
    assert obj(obj.params(ARCH_1)) == 62.0  # 12-epoch validation accuracy
    assert obj.test_accuracy(ARCH_1) == 260.0  # 200-epoch test accuracy
    assert api.calls == [(1, "cifar10-valid", "12", False), (1, "cifar10", "200", False)]
    obj100 = NASBench201Objective("cifar100", api=api)
    obj100.validation_accuracy(5)
    assert api.calls[-1] == (5, "cifar100", "12", False)


@needs_table
def test_table_values_of_known_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TABLE_ENV_VAR, str(TABLE))
    c10 = NASBench201Objective("cifar10")
    assert len(c10) == 15625
    assert c10.index(ARCH_1) == 1 and c10.arch_str(1) == ARCH_1
    assert c10.validation_accuracy(1) == pytest.approx(82.834)
    assert c10.test_accuracy(ARCH_1) == pytest.approx(93.66)
    assert c10.test_accuracy(0) == pytest.approx(85.863333)
    assert c10(c10.params(0)) == pytest.approx(63.364) and c10.n_queries == 1
    # the published optima of the 200-epoch test accuracy
    assert c10.test_accuracy(6111) == pytest.approx(94.373333)
    c100 = NASBench201Objective("cifar100", table=TABLE)
    assert c100.validation_accuracy(ARCH_1) == pytest.approx(57.8)
    assert c100.test_accuracy(1) == pytest.approx(70.293333)
    assert c100.test_accuracy(9930) == pytest.approx(73.513333)
    in16 = NASBench201Objective("ImageNet16-120", table=TABLE)
    assert in16.validation_accuracy(1) == pytest.approx(35.433333)
    assert in16.test_accuracy(1) == pytest.approx(44.033333)
    assert in16.test_accuracy(857) == pytest.approx(47.311111)
    assert c10.top_fraction_threshold(0.001) == pytest.approx(94.18, abs=0.01)


@needs_table
def test_space_covers_all_cells_and_search_runs() -> None:
    obj = NASBench201Objective("cifar10", table=TABLE)
    assert obj.space.size == 15625 and obj.space.names == EDGES
    assert all(dim.grid == NB201_OPS for dim in obj.space.values())
    # every op list of the product space maps to a distinct official index
    assert obj.index(obj.params(ARCH_1)) == 1
    opt = TetraOpt(obj.space, budget=30, seed=0)
    while batch := opt.ask(5):
        opt.tell(batch, [obj(p) for p in batch])
    assert obj.n_queries == 30
    assert opt.best_value == max(h["value"] for h in opt.history)
    assert opt.best_value > 80.0  # 12-epoch validation accuracy; the best of all 15625 cells is 84.89
