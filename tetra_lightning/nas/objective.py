"""NAS-Bench-201 / NATS-Bench topology space (tss) as a black-box objective.

A cell has 4 nodes and 6 edges; every edge carries one of 5 operations, so there are 5**6 = 15625 cells. The
official architecture string lists, for nodes 1, 2, 3, the incoming edges ``op~source``:
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. The op list used here is the 6 ops in that order. The official
``arch_index`` (0..15624) is the benchmark's own numbering (not a product ordering), so it comes from the backing
API or table.

Search signal: the 12-epoch validation accuracy (``cifar10-valid`` x-valid for CIFAR-10; x-valid for CIFAR-100 and
ImageNet16-120). Reported metric: the 200-epoch test accuracy (``cifar10`` ori-test; x-test otherwise).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tetra_lightning.optim.space import Categorical, SearchSpace

__all__ = [
    "DATASETS",
    "EDGES",
    "NB201_OPS",
    "NASBench201Objective",
    "TABLE_ENV_VAR",
    "arch_str_to_ops",
    "ops_to_arch_str",
]

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES: tuple[str, ...] = ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "ImageNet16-120")
TABLE_ENV_VAR = "TETRA_NB201_TABLE"

# table columns: (search signal, reported metric) per dataset
_COLUMNS = {
    "cifar10": ("c10valid_val_12ep", "c10_test_200ep"),
    "cifar100": ("c100_val_12ep", "c100_test_200ep"),
    "ImageNet16-120": ("in16_val_12ep", "in16_test_200ep"),
}
# NATS API: (dataset, hp, key) for the search signal and the reported metric
_API_QUERIES = {
    "cifar10": (("cifar10-valid", "12", "valid-accuracy"), ("cifar10", "200", "test-accuracy")),
    "cifar100": (("cifar100", "12", "valid-accuracy"), ("cifar100", "200", "test-accuracy")),
    "ImageNet16-120": (("ImageNet16-120", "12", "valid-accuracy"), ("ImageNet16-120", "200", "test-accuracy")),
}


def ops_to_arch_str(ops: Sequence[str]) -> str:
    """Official NATS-Bench architecture string of the 6 edge ops (order of :data:`EDGES`).

    Raises:
        ValueError: if there are not 6 ops or one is unknown.

    Example:
        >>> ops_to_arch_str(["nor_conv_3x3"] * 3 + ["skip_connect"] * 3)
        '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|'
    """
    ops = list(ops)
    if len(ops) != 6:
        raise ValueError(f"a NAS-Bench-201 cell has 6 edges, got {len(ops)} ops: {ops!r}.")
    for op in ops:
        if op not in NB201_OPS:
            raise ValueError(f"unknown op {op!r}; the NAS-Bench-201 ops are {list(NB201_OPS)}.")
    return f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"


def arch_str_to_ops(arch: str) -> tuple[str, ...]:
    """The 6 edge ops of an official architecture string (inverse of :func:`ops_to_arch_str`).

    Raises:
        ValueError: if the string is not a NAS-Bench-201 cell.

    Example:
        >>> arch_str_to_ops("|none~0|+|skip_connect~0|none~1|+|none~0|none~1|avg_pool_3x3~2|")[-1]
        'avg_pool_3x3'
    """
    nodes = arch.strip().split("+")
    ops: list[str] = []
    ok = len(nodes) == 3
    for j, node in enumerate(nodes if ok else []):
        parts = [p for p in node.strip().strip("|").split("|") if p]
        if len(parts) != j + 1:
            ok = False
            break
        for i, part in enumerate(parts):
            op, _, src = part.partition("~")
            if src != str(i) or op not in NB201_OPS:
                ok = False
            ops.append(op)
    if not ok:
        raise ValueError(f"{arch!r} is not a NAS-Bench-201 architecture string; expected the form "
                         "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' with ops from " f"{list(NB201_OPS)}.")
    return tuple(ops)


class NASBench201Objective:
    """The NATS-Bench topology space (6 edges x 5 ops) as an objective backed by a table or the official API.

    Calling the objective with a params dict (one op per edge name of :data:`EDGES`, as sampled from
    :attr:`space`) returns the 12-epoch validation accuracy, the search signal of the NATS-Bench protocol;
    :meth:`test_accuracy` gives the reported metric, the 200-epoch test accuracy. An architecture may be given as
    a params dict, an op list, an official architecture string or an ``arch_index``.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"ImageNet16-120"``.
        table: path of ``nb201_accuracy.csv`` (columns ``arch_index, arch_str, c10valid_val_12ep,
            c10_test_200ep, ...``); default: the ``TETRA_NB201_TABLE`` environment variable.
        api: an official API object, ``nats_bench.create(path, "tss")``; used instead of the table when given
            (queried with ``get_more_info(index, dataset, hp=..., is_random=False)``, i.e. means over seeds).

    Raises:
        ValueError: for an unknown dataset.
        FileNotFoundError: if neither ``api`` nor a readable table is given.

    Example:
        >>> import os
        >>> obj = NASBench201Objective("cifar10", table=os.environ.get("TETRA_NB201_TABLE",
        ...     "/work/shared/data/nas-bench-201/nb201_accuracy.csv"))
        >>> best = obj.arch_str(6111)
        >>> round(obj(obj.params(best)), 2), round(obj.test_accuracy(best), 2), obj.n_queries
        (84.38, 94.37, 1)
    """

    def __init__(self, dataset: str = "cifar10", table: str | os.PathLike[str] | None = None,
                 api: Any | None = None) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}.")
        self.dataset = dataset
        self.api = api
        self.space = SearchSpace({edge: Categorical(NB201_OPS) for edge in EDGES})
        self.n_queries = 0
        self._index_of: dict[str, int] = {}
        self._arch_strs: list[str] = []
        self._val: np.ndarray | None = None
        self._test: np.ndarray | None = None
        if api is None:
            path = table if table is not None else os.environ.get(TABLE_ENV_VAR)
            if path is None:
                raise FileNotFoundError(
                    "NASBench201Objective needs the accuracy table or an API object: pass "
                    "`table='/path/to/nb201_accuracy.csv'`, set the environment variable "
                    f"{TABLE_ENV_VAR}, or pass `api=nats_bench.create(path, 'tss', fast_mode=True)`.")
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"NAS-Bench-201 table {str(path)!r} not found. Pass `table=` (or set {TABLE_ENV_VAR}) to "
                    "the path of nb201_accuracy.csv, or pass `api=nats_bench.create(path, 'tss')`.")
            self._load_table(path)

    def _load_table(self, path: Path) -> None:
        val_col, test_col = _COLUMNS[self.dataset]
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"arch_index", "arch_str", val_col, test_col} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"table {str(path)!r} lacks the column(s) {sorted(missing)}; expected the "
                                 "nb201_accuracy.csv format.")
            rows = list(reader)
        n = len(rows)
        self._arch_strs = [""] * n
        self._val = np.full(n, np.nan)
        self._test = np.full(n, np.nan)
        for row in rows:
            i = int(row["arch_index"])
            self._arch_strs[i] = row["arch_str"]
            self._val[i] = float(row[val_col])
            self._test[i] = float(row[test_col])
        self._index_of = {s: i for i, s in enumerate(self._arch_strs)}

    # ------------------------------------------------------------ conversions
    def __len__(self) -> int:
        return len(self._arch_strs) if self.api is None else len(self.api)

    def index(self, arch: Any) -> int:
        """Official ``arch_index`` of an architecture (params dict, op list, arch string or index)."""
        if isinstance(arch, (int, np.integer)) and not isinstance(arch, bool):
            if not 0 <= int(arch) < len(self):
                raise ValueError(f"arch_index must be in [0, {len(self) - 1}], got {arch}.")
            return int(arch)
        arch_str = self.arch_str(arch)
        if self.api is not None:
            return int(self.api.query_index_by_arch(arch_str))
        try:
            return self._index_of[arch_str]
        except KeyError:
            raise ValueError(f"architecture {arch_str!r} is not in the table.") from None

    def arch_str(self, arch: Any) -> str:
        """Official architecture string of an architecture (params dict, op list, arch string or index)."""
        if isinstance(arch, str):
            arch_str_to_ops(arch)  # validates
            return arch
        if isinstance(arch, (int, np.integer)) and not isinstance(arch, bool):
            index = self.index(arch)
            return str(self.api.arch(index)) if self.api is not None else self._arch_strs[index]
        return ops_to_arch_str(self.ops(arch))

    def ops(self, arch: Any) -> tuple[str, ...]:
        """The 6 edge ops (order of :data:`EDGES`) of an architecture."""
        if isinstance(arch, Mapping):
            missing = [e for e in EDGES if e not in arch]
            if missing:
                raise ValueError(f"params {dict(arch)!r} miss the edge(s) {missing}; the edges are {list(EDGES)}.")
            return tuple(arch[e] for e in EDGES)
        if isinstance(arch, (str, int, np.integer)):
            return arch_str_to_ops(self.arch_str(arch))
        ops = tuple(arch)
        ops_to_arch_str(ops)  # validates
        return ops

    def params(self, arch: Any) -> dict[str, str]:
        """Params dict (edge name -> op) of an architecture, a point of :attr:`space`."""
        return dict(zip(EDGES, self.ops(arch), strict=True))

    # ---------------------------------------------------------------- metrics
    def _query(self, index: int, which: int) -> float:
        if self.api is not None:
            dataset, hp, key = _API_QUERIES[self.dataset][which]
            info = self.api.get_more_info(index, dataset, hp=hp, is_random=False)
            return float(info[key])
        table = self._val if which == 0 else self._test
        assert table is not None
        return float(table[index])

    def validation_accuracy(self, arch: Any) -> float:
        """12-epoch validation accuracy (%) of an architecture: the search signal (not counted as a query)."""
        return self._query(self.index(arch), 0)

    def test_accuracy(self, arch: Any) -> float:
        """200-epoch test accuracy (%) of an architecture: the reported metric."""
        return self._query(self.index(arch), 1)

    def __call__(self, params: Any) -> float:
        """The search signal (12-epoch validation accuracy, %) of ``params``; counts one query."""
        self.n_queries += 1
        return self.validation_accuracy(params)

    def table_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(validation, test)`` accuracies of all cells by ``arch_index`` (table backend only)."""
        if self._val is None or self._test is None:
            raise RuntimeError("table_arrays() needs the table backend; this objective was built with `api=`.")
        return self._val.copy(), self._test.copy()

    def top_fraction_threshold(self, fraction: float = 0.001) -> float:
        """Test accuracy of the ``ceil(fraction * 15625)``-th best cell (e.g. the top-0.1% threshold)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
        if self._test is not None:
            test = self._test
        else:
            test = np.array([self._query(i, 1) for i in range(len(self))])
        k = max(1, int(np.ceil(fraction * len(test))))
        return float(np.sort(test)[::-1][k - 1])
