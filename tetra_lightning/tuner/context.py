"""StudyContext: what an executor needs to open the tuner's study and run its trials, and nothing more.

:class:`~tetra_lightning.tuner.TetraOptTuner` validates its arguments and builds one context; an executor (in this
process, in worker processes, on Ray) gets the context and the loaded study, never the tuner, so executors and the
tuner do not import each other. The context pickles, so a spawned worker process can open the study itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from tetra_lightning.optim import SearchSpace
from tetra_lightning.tuner.sampler import TetraOptSampler


@dataclass(frozen=True)
class StudyContext:
    """The tuner's study and trial settings, as an executor sees them.

    Attributes:
        study_name: the study's name in the storage (also the W&B group and log folder name).
        storage: the ``storage`` argument of the tuner (a URL, an Optuna storage or ``None``); worker processes
            reopen it with their own connections.
        direction: ``"maximize"`` or ``"minimize"`` (Optuna's name for ``mode``).
        search_space: the TetraOpt search space.
        distributions: ``{name: optuna distribution}`` of that space; every trial suggests exactly these.
        monitor: the metric to optimize.
        mode: ``"max"`` or ``"min"``.
        objective: ``"last"`` or ``"best"`` epoch.
        budget: COMPLETE + PRUNED trials the study should hold.
        max_failures: failed configs tolerated in the study.
        catch: exception types recorded as a failed trial; others are re-raised.
        retry_stale: queue again the params of trials whose process died.
        pruner: the study's pruner (``NopPruner`` when trials are not pruned).
        seed: the sampler's seed (worker ``i`` uses ``seed + i``).
        optimizer_kwargs: extra ``TetraOpt`` arguments.
        sampler: a sampler to use instead of :class:`TetraOptSampler` (shared by every worker), or ``None``.
        n_jobs: trials running at once.
        start_method: how worker processes start (``None``: fork where safe, else spawn).
        progress_bar: show a progress bar over trials.
        quiet: silence Lightning's per-trial lines and Optuna's trial log.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from tetra_lightning.optim import Int, SearchSpace
        >>> context = StudyContext(study_name="demo", storage="sqlite:///:memory:", direction="minimize",
        ...                        search_space=SearchSpace({"x": Int(0, 9)}), distributions={"x": IntDistribution(0, 9)},
        ...                        monitor="val_loss", mode="min", objective="last", budget=4, max_failures=4)
        >>> context.reports_live, type(context.make_sampler(worker_index=1)).__name__
        (False, 'TetraOptSampler')
    """

    study_name: str
    storage: str | BaseStorage | None
    direction: Literal["maximize", "minimize"]
    search_space: SearchSpace
    distributions: Mapping[str, BaseDistribution]
    monitor: str
    mode: Literal["max", "min"]
    objective: Literal["best", "last"]
    budget: int
    max_failures: int
    catch: tuple[type[BaseException], ...] = (Exception,)
    retry_stale: bool = True
    pruner: BasePruner = field(default_factory=NopPruner)
    seed: int = 0
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sampler: BaseSampler | None = None
    n_jobs: int = 1
    start_method: Literal["fork", "spawn", "forkserver"] | None = None
    progress_bar: bool = False
    quiet: bool = True

    @property
    def reports_live(self) -> bool:
        """Whether trials report each epoch to the study while they run (a pruner watches them)."""
        return not isinstance(self.pruner, NopPruner)

    def make_sampler(self, worker_index: int = 0) -> BaseSampler:
        """The sampler of worker ``worker_index``: the given one, or a TetraOptSampler seeded ``seed + index``."""
        if self.sampler is not None:
            return self.sampler
        return TetraOptSampler(self.search_space, seed=self.seed + worker_index, budget=self.budget,
                               optimizer_kwargs=self.optimizer_kwargs)


def open_study(context: StudyContext, storage: BaseStorage, worker_index: int = 0) -> optuna.Study:
    """Creates the context's study in ``storage``, or loads it when it exists, with worker ``worker_index``'s sampler.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from tetra_lightning.optim import Int, SearchSpace
        >>> from tetra_lightning.tuner.storage import make_storage
        >>> context = StudyContext(study_name="demo", storage=None, direction="minimize",
        ...                        search_space=SearchSpace({"x": Int(0, 9)}), distributions={"x": IntDistribution(0, 9)},
        ...                        monitor="val_loss", mode="min", objective="last", budget=4, max_failures=4)
        >>> open_study(context, make_storage("sqlite:///:memory:")).study_name
        'demo'
    """
    return optuna.create_study(
        storage=storage,
        study_name=context.study_name,
        direction=context.direction,
        sampler=context.make_sampler(worker_index),
        pruner=context.pruner,
        load_if_exists=True,
    )
