from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from tetra_lightning.nas import (
    EDGES,
    NB201_OPS,
    SSS_CHANNELS,
    NATSBenchObjective,
    NATSSizeSpace,
    NATSTopologySpace,
    TimeBudgetExhausted,
    arch_str_to_ops,
    get_nats_space,
)
from tetra_lightning.optim import Categorical, TetraOpt

TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nas-bench-201" / "nb201_accuracy.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(),
                                 reason=f"NAS-Bench-201 table not found at {TABLE} (shared data folder absent)")


def test_topology_round_trips_over_all_15625_cells() -> None:
    tss = NATSTopologySpace()
    seen = set()
    for index in range(len(tss)):
        arch = tss.arch_str(index)
        params = tss.from_arch(arch)
        ops = tss.ops(index)
        assert tss.index(arch) == index and tss.index(params) == index and tss.index(list(ops)) == index
        assert tss.to_arch(params) == arch and arch_str_to_ops(arch) == ops
        seen.add(ops)
    assert len(seen) == 15625 == len(tss) == tss.search_space().size


def test_topology_index_matches_the_indices_asserted_by_main_tss() -> None:
    # D-X-Y/AutoDL-Projects exps/NATS-Bench/main-tss.py asserts archs 0, 9 and 123 after its seed-88 shuffle
    tss = NATSTopologySpace()
    assert tss.arch_str(0) == "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
    assert tss.arch_str(9) == "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    assert tss.arch_str(123) == "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    state = random.getstate()
    NATSTopologySpace().arch_str(1)
    assert random.getstate() == state  # the global random generator is untouched


@needs_table
def test_topology_index_agrees_with_the_table_arch_index_column() -> None:
    tss = NATSTopologySpace()
    with open(TABLE, newline="") as fh:
        rows = [(int(r["arch_index"]), r["arch_str"]) for r in csv.DictReader(fh)]
    assert len(rows) == 15625
    assert all(tss.arch_str(i) == s and tss.index(s) == i for i, s in rows)
    assert tss.index("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|") == 9930


def test_size_space_index_order_and_round_trips() -> None:
    sss = NATSSizeSpace()
    assert len(sss) == 32768 == sss.search_space().size
    assert sss.index("8:8:8:8:8") == 0 and sss.index("64:64:64:64:64") == 32767
    assert sss.arch_str(1) == "8:8:8:8:16" and sss.arch_str(8) == "8:8:8:16:8" and sss.arch_str(4096) == "16:8:8:8:8"
    assert sss.index("64:32:48:16:64") == 7 * 4096 + 3 * 512 + 5 * 64 + 1 * 8 + 7
    rng = np.random.default_rng(0)
    for index in [0, 32767, *rng.integers(0, 32768, 500).tolist()]:
        arch = sss.arch_str(index)
        params = sss.from_arch(arch)
        assert sss.index(arch) == index and sss.index(params) == index and sss.to_arch(params) == arch
        assert sss.index(list(sss.channels(index))) == index
        assert all(params[f"layer_{i}"] == int(c) for i, c in enumerate(arch.split(":")))
    dims = sss.search_space()
    assert list(dims) == [f"layer_{i}" for i in range(5)]
    assert all(isinstance(d, Categorical) and d.choices == SSS_CHANNELS for d in dims.values())


def test_spaces_reject_bad_architectures() -> None:
    tss, sss = NATSTopologySpace(), NATSSizeSpace()
    with pytest.raises(ValueError, match=r"arch_index must be in \[0, 15624\], got 15625"):
        tss.arch_str(15625)
    with pytest.raises(ValueError, match="miss the edge"):
        tss.from_arch({"1<-0": "none"})
    with pytest.raises(ValueError, match="not a NATS-Bench size-space architecture"):
        sss.channels("64:32:48:16")
    with pytest.raises(ValueError, match="not a NATS-Bench size-space architecture"):
        sss.channels("64:32:48:16:12")
    with pytest.raises(ValueError, match=r"arch_index must be in \[0, 32767\]"):
        sss.arch_str(-1)
    with pytest.raises(ValueError, match="unknown NATS-Bench space 'xyz'"):
        get_nats_space("xyz")


def test_tetraopt_searches_both_spaces() -> None:
    for space in (NATSTopologySpace(), NATSSizeSpace()):
        # a separable toy score: the optimum is known and TetraOpt must find a point near it quickly
        target = space.from_arch(len(space) - 1)
        opt = TetraOpt(space.search_space(), budget=40, seed=0)
        while params := opt.ask(4):
            opt.tell(params, [sum(p[k] == v for k, v in target.items()) for p in params])
        assert opt.best_value >= len(target) - 1
        space.index(opt.best_params)  # a valid architecture of the space


class FakeSizeAPI:
    """The methods of ``nats_bench.create(path, "sss", fast_mode=True)`` that NATSBenchObjective uses."""

    search_space_name = "size"
    full_epochs_in_paper = 90

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, bool]] = []
        self._space = NATSSizeSpace()

    def __len__(self) -> int:
        return 32768

    def query_index_by_arch(self, arch: str) -> int:
        return self._space.index(arch)

    def get_more_info(self, index: int, dataset: str, iepoch: int | None = None, hp: str = "12",
                      is_random: bool = True) -> dict[str, float]:
        self.calls.append((index, dataset, hp, is_random))
        size = sum(self._space.channels(index))
        info = {"train-all-time": 10.0 + size / 10, "train-per-time": 1.0}
        if dataset == "cifar10-valid":
            info.update({"valid-accuracy": 50 + size / 10, "valid-per-time": 0.5})
        else:
            info.update({"test-accuracy": 60 + size / 10, "valid-per-time": 0.5})
        return info


def test_api_objective_on_the_size_space_follows_the_nats_protocol() -> None:
    api = FakeSizeAPI()
    obj = NATSBenchObjective(api, "cifar10", time_budget=80.0)
    assert obj.space_spec.name == "sss" and obj.space.size == 32768 and obj.full_hp == "90"
    value = obj(obj.space_spec.from_arch("64:64:64:64:64"))
    assert value == pytest.approx(50 + 32.0)
    assert api.calls[-1] == (32767, "cifar10-valid", "12", False)  # 12-epoch cifar10-valid, mean over seeds
    assert obj.elapsed_time == pytest.approx(10 + 32.0 + 0.5) and obj.n_queries == 1
    assert obj.test_accuracy("8:8:8:8:8") == pytest.approx(64.0)
    assert api.calls[-1] == (0, "cifar10", "90", False)  # the full 90-epoch sss schedule, cifar10 ori-test
    obj("64:64:64:64:64")  # 85 s in all: crosses the budget and still counts
    assert obj.exhausted and obj.n_queries == 2 and obj.remaining_time == 0.0
    with pytest.raises(TimeBudgetExhausted, match="simulated time budget of 80 s is spent"):
        obj("8:8:8:8:8")


def test_api_objective_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="`time_budget` must be a positive number"):
        NATSBenchObjective(FakeSizeAPI(), time_budget=0)
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        NATSBenchObjective(FakeSizeAPI(), dataset="mnist")
    with pytest.raises(ValueError, match="cannot tell the search space"):
        NATSBenchObjective(object())
    assert len(EDGES) == 6 and len(NB201_OPS) == 5
