"""What an Optuna trial tells TetraOpt: one point of the grid and its value, or a failed point.

The only place where a trial of a study becomes TetraOpt evidence; the sampler (every proposal), the tuner's Ray
executor (its replay of a stored study) and the Ray searcher's results all go through it, so a trial informs the
optimizer the same way wherever it ran.

The value of a trial:

- COMPLETE: its value; ``inf``/``nan`` make it a failed point.
- PRUNED: its last intermediate value; a pruned trial that reported nothing (or a non-finite value) is a failed
  point.
- FAIL: a failed point, unless it failed for a reason that says nothing about its params (its process died,
  or it was a worker's unrun claim past the budget): then it is no evidence, and its point may be proposed again.
- RUNNING, WAITING: no evidence yet (the sampler keeps their points out of its proposals instead).

A failed point is told to TetraOpt as failed: it is never proposed again, and the surrogate sees it as the worst
value so far.

The point of a trial, one value per dimension of the space:

1. the trial's param (an enqueued trial's given param while it waits), kept exactly: TetraOpt files a value
   between grid points (another sampler's, an enqueued one) under the nearest grid point;
2. for a param the trial never suggested (a conditional param, e.g. ``momentum`` only for SGD), the value the
   sampler proposed for this trial (:data:`PROPOSED_KEY`);
3. for a trial the sampler did not propose (enqueued, added, sampled by another sampler), the dimension's first
   grid value (its first choice, its ``low``).

A trial with a param outside its dimension (the space changed) is no evidence; nor is one that holds none of the
space's params and was not proposed by the sampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tetra_lightning.tuner._optuna import fixed_params
from tetra_lightning.tuner.storage import is_infrastructure_failure

# System attribute in which TetraOptSampler stores the full point it proposed for a trial.
PROPOSED_KEY = "tetra:proposed"

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Observation:
    """One finished trial as TetraOpt sees it.

    Attributes:
        number: the trial's number in the study.
        params: a point of the space (one value per dimension, each inside its dimension's range).
        value: the trial's value, ``None`` for a failed point.
    """

    number: int
    params: dict[str, Any]
    value: float | None


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None`` (a failed point).

    Example:
        >>> finite_or_none(2), finite_or_none(float("inf")), finite_or_none("oops"), finite_or_none(None)
        (2.0, None, None, None)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trial_value(trial: FrozenTrial) -> float | None:
    """The value a finished trial tells TetraOpt (``None``: a failed point); see the module docstring."""
    if trial.state == TrialState.FAIL:
        return None
    value = trial.value
    if value is None and trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return finite_or_none(value)


def trial_point(trial: FrozenTrial, space: Any) -> dict[str, Any] | None:
    """The point of ``trial`` in ``space`` (a ``tetra_lightning.optim.SearchSpace``), or ``None``.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from optuna.trial import create_trial
        >>> from tetra_lightning.optim import Categorical, Int, SearchSpace
        >>> space = SearchSpace({"x": Int(0, 9), "act": Categorical(["relu", "gelu"])})
        >>> trial = create_trial(params={"x": 3}, distributions={"x": IntDistribution(0, 9)}, value=1.0,
        ...                      system_attrs={PROPOSED_KEY: {"x": 3, "act": "gelu"}})
        >>> trial_point(trial, space)
        {'x': 3, 'act': 'gelu'}
    """
    given = {**fixed_params(trial), **trial.params}
    proposed = trial.system_attrs.get(PROPOSED_KEY)
    proposed = proposed if isinstance(proposed, Mapping) else {}
    if not proposed and not any(name in given for name in space):
        return None
    point: dict[str, Any] = {}
    for name, dimension in space.items():
        if name in given:
            point[name] = given[name]
        elif name in proposed and _fits(dimension, proposed[name]):
            point[name] = proposed[name]
        else:
            point[name] = dimension.value(0)
    try:
        space.to_index(point)
    except (KeyError, ValueError):
        return None  # a param outside the space (the space changed between sessions)
    return point


def observe(trial: FrozenTrial, space: Any) -> Observation | None:
    """The evidence a trial gives TetraOpt, or ``None`` when it gives none (see the module docstring)."""
    if trial.state not in _FINISHED:
        return None
    if trial.state == TrialState.FAIL and is_infrastructure_failure(trial):
        return None
    point = trial_point(trial, space)
    if point is None:
        return None
    return Observation(number=trial.number, params=point, value=trial_value(trial))


def observations(trials: Iterable[FrozenTrial], space: Any) -> list[Observation]:
    """The evidence of every finished trial, in trial-number order."""
    found = (observe(trial, space) for trial in sorted(trials, key=lambda t: t.number))
    return [observation for observation in found if observation is not None]


def _fits(dimension: Any, value: Any) -> bool:
    try:
        dimension.index(value)
    except (TypeError, ValueError):
        return False
    return True
