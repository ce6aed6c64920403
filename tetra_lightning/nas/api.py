"""A search objective backed by the official NATS-Bench API, for the topology (tss) and the size (sss) space.

Protocol of the NATS-Bench search experiments (``exps/NATS-algos/*.py``, ``nats_bench/api_utils.py``):

* search signal: the validation accuracy after the **12-epoch** schedule (``hp="12"``) on ``cifar10-valid``
  (x-valid) for CIFAR-10, on x-valid for CIFAR-100 and ImageNet16-120;
* reported result: the test accuracy after the full schedule of the space (``api.full_epochs_in_paper``:
  **200** epochs for tss, **90** for sss) on ``cifar10`` (ori-test) or x-test;
* cost: each query adds the simulated ``train-all-time + valid-per-time`` of the 12-epoch run to a clock, and a
  search may be limited to a budget of such simulated seconds (e.g. 20000 s for CIFAR-10 in NATS-Bench tss).

Unlike ``simulate_train_eval`` (one random seed per call), the metrics here are means over the seeds
(``is_random=False``) unless ``is_random=True`` is passed, so repeated runs are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tetra_lightning.nas.objective import DATASETS
from tetra_lightning.nas.spaces import NATSSizeSpace, NATSTopologySpace, get_nats_space
from tetra_lightning.optim.space import SearchSpace

__all__ = ["NATSBenchObjective", "TimeBudgetExhausted"]

_VALID_DATASET = {"cifar10": "cifar10-valid", "cifar100": "cifar100", "ImageNet16-120": "ImageNet16-120"}
_FULL_EPOCHS = {"tss": "200", "sss": "90"}


class TimeBudgetExhausted(RuntimeError):
    """Raised by :class:`NATSBenchObjective` when a query is asked after the simulated time budget ran out."""


class NATSBenchObjective:
    """Search objective on a NATS-Bench API object (``nats_bench.create(path, "tss" | "sss", fast_mode=True)``).

    Calling it with a params dict of :attr:`space` returns the 12-epoch validation accuracy (%) and advances the
    simulated clock :attr:`elapsed_time`; :meth:`test_accuracy` gives the reported full-schedule test accuracy.

    Args:
        api: the official API object (or one with the same methods: ``get_more_info``, ``query_index_by_arch``,
            ``arch``, ``__len__`` and ``search_space_name`` or ``is_size``).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"ImageNet16-120"``.
        time_budget: simulated seconds a search may spend (``None``: unlimited). The query that crosses the
            budget still counts (as in the NATS-Bench search scripts); the next one raises
            :class:`TimeBudgetExhausted`.
        is_random: ``False`` (default) averages the seeds; ``True`` draws one seed per query like
            ``simulate_train_eval``.

    Raises:
        ValueError: for an unknown dataset, a non-positive ``time_budget``, or an API of unknown space.

    Example:
        >>> import nats_bench  # doctest: +SKIP
        >>> obj = NATSBenchObjective(nats_bench.create(None, "sss", fast_mode=True), time_budget=20000)  # doctest: +SKIP
        >>> obj(obj.space_spec.from_arch("64:64:64:64:64")), obj.elapsed_time  # doctest: +SKIP
    """

    def __init__(self, api: Any, dataset: str = "cifar10", time_budget: float | None = None,
                 is_random: bool = False) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}.")
        if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget > 0):
            raise ValueError(f"`time_budget` must be a positive number of simulated seconds or None, got "
                             f"{time_budget!r}. Pass e.g. time_budget=20000 (NATS-Bench, CIFAR-10).")
        self.api = api
        self.dataset = dataset
        self.time_budget = None if time_budget is None else float(time_budget)
        self.is_random = bool(is_random)
        self.space_spec: NATSTopologySpace | NATSSizeSpace = get_nats_space(_space_name(api))
        self.space: SearchSpace = self.space_spec.search_space()
        epochs = getattr(api, "full_epochs_in_paper", None)
        self.full_hp = str(epochs) if epochs is not None else _FULL_EPOCHS[self.space_spec.name]
        self.elapsed_time = 0.0
        self.n_queries = 0
        self.history: list[dict[str, Any]] = []

    @property
    def exhausted(self) -> bool:
        """Whether the simulated time budget is spent."""
        return self.time_budget is not None and self.elapsed_time >= self.time_budget

    @property
    def remaining_time(self) -> float:
        """Simulated seconds left (``inf`` without a budget)."""
        return math.inf if self.time_budget is None else max(0.0, self.time_budget - self.elapsed_time)

    def index(self, arch: Any) -> int:
        """The API's ``arch_index`` of an architecture (params dict, string, index, op / channel list)."""
        index = int(self.api.query_index_by_arch(self.space_spec.arch_str(arch)))
        if index < 0:
            raise ValueError(f"architecture {self.space_spec.arch_str(arch)!r} is not in the benchmark.")
        return index

    def _info(self, arch: Any, dataset: str, hp: str) -> dict[str, Any]:
        return self.api.get_more_info(self.index(arch), dataset, hp=hp, is_random=self.is_random)

    def validation_accuracy(self, arch: Any) -> float:
        """12-epoch validation accuracy (%), the search signal; neither counted nor timed."""
        return float(self._info(arch, _VALID_DATASET[self.dataset], "12")["valid-accuracy"])

    def test_accuracy(self, arch: Any) -> float:
        """Test accuracy (%) after the full schedule (200 epochs tss, 90 sss): the reported result."""
        return float(self._info(arch, self.dataset, self.full_hp)["test-accuracy"])

    def __call__(self, params: Mapping[str, Any] | Any) -> float:
        """The search signal of ``params``; counts one query and adds its simulated training time.

        Raises:
            TimeBudgetExhausted: if the time budget was already spent before this query.
        """
        if self.exhausted:
            raise TimeBudgetExhausted(
                f"the simulated time budget of {self.time_budget:.0f} s is spent ({self.elapsed_time:.0f} s after "
                f"{self.n_queries} queries); stop the search or raise `time_budget`.")
        info = self._info(params, _VALID_DATASET[self.dataset], "12")
        cost = float(info.get("train-all-time", 0.0)) + float(info.get("valid-per-time", 0.0))
        value = float(info["valid-accuracy"])
        self.n_queries += 1
        self.elapsed_time += cost
        self.history.append({"arch": self.space_spec.arch_str(params), "valid_accuracy": value,
                             "time_cost": cost, "elapsed_time": self.elapsed_time})
        return value


def _space_name(api: Any) -> str:
    name = getattr(api, "search_space_name", None)
    if name in ("topology", "tss", "size", "sss"):
        return str(name)
    if getattr(api, "is_size", False):
        return "sss"
    if getattr(api, "is_topology", False):
        return "tss"
    raise ValueError(f"cannot tell the search space of the API object {api!r}: it has neither "
                     "`search_space_name` ('topology'/'size') nor `is_size`/`is_topology`. Pass the object of "
                     "`nats_bench.create(path, 'tss' | 'sss', fast_mode=True)`.")
