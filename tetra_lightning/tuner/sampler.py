"""TetraOptSampler: TetraOpt as an Optuna sampler, so Optuna studies can search with tensor trains."""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tetra_lightning.optim import SearchSpace, TetraOpt
from tetra_lightning.tuner._optuna import fixed_params, set_trial_system_attr
from tetra_lightning.tuner.observation import PROPOSED_KEY, observations, trial_point
from tetra_lightning.tuner.space import (
    DEFAULT_FLOAT_GRID,
    as_search_space,
    from_optuna_distribution,
    snap_to_distribution,
    to_optuna_distributions,
    to_python,
)

log = logging.getLogger("tetra_lightning.tuner")

# noise variance bound (standardized values) under deterministic_objective=True
DETERMINISTIC_MAX_NOISE = 1e-4


class TetraOptSampler(BaseSampler):
    """An Optuna sampler that proposes each trial's params with ``tetra_lightning.optim.TetraOpt``.

    The params form one joint (relative) search space, discretized to a finite grid: TetraOpt's own
    dimensions when ``search_space`` is given, otherwise the intersection of the params of finished
    trials (continuous floats get ``float_grid`` points, log-spaced for log distributions). For every
    new trial the sampler rebuilds TetraOpt from the study's finished trials and asks it for a point,
    which it stores on the trial (system attribute ``tetra:proposed``). Every finished trial informs
    TetraOpt (``tetra_lightning.tuner.observation`` has the rules): COMPLETE and PRUNED trials with
    their values; FAIL trials, ``inf``/``nan`` values and pruned trials that reported nothing as failed
    points, never proposed again; a param the objective did not suggest (a conditional one) at the
    value proposed for the trial. Trials whose process died are ignored. The sampler therefore holds no
    state of its own: a resumed study, a second process or a second machine on the same storage all
    see the same optimizer.

    Parallel workers: a trial asks TetraOpt for a batch of ``1 + (trials running elsewhere)`` points
    and takes the first one no other running trial holds, so workers sharing a storage evaluate
    distinct points of the same batch. (:class:`TetraOptTuner`'s workers, on one machine or many, also
    sample in trial-number order, each once the earlier trials hold their params, so that two trials
    never sample at the same moment from different histories.) Params outside the space (and every param before the space is
    known) are sampled by ``fallback_sampler`` (a seeded ``RandomSampler``); a param outside a given
    space whose name resembles an unused name of the space (``X`` for ``x``) gets one warning.
    Single-objective only: a multi-objective study raises ``ValueError`` before its first trial runs.

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
        deterministic_objective: the objective returns the same value for the same params (a seeded training
            run, a cross-validation with a fixed split), as Optuna's ``GPSampler(deterministic_objective=True)``:
            on continuous spaces the Gaussian process then interpolates the values instead of fitting a noise
            level, which keeps small differences on a plateau visible (TetraOpt option ``max_noise=1e-4``).

    Raises:
        ValueError: for an empty ``search_space`` or a bad ``float_grid``; at the first trial of a
            multi-objective study.

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
        deterministic_objective: bool = False,
    ) -> None:
        if isinstance(float_grid, bool) or not isinstance(float_grid, int) or float_grid < 2:
            raise ValueError(f"`float_grid` must be an int >= 2, got {float_grid!r}. Pass e.g. float_grid=128.")
        self._space = as_search_space(search_space) if search_space is not None else None
        self._distributions = to_optuna_distributions(self._space) if self._space is not None else None
        self._seed = 0 if seed is None else int(seed)
        self._float_grid = float_grid
        self._budget = budget
        self._optimizer_kwargs = dict(optimizer_kwargs or {})
        for reserved in ("space", "seed", "direction", "budget"):
            if reserved in self._optimizer_kwargs:
                raise ValueError(f"`optimizer_kwargs` must not set {reserved!r}: the sampler sets it.")
        if not isinstance(deterministic_objective, bool):
            raise ValueError(f"`deterministic_objective` must be a bool, got {deterministic_objective!r}.")
        if deterministic_objective:
            self._optimizer_kwargs.setdefault("max_noise", DETERMINISTIC_MAX_NOISE)
        self._fallback = fallback_sampler if fallback_sampler is not None else RandomSampler(seed=seed)
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._warned_exhausted = False
        self._warned_names: set[tuple[str, str]] = set()
        self._inferred: tuple[tuple[tuple[str, BaseDistribution], ...], Any] | None = None

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ------------------------------------------------------------ search space
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        _check_single_objective(study)
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
        key = tuple(search_space.items())
        if self._inferred is not None and self._inferred[0] == key:
            return self._inferred[1]  # the space of the previous trial: building a log-int grid takes milliseconds
        space = SearchSpace(
            {name: from_optuna_distribution(dist, self._float_grid) for name, dist in search_space.items()}
        )
        self._inferred = (key, space)
        return space

    # --------------------------------------------------------------- sampling
    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        _check_single_objective(study)
        if not search_space:
            return {}
        if set(search_space) <= set(fixed_params(trial)):
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
                log.warning("TetraOptSampler: every grid point is evaluated or held by a running trial; sampling "
                            "the next trials at random.")
                self._warned_exhausted = True
            return {name: self._fallback.sample_independent(study, trial, name, dist)
                    for name, dist in search_space.items()}
        chosen = free[min(ahead, len(free) - 1)]
        # the whole point, for the params the objective may not suggest (a conditional one): the trial still
        # tells TetraOpt this point, and other workers see it in flight before the trial suggests anything
        set_trial_system_attr(study, trial, PROPOSED_KEY, {name: to_python(v) for name, v in chosen.items()})
        return {name: snap_to_distribution(chosen[name], dist) for name, dist in search_space.items()}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        _check_single_objective(study)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Optuna's rule for single-objective samplers, enforced before the first trial runs (an inferred space
        # is empty then, and the trial would run on random params before the second one raised)
        _check_single_objective(study)
        self._fallback.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._warn_misnamed_params(trial)
        self._fallback.after_trial(study, trial, state, values)

    def _warn_misnamed_params(self, trial: FrozenTrial) -> None:
        """Warns once per pair when the objective suggests a name outside the space that resembles an unused
        name of the space: TetraOpt's proposals for the one are lost, the other is sampled at random."""
        if self._space is None:
            return
        unused = {name.lower(): name for name in self._space if name not in trial.params}
        for name in trial.params:
            if name in self._space:
                continue
            close = difflib.get_close_matches(name.lower(), list(unused), n=1, cutoff=0.8)
            if not close or (name, unused[close[0]]) in self._warned_names:
                continue
            intended = unused[close[0]]
            self._warned_names.add((name, intended))
            warnings.warn(
                f"TetraOptSampler: the objective suggests {name!r}, which is not in its search space, and never "
                f"suggests the space's {intended!r}: {name!r} is sampled at random and TetraOpt's proposals for "
                f"{intended!r} go unused. Use one name in both places.",
                UserWarning,
                stacklevel=2,
            )

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
        space = self._tetra_space(search_space)
        direction = "maximize" if study.direction == StudyDirection.MAXIMIZE else "minimize"
        optimizer = TetraOpt(space, budget=None, seed=self._seed, direction=direction, **self._optimizer_kwargs)
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        evidence = observations(trials, space)
        if evidence:
            optimizer.tell([seen.params for seen in evidence], [seen.value for seen in evidence])
        return optimizer

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
            point = trial_point(other, space)
            if point is not None:
                busy.add(self._key(point, space))
            elif other.state == TrialState.RUNNING and other.number < trial.number:
                # Created just before this one and still sampling: it will take the first free point.
                ahead += 1
        return busy, ahead


def _check_single_objective(study: optuna.Study) -> None:
    if len(study.directions) > 1:
        raise ValueError(
            f"TetraOptSampler optimizes one objective, but study {study.study_name!r} has {len(study.directions)} "
            "(a multi-objective study). Create the study with one `direction`, or use a multi-objective sampler "
            "such as optuna.samplers.NSGAIISampler."
        )
