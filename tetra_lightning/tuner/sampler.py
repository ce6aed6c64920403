"""TetraOptSampler: TetraOpt as an Optuna sampler, so Optuna studies can search with tensor trains."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tetra_lightning.tuner.space import (
    DEFAULT_FLOAT_GRID,
    as_search_space,
    from_optuna_distribution,
    snap_to_distribution,
    to_optuna_distributions,
    to_python,
)
from tetra_lightning.tuner.storage import is_infrastructure_failure

log = logging.getLogger("tetra_lightning.tuner")


class TetraOptSampler(BaseSampler):
    """An Optuna sampler that proposes each trial's params with ``tetra_lightning.optim.TetraOpt``.

    The params form one joint (relative) search space, discretized to a finite grid: TetraOpt's own
    dimensions when ``search_space`` is given, otherwise the intersection of the params of finished
    trials (continuous floats get ``float_grid`` points, log-spaced for log distributions). For every
    new trial the sampler rebuilds TetraOpt from the study's finished trials (COMPLETE and PRUNED with
    their values, FAIL as failed points that are never proposed again; trials that failed because
    their process died are ignored) and asks it for a point. The sampler therefore holds no state of
    its own: a resumed study, a second process or a second machine on the same storage all see the
    same optimizer.

    Parallel workers: a trial asks TetraOpt for a batch of ``1 + (trials running elsewhere)`` points
    and takes the first one no other running trial holds, so workers sharing a storage evaluate
    distinct points of the same batch. (:class:`TetraOptTuner`'s workers, on one machine or many, also
    sample in trial-number order, each once the earlier trials hold their params, so that two trials
    never sample at the same moment from different histories.) Params outside the space (and every param before the space is
    known) are sampled by ``fallback_sampler`` (a seeded ``RandomSampler``).

    Args:
        search_space: ``{name: Categorical | Int | Float}`` or a ``SearchSpace``; the objective must suggest
            these names with the matching distributions (``suggest_float(name, low, high, log=...)``,
            ``suggest_int(name, low, high, step=...)``, ``suggest_categorical(name, choices)``). ``None``
            infers the space from the study.
        seed: seed of TetraOpt and of the fallback sampler.
        float_grid: grid points per continuous float axis when the space is inferred.
        budget: the study's planned number of trials (informational for TetraOpt's schedule; ``None``).
        optimizer_kwargs: extra ``TetraOpt`` arguments (``method``, ``rank``, ``n_init``, ...).
        fallback_sampler: sampler for independent params (default ``RandomSampler(seed)``).

    Raises:
        ValueError: for an empty ``search_space`` or a bad ``float_grid``.

    Example:
        >>> import optuna
        >>> from tetra_lightning.optim import Int
        >>> sampler = TetraOptSampler({"x": Int(-5, 5)}, seed=0)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: (t.suggest_int("x", -5, 5) - 2) ** 2, n_trials=11)
        >>> study.best_params
        {'x': 2}
    """

    def __init__(
        self,
        search_space: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        float_grid: int = DEFAULT_FLOAT_GRID,
        budget: int | None = None,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        fallback_sampler: BaseSampler | None = None,
    ) -> None:
        if isinstance(float_grid, bool) or not isinstance(float_grid, int) or float_grid < 2:
            raise ValueError(f"`float_grid` must be an int >= 2, got {float_grid!r}. Pass e.g. float_grid=16.")
        self._space = as_search_space(search_space) if search_space is not None else None
        self._distributions = to_optuna_distributions(self._space) if self._space is not None else None
        self._seed = 0 if seed is None else int(seed)
        self._float_grid = float_grid
        self._budget = budget
        self._optimizer_kwargs = dict(optimizer_kwargs or {})
        for reserved in ("space", "seed", "direction", "budget"):
            if reserved in self._optimizer_kwargs:
                raise ValueError(f"`optimizer_kwargs` must not set {reserved!r}: the sampler sets it.")
        self._fallback = fallback_sampler if fallback_sampler is not None else RandomSampler(seed=seed)
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._warned_exhausted = False

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ------------------------------------------------------------ search space
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._distributions is not None:
            return dict(self._distributions)
        space: dict[str, BaseDistribution] = {}
        for name, distribution in self._intersection.calculate(study).items():
            if distribution.single():
                continue  # a constant has nothing to optimize
            space[name] = distribution
        return space

    def _tetra_space(self, search_space: dict[str, BaseDistribution]) -> Any:
        if self._space is not None and set(self._space) == set(search_space):
            return self._space
        from tetra_lightning.optim import SearchSpace

        return SearchSpace(
            {name: from_optuna_distribution(dist, self._float_grid) for name, dist in search_space.items()}
        )

    # --------------------------------------------------------------- sampling
    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        self._raise_error_if_multi_objective(study)
        fixed = trial.system_attrs.get("fixed_params") or {}
        if set(search_space) <= set(fixed):
            return {}  # an enqueued trial: its params are given
        # one snapshot for both: read apart, a trial finishing in between would be neither in the history nor
        # busy, and its point could be proposed again
        trials = study.get_trials(deepcopy=False)
        optimizer = self.build_optimizer(study, search_space, trials=trials)
        busy, ahead = self._busy(trials, trial, search_space)
        proposals = optimizer.ask(1 + len(busy) + ahead)
        free = [p for p in proposals if self._key(p, optimizer.space) not in busy]
        if not free:
            if not self._warned_exhausted:
                log.warning("TetraOptSampler: the grid is exhausted; sampling the remaining trials at random.")
                self._warned_exhausted = True
            return {}
        chosen = free[min(ahead, len(free) - 1)]
        return {name: snap_to_distribution(chosen[name], dist) for name, dist in search_space.items()}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._fallback.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._fallback.after_trial(study, trial, state, values)

    # ----------------------------------------------------------------- state
    def build_optimizer(self, study: optuna.Study, search_space: dict[str, BaseDistribution],
                        trials: list[FrozenTrial] | None = None) -> Any:
        """Returns a TetraOpt over ``search_space`` that has been told every finished trial of the study.

        Args:
            study: the study whose history is replayed.
            search_space: the relative search space (Optuna distributions).
            trials: a snapshot of the study's trials to replay (default: read them from the study now).

        Returns:
            The ``tetra_lightning.optim.TetraOpt``.
        """
        from tetra_lightning.optim import TetraOpt

        space = self._tetra_space(search_space)
        direction = "maximize" if study.direction == StudyDirection.MAXIMIZE else "minimize"
        optimizer = TetraOpt(space, budget=None, seed=self._seed, direction=direction, **self._optimizer_kwargs)
        params, values = [], []
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        for past in sorted((t for t in trials if t.state in finished), key=lambda t: t.number):
            point = self._point(past, search_space, space)
            if point is None:
                continue
            value = _trial_value(past)
            if past.state == TrialState.FAIL:
                if is_infrastructure_failure(past):
                    continue  # the process died (or the trial never ran), not the config: it may be proposed again
                value = None
            elif value is None:
                continue
            params.append(point)
            values.append(value)
        if params:
            optimizer.tell(params, values)
        return optimizer

    def _point(self, trial: FrozenTrial, search_space: dict[str, BaseDistribution], space: Any) -> dict | None:
        if not set(search_space) <= set(trial.params):
            return None
        point = {name: to_python(trial.params[name]) for name in search_space}
        try:
            space.to_index(point)
        except (KeyError, ValueError):
            return None  # outside the current space (the space changed between sessions)
        return point

    def _key(self, params: Mapping[str, Any], space: Any) -> tuple[int, ...]:
        return tuple(space.to_index(params))

    def _busy(
        self, trials: list[FrozenTrial], trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[set[tuple[int, ...]], int]:
        """Grid points held by other RUNNING/WAITING trials, and how many earlier trials are still sampling."""
        space = self._tetra_space(search_space)
        busy: set[tuple[int, ...]] = set()
        ahead = 0
        for other in trials:
            if other.state not in (TrialState.RUNNING, TrialState.WAITING) or other.number == trial.number:
                continue
            params = dict(other.params) or dict(other.system_attrs.get("fixed_params") or {})
            if set(search_space) <= set(params):
                try:
                    busy.add(self._key({n: to_python(params[n]) for n in search_space}, space))
                except (KeyError, ValueError):
                    pass
            elif other.state == TrialState.RUNNING and other.number < trial.number:
                # Created just before this one and still sampling: it will take the first free point.
                ahead += 1
        return busy, ahead


def _trial_value(trial: FrozenTrial) -> float | None:
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)
