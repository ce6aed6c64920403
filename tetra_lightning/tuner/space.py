"""Translation between TetraOpt search spaces and Optuna distributions.

The tuner and :class:`~tetra_lightning.tuner.TetraOptSampler` describe a parameter once, as a
``tetra_lightning.optim`` dimension (``Categorical``, ``Int``, ``Float``), and hand Optuna the matching
distribution so that the study's storage, pruners and dashboards see ordinary Optuna parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tetra_lightning.optim import Categorical, Dimension, Float, Int, SearchSpace, as_space
from tetra_lightning.optim.space import MAX_LEVELS

# Points per float axis when a Float has no grid of its own and Optuna gives none either.
DEFAULT_FLOAT_GRID = MAX_LEVELS

_OPTUNA_CHOICE_TYPES = (type(None), bool, int, float, str)


def as_search_space(search_space: Any) -> SearchSpace:
    """Returns ``search_space`` as a ``tetra_lightning.optim.SearchSpace``.

    Args:
        search_space: a ``SearchSpace`` or a mapping ``name -> Categorical | Int | Float`` (a plain list is
            read as a ``Categorical``).

    Returns:
        The ``SearchSpace``.

    Raises:
        TypeError: for anything else, or a Categorical choice that Optuna cannot store.
        ValueError: for an empty space.
    """
    if isinstance(search_space, Mapping) and len(search_space) == 0:
        raise ValueError(
            "`search_space` is empty: nothing to tune. Pass at least one parameter, e.g. "
            "`{'lr': Float(1e-4, 1e-1, log=True)}`."
        )
    if not isinstance(search_space, Mapping):
        raise TypeError(
            "`search_space` must be a dict of name -> Categorical/Int/Float or a "
            f"tetra_lightning.optim.SearchSpace, got {type(search_space).__name__}."
        )
    space = as_space(search_space)
    for dimension in space.values():
        to_optuna_distribution(dimension)  # fail now, not at the first trial
    return space


def to_optuna_distribution(dimension: Any) -> BaseDistribution:
    """Returns the Optuna distribution that holds every value of one TetraOpt dimension."""
    if isinstance(dimension, Categorical):
        choices = tuple(to_python(choice) for choice in dimension.choices)
        bad = [choice for choice in choices if not isinstance(choice, _OPTUNA_CHOICE_TYPES)]
        if bad:
            raise TypeError(
                f"Categorical choices must be None, bool, int, float or str to be stored in the study, got "
                f"{bad[0]!r} ({type(bad[0]).__name__}). Use names (e.g. 'relu') and map them in model_fn."
            )
        merged = [(choices[index], choices[position]) for position, index in enumerate(_optuna_indices(choices))
                  if index != position]
        if merged:
            kept, lost = merged[0]
            raise ValueError(
                f"Categorical choices {list(choices)!r} hold {kept!r} and {lost!r}, which compare equal: Optuna's "
                f"storage cannot tell them apart and would record {lost!r} as {kept!r}. Use choices that differ in "
                f"value, e.g. names: {[str(choice) for choice in choices]!r}."
            )
        return CategoricalDistribution(choices)
    if isinstance(dimension, Int):
        return IntDistribution(dimension.low, dimension.high, step=dimension.step, log=dimension.log)
    if isinstance(dimension, Float):
        if dimension.step is not None:
            # Optuna's stepped float; its high is the last step (what Optuna would adjust it to, with a warning)
            return FloatDistribution(dimension.low, dimension.grid[-1], step=dimension.step)
        # The continuous interval: every grid point lies in it, and values from other samplers (random
        # fallback, enqueued trials) snap to the nearest grid point when the optimizer is told them.
        return FloatDistribution(dimension.low, dimension.high, log=dimension.log)
    raise TypeError(
        f"Search-space entries must be tetra_lightning.Categorical, Int or Float, got "
        f"{type(dimension).__name__} ({dimension!r}). Write e.g. `Float(1e-4, 1e-1, log=True)`."
    )


def to_optuna_distributions(search_space: Any) -> dict[str, BaseDistribution]:
    """Returns ``{name: optuna distribution}`` for a whole TetraOpt search space."""
    return {name: to_optuna_distribution(dim) for name, dim in as_search_space(search_space).items()}


def from_optuna_distribution(distribution: BaseDistribution, float_grid: int = DEFAULT_FLOAT_GRID) -> Dimension:
    """Returns the TetraOpt dimension (a discretization) for an Optuna distribution.

    Ints and stepped floats keep their order and step (``Int(..., step=, log=)``, ``Float(..., step=)``: any value
    of the range snaps to the nearest grid point, and a huge range is never materialized); a continuous float gets
    ``float_grid`` points.

    Args:
        distribution: an Optuna ``FloatDistribution``, ``IntDistribution`` or ``CategoricalDistribution``.
        float_grid: grid points for a continuous float axis (log-spaced when the distribution is log).

    Returns:
        A ``tetra_lightning.optim`` ``Categorical``, ``Int`` or ``Float``.

    Example:
        >>> from_optuna_distribution(FloatDistribution(0.0, 0.5, step=0.1))
        Float(0.0, 0.5, step=0.1)
        >>> from_optuna_distribution(IntDistribution(1, 100, log=True))
        Int(1, 100, step=1, log=True)
    """
    if isinstance(distribution, CategoricalDistribution):
        # Optuna stores a choice by the index of the first choice equal to it (True as 1 in [0, 1, True]): only
        # those can be evaluated, so TetraOpt searches only those (proposing True would never be recorded)
        choices = distribution.choices
        return Categorical([c for i, (c, index) in enumerate(zip(choices, _optuna_indices(choices), strict=True))
                                  if index == i])
    if distribution.single():
        return Categorical([distribution.low])
    if isinstance(distribution, IntDistribution):
        return Int(distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        if distribution.step is not None:
            return Float(distribution.low, distribution.high, step=distribution.step)
        return Float(distribution.low, distribution.high, log=distribution.log, grid=float_grid)
    raise TypeError(f"TetraOptSampler cannot discretize {type(distribution).__name__}.")


def _optuna_indices(choices: tuple[Any, ...]) -> list[int]:
    """The index under which Optuna's ``CategoricalDistribution`` stores each choice: the first equal one's.

    Example:
        >>> _optuna_indices((0, 1, True, False, "a"))
        [0, 1, 1, 0, 4]
    """
    first: dict[Any, int] = {}
    return [first.setdefault(choice, position) for position, choice in enumerate(choices)]


def to_python(value: Any) -> Any:
    """Returns a plain Python scalar for numpy scalars (Optuna's storage wants JSON-able values)."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (list, tuple, dict, str)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


def snap_to_distribution(value: Any, distribution: BaseDistribution) -> Any:
    """Returns ``value`` as a member of ``distribution`` (clipped into range, rounded to its step).

    A log-spaced grid point computed as ``exp(log(low) + ...)`` can fall a rounding error outside
    ``[low, high]``, which Optuna rejects; this puts it back.
    """
    value = to_python(value)
    if isinstance(distribution, CategoricalDistribution):
        if value in distribution.choices:
            return distribution.choices[distribution.choices.index(value)]
        numeric = [c for c in distribution.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and numeric:
            return min(numeric, key=lambda c: abs(c - value))
        raise ValueError(f"{value!r} is not one of the choices {distribution.choices}.")
    if isinstance(distribution, IntDistribution):
        value = int(round(float(value)))
        value = min(max(value, distribution.low), distribution.high)
        offset = (value - distribution.low) % distribution.step
        return value - offset
    if isinstance(distribution, FloatDistribution):
        value = min(max(float(value), distribution.low), distribution.high)
        if distribution.step is not None:
            k = round((value - distribution.low) / distribution.step)
            # rounded to the step's precision, as Float(step=) writes its grid: 3 steps of 0.1 read 0.3
            digits = max(0, 12 - math.floor(math.log10(distribution.step)))
            value = min(round(distribution.low + k * distribution.step, digits), distribution.high)
        return value
    return value
