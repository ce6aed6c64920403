"""TetraOptSearch: TetraOpt as a ``ray.tune`` searcher.

``TetraOptSearch`` plugs TetraOpt into ``ray.tune.Tuner`` so a study runs over a Ray cluster;
``TetraOptTuner(..., executor="ray")`` uses it (``tuner/_ray_backend.py``) to run the tuner's own trials (one fresh
``Trainer.fit`` each) as Ray Tune trials, recorded in the tuner's Optuna storage like local trials.

Ray is an optional dependency: ``pip install 'tetra-lightning[ray]'``.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ray.tune.result import DEFAULT_METRIC
    from ray.tune.search import Searcher
    from ray.tune.search.sample import Categorical as _RayCategorical
    from ray.tune.search.sample import Domain as _RayDomain
    from ray.tune.search.sample import Float as _RayFloat
    from ray.tune.search.sample import Integer as _RayInteger
    from ray.tune.search.sample import LogUniform as _RayLogUniform
except ImportError as _error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tetra_lightning.tuner.ray needs Ray Tune, which is not installed. "
        "Install it with `pip install 'tetra-lightning[ray]'`."
    ) from _error

from tetra_lightning.optim import Dimension, SearchSpace, TetraOpt, as_space
from tetra_lightning.tuner.observation import finite_or_none

__all__ = ["TetraOptSearch"]

log = logging.getLogger("tetra_lightning.tuner")

_STATE_VERSION = 1
_RESERVED_OPTIMIZER_KEYS = ("space", "budget", "seed", "direction")
_QUEUED, _WAIT, _FINISHED = "queued", "wait", "finished"
# What Ray Tune puts in `param_space` in place of a non-primitive value, ("__ref_ph" | "__fn_ph", hash): the
# TOKENs of _RefResolver and _FunctionResolver in ray/tune/impl/placeholder.py (a test checks they still are).
RAY_PLACEHOLDER_TOKENS = ("__ref_ph", "__fn_ph")


class TetraOptSearch(Searcher):
    """A ``ray.tune`` searcher that proposes trial configs with ``tetra_lightning.optim.TetraOpt``.

    Batch-aware: when Ray asks for a config and no proposal is queued, the searcher asks TetraOpt for one
    batch of distinct points, one per free concurrency slot (``TuneConfig(max_concurrent_trials=n)`` hands
    ``n`` to :meth:`set_max_concurrency`), queues them, and hands them out one per trial. Every finished
    trial is told to TetraOpt as soon as it finishes, so the next batch uses every result known by then.
    A point is proposed at most once.

    A trial that raised, reported no ``metric`` or reported a NaN/inf value is told to TetraOpt as a failed
    point (never proposed again) and the search goes on. :meth:`save` / :meth:`restore` pickle the optimizer
    and the running trials, so ``ray.tune.Tuner.restore`` resumes the search where it stopped.

    Budget: ``budget`` counts the trials this searcher proposes, failed ones included (as TetraOpt counts
    evaluations), unless ``max_failures`` is given: then failed trials hand their slot back and the search
    stops after ``max_failures`` failures. When the budget is used up (or the grid is exhausted) ``suggest``
    returns ``Searcher.FINISHED``; pass ``TuneConfig(num_samples=-1)`` so that Ray does not stop earlier.
    Points given to :meth:`add_evaluated_point` are known results and do not use the budget.

    Args:
        space: ``{name: Categorical | Int | Float}`` (``tetra_lightning.optim`` dimensions) or a
            ``SearchSpace``. Pass it here when the searcher runs in ``ray.tune.Tuner``: Ray Tune replaces the
            non-primitive values of ``param_space`` by placeholders before a searcher sees them, so dimensions
            put there cannot reach the searcher (``set_search_properties`` then raises, before any trial).
            ``None`` waits for dimensions passed to :meth:`set_search_properties` directly. Ray Tune sampling
            domains (``tune.uniform``, ``tune.choice``, ...) are refused: TetraOpt searches finite grids.
        metric: the reported metric to optimize; ``None`` takes ``TuneConfig(metric=...)``.
        mode: ``"max"`` or ``"min"``; ``None`` takes ``TuneConfig(mode=...)``.
        budget: trials to propose (``None``: until Ray's ``num_samples`` or the grid runs out).
        seed: seed of TetraOpt.
        points_to_evaluate: configs to run first, e.g. a known good default; each value must be a grid value
            (a float equal to one up to rounding noise is taken as that grid value).
        max_concurrent: trials running at once (``None``: as ``max_concurrent_trials`` says, else one batch
            point per request).
        max_failures: when given, failed trials do not use the budget and at most this many are run.
        **optimizer_kwargs: further ``TetraOpt`` arguments (``method``, ``rank``, ``n_init``, ...).

    Raises:
        TypeError: for a space holding Ray Tune sampling domains or anything but our dimensions, or a count or
            ``seed`` that is no int.
        ValueError: for a bad ``mode``/``metric``/``budget``/``max_concurrent``/``max_failures``, reserved or
            unknown optimizer arguments, or a point of ``points_to_evaluate`` that is not on the grid.

    Example:
        >>> from tetra_lightning.optim import Int
        >>> search = TetraOptSearch({"x": Int(0, 9), "y": Int(0, 9)}, metric="score", mode="max", budget=30)
        >>> search.set_max_concurrency(3)
        True
        >>> while isinstance(config := search.suggest(f"t{search.n_suggested}"), dict):
        ...     score = -(config["x"] - 7) ** 2 - (config["y"] - 2) ** 2
        ...     search.on_trial_complete(f"t{search.n_suggested - 1}", {"score": score})
        >>> search.best_params, search.best_value, search.n_suggested
        ({'x': 7, 'y': 2}, 0.0, 30)
        >>> search.suggest("one-more") == TetraOptSearch.FINISHED
        True
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        budget: int | None = None,
        seed: int = 0,
        points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
        *,
        max_concurrent: int | None = None,
        max_failures: int | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'max', 'min' or None, got {mode!r}. Use 'max' for accuracy, "
                             "'min' for loss.")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"`metric` must be the name of one reported metric such as 'val_acc', got {metric!r}. "
                             "TetraOptSearch optimizes a single objective.")
        _check_optional_int("budget", budget, "budget=40")
        _check_optional_int("max_concurrent", max_concurrent, "max_concurrent=4")
        _check_optional_int("max_failures", max_failures, "max_failures=10")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {seed!r}. Pass e.g. seed=0.")
        reserved = sorted(set(optimizer_kwargs) & set(_RESERVED_OPTIMIZER_KEYS))
        if reserved:
            raise ValueError(f"TetraOptSearch sets {reserved} of TetraOpt itself; pass `budget=`, `seed=` and "
                             "`mode=` to TetraOptSearch instead.")
        if points_to_evaluate is not None and (
            isinstance(points_to_evaluate, Mapping) or not all(isinstance(p, Mapping) for p in points_to_evaluate)
        ):
            raise TypeError("`points_to_evaluate` must be a list of config dicts, e.g. [{'lr': 0.01, 'width': 64}].")
        super().__init__(metric=metric, mode=mode)
        self._budget = budget
        self._seed = seed
        self._max_concurrent = max_concurrent
        self._max_failures = max_failures
        self._optimizer_kwargs = dict(optimizer_kwargs)
        self._space: SearchSpace | None = None
        self._optimizer: TetraOpt | None = None
        self._initial: list[dict[str, Any]] = [dict(p) for p in points_to_evaluate or []]
        self._initial_keys: set[tuple[int, ...]] = set()
        self._queue: list[dict[str, Any]] = []
        self._live: dict[str, dict[str, Any]] = {}
        self._n_complete = 0
        self._n_failed = 0
        self._history: list[dict[str, Any]] = []
        if space is not None:
            self._set_space(space, "space")

    # ------------------------------------------------------------------ state
    @property
    def space(self) -> SearchSpace | None:
        """The search space (``None`` until given by ``space`` or :meth:`set_search_properties`)."""
        return self._space

    @property
    def budget(self) -> int | None:
        """Trials this searcher may propose (``None``: unlimited)."""
        return self._budget

    @property
    def n_suggested(self) -> int:
        """Configs handed to Ray so far (finished and running trials)."""
        return len(self._history) + len(self._live)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished trial, in order: ``trial_id``, ``params``, ``value`` (``None`` when failed),
        ``state`` (``"complete"`` or ``"failed"``)."""
        return [dict(entry) for entry in self._history]

    @property
    def best_params(self) -> dict[str, Any] | None:
        """Params of the best successful trial told so far (added points included); ``None`` before one."""
        return None if self._optimizer is None else self._optimizer.best_params

    @property
    def best_value(self) -> float:
        """Its value (``nan`` before the first successful trial)."""
        return math.nan if self._optimizer is None else self._optimizer.best_value

    # --------------------------------------------------------- Ray's protocol
    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Takes ``max_concurrent_trials`` from Ray's ``ConcurrencyLimiter``: the searcher limits concurrency
        itself (it returns ``None`` while that many trials run) and sizes its batches by the free slots."""
        _check_optional_int("max_concurrent", max_concurrent, "max_concurrent_trials=4")
        self._max_concurrent = int(max_concurrent)
        return True

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        """Takes ``metric``/``mode`` from ``TuneConfig`` and the Tuner's ``param_space`` as ``config``.

        Constants in ``param_space`` pass through to every trial's config. ``tetra_lightning.optim``
        dimensions in ``config`` define the space when the searcher has none; Ray's Tuner itself cannot pass
        them (it replaces non-primitive values by placeholders first), so there give ``TetraOptSearch(space=)``.

        Raises:
            TypeError: when ``param_space`` holds Ray Tune sampling domains.
            ValueError: when ``metric``/``mode`` differ from the searcher's own, both the searcher and
                ``param_space`` define a (different) space, or neither defines one.
        """
        config = dict(config or {})
        _reject_ray_domains(config, "param_space")
        dims = {name: value for name, value in config.items() if isinstance(value, Dimension)}
        if not dims and self._space is None:
            replaced = sorted(name for name, value in config.items() if _is_ray_placeholder(value))
            cause = (
                f"Ray Tune replaces the non-primitive values of `param_space` (here {replaced}) by placeholders "
                "before a searcher sees them, so tetra_lightning dimensions cannot be passed there"
                if replaced else f"`param_space` holds only constants ({sorted(config)})"
            )
            raise ValueError(
                f"TetraOptSearch has no search space: {cause}. Pass the dimensions as "
                "`TetraOptSearch(space={'x': Int(0, 9), ...})` and keep only constants in `param_space`."
            )
        if dims:
            if self._space is None:
                self._set_space(dims, "param_space")
            elif self._space.to_dict() != as_space(dims).to_dict():
                raise ValueError(
                    "Both TetraOptSearch(space=...) and the Tuner's `param_space` define search dimensions "
                    f"({sorted(self._space)} and {sorted(dims)}). Define them in one place only."
                )
        for name, given, own in (("metric", metric, self._metric), ("mode", mode, self._mode)):
            if given is not None and own is not None and given != own:
                raise ValueError(
                    f"TetraOptSearch was created with {name}={own!r} but TuneConfig passes {name}={given!r}. "
                    "Set it in one place only."
                )
        if metric is not None and self._metric is None:
            self._metric = metric
        if mode is not None and self._mode is None:
            if mode not in ("min", "max"):
                raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
            self._mode = mode
        return True

    # Ray annotates suggest as Optional[Dict] but documents (and handles) the string Searcher.FINISHED too
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        """The next config, ``None`` while the concurrency limit is reached or the remaining slots are held
        by running trials, ``Searcher.FINISHED`` when the budget is used up or the grid is exhausted.

        Raises:
            RuntimeError: when no space, metric or mode was given (neither here nor through the Tuner).
        """
        self._ensure_optimizer()
        if self._max_failures is not None and self._n_failed >= self._max_failures:
            return Searcher.FINISHED
        if self._max_concurrent is not None and len(self._live) >= self._max_concurrent:
            return None
        if not self._queue:
            status = self._refill()
            if status != _QUEUED:
                return None if status == _WAIT else Searcher.FINISHED
        params = self._queue.pop(0)
        self._live[trial_id] = params
        return dict(params)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tells TetraOpt the trial's ``metric`` (a failed point when it errored or reported none/NaN)."""
        params = self._live.pop(trial_id, None)
        if params is None:
            log.debug("TetraOptSearch: ignoring the completion of unknown trial %s.", trial_id)
            return
        value = None if error or not result else finite_or_none(result.get(str(self._metric)))
        assert self._optimizer is not None
        self._optimizer.tell([params], [value])
        self._initial_keys.discard(self._optimizer.space.to_index(params))
        if value is None:
            self._n_failed += 1
        else:
            self._n_complete += 1
        self._history.append({"trial_id": trial_id, "params": dict(params), "value": value,
                              "state": "failed" if value is None else "complete"})

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float | None,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Tells TetraOpt a result obtained outside this search (it does not use the budget).

        A pruned point without a value takes its last intermediate value; ``error=True`` or a missing/NaN
        value marks the point failed (never proposed).
        """
        self._ensure_optimizer()
        assert self._optimizer is not None
        if value is None and intermediate_values:
            value = intermediate_values[-1]
        self._optimizer.tell([dict(parameters)], [None if error else finite_or_none(value)])

    def save(self, checkpoint_path: str) -> None:
        """Pickles the optimizer, the queue and the running trials to ``checkpoint_path``."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self._state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Restores what :meth:`save` wrote (used by ``ray.tune.Tuner.restore``).

        Raises:
            ValueError: when the file was not written by ``TetraOptSearch.save``.
        """
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        if not isinstance(state, dict) or state.get("tetra_search_version") != _STATE_VERSION:
            raise ValueError(f"{checkpoint_path!r} holds no TetraOptSearch state (written by another searcher?).")
        state.pop("tetra_search_version")
        for key, value in state.items():
            setattr(self, key, value)

    def get_state(self) -> dict[str, Any]:
        return self._state()

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.pop("tetra_search_version", None)
        for key, value in state.items():
            setattr(self, key, value)

    # ---------------------------------------------------------------- helpers
    def _state(self) -> dict[str, Any]:
        keys = ("_metric", "_mode", "_budget", "_seed", "_max_concurrent", "_max_failures", "_optimizer_kwargs",
                "_space", "_optimizer", "_initial", "_initial_keys", "_queue", "_live", "_n_complete",
                "_n_failed", "_history")
        state = {key: getattr(self, key) for key in keys}
        state["tetra_search_version"] = _STATE_VERSION
        return state

    def _set_space(self, space: Any, argument: str) -> None:
        if isinstance(space, Mapping):
            _reject_ray_domains(space, argument)
        if isinstance(space, Mapping) and not space:
            raise ValueError(f"`{argument}` is empty: nothing to search. Pass e.g. {{'lr': Float(1e-4, 1e-1, "
                             "log=True)}.")
        if not isinstance(space, Mapping):
            raise TypeError(f"`{argument}` must be a dict of name -> tetra_lightning.optim Categorical/Int/Float or "
                            f"a SearchSpace, got {type(space).__name__}.")
        self._space = as_space(space)
        # validate the optimizer arguments now rather than at the first trial
        TetraOpt(self._space, seed=self._seed, **self._optimizer_kwargs)
        for number, point in enumerate(self._initial):
            try:
                key = self._space.to_index(point)
            except (KeyError, ValueError) as error:
                raise ValueError(f"`points_to_evaluate[{number}]` = {point!r} is not a point of the space: "
                                 f"{error}") from None
            grid_point = self._space.from_index(key)
            for name, index in zip(self._space.names, key, strict=True):
                if not _same_value(point[name], grid_point[name]):
                    nearest = _neighbours(self._space[name], name, index, point[name])
                    raise ValueError(
                        f"`points_to_evaluate[{number}]` = {point!r} is not on the grid: {name}={point[name]!r} "
                        f"lies between grid values; the nearest are {nearest}. Use one of them."
                    )
            if key in self._initial_keys:
                raise ValueError(f"`points_to_evaluate[{number}]` = {point!r} repeats an earlier point; remove it.")
            self._initial_keys.add(key)
            self._initial[number] = {**point, **grid_point}  # the grid values themselves, not a rounding of them

    def _ensure_optimizer(self) -> None:
        if self._optimizer is not None:
            return
        if self._space is None:
            raise RuntimeError(
                "TetraOptSearch has no search space: pass `TetraOptSearch(space={...})` with tetra_lightning.optim "
                "dimensions, or put those dimensions in `Tuner(param_space={...})`."
            )
        if self._mode is None:
            raise RuntimeError(
                f"TetraOptSearch has no mode (metric={self._metric!r}): pass `mode='max'` or `mode='min'` to "
                "TetraOptSearch or to `TuneConfig`."
            )
        if self._metric is None:
            self._metric = DEFAULT_METRIC  # as Ray's searchers do when only a mode is given
        direction = "maximize" if self._mode == "max" else "minimize"
        self._optimizer = TetraOpt(self._space, budget=None, seed=self._seed, direction=direction,
                                   **self._optimizer_kwargs)

    def _slots_left(self) -> int | None:
        if self._budget is None:
            return None
        used = (self._n_complete if self._max_failures is not None else len(self._history))
        return self._budget - used - len(self._live) - len(self._queue)

    def _refill(self) -> str:
        """Queues the next points: ``_QUEUED`` when it did, ``_WAIT`` while running trials hold the remaining
        slots or points, ``_FINISHED`` when nothing is left to propose."""
        assert self._optimizer is not None
        slots = self._slots_left()
        if slots is not None and slots <= 0:
            # with max_failures a running trial that fails hands its slot back: wait for it
            return _WAIT if self._max_failures is not None and self._live else _FINISHED
        if self._initial:
            self._queue.append(self._initial.pop(0))
            return _QUEUED
        wanted = 1 if self._max_concurrent is None else max(1, self._max_concurrent - len(self._live))
        if slots is not None:
            wanted = min(wanted, slots)
        for _ in range(4):
            batch = self._optimizer.ask(wanted)
            if not batch:
                log.info("TetraOptSearch: the search space is exhausted after %d trials.", self.n_suggested)
                return _FINISHED
            # TetraOpt does not know the points_to_evaluate still running: a proposal that repeats one is
            # dropped (it stays pending in TetraOpt until that trial is told)
            fresh = [p for p in batch if self._optimizer.space.to_index(p) not in self._initial_keys]
            self._queue.extend(fresh)
            if fresh:
                return _QUEUED
        return _WAIT


# ------------------------------------------------------------------ checks
def _check_optional_int(name: str, value: Any, example: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int or None, got {value!r}. Pass e.g. `{example}`.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}. Pass e.g. `{example}`.")


def _same_value(given: Any, grid_value: Any) -> bool:
    """Whether ``given`` is ``grid_value``, up to float rounding noise (``0.1 + 0.2`` is the grid's ``0.3``)."""
    if isinstance(given, (int, float)) and isinstance(grid_value, (int, float)) and not isinstance(given, bool):
        return math.isclose(given, grid_value, rel_tol=1e-9, abs_tol=1e-12)
    return bool(given == grid_value)


def _neighbours(dimension: Dimension, name: str, index: int, value: Any) -> str:
    """The grid values on either side of an off-grid ``value`` nearest to grid point ``index``."""
    nearest = dimension.value(index)
    other = index + 1 if float(value) > float(nearest) else index - 1
    if not 0 <= other < dimension.size:
        return f"{name}={nearest!r}"
    low, high = sorted((index, other))
    return f"{name}={dimension.value(low)!r} or {name}={dimension.value(high)!r}"


def _is_ray_placeholder(value: Any) -> bool:
    """Whether ``value`` is what Ray Tune put in ``param_space`` in place of a non-primitive object."""
    return isinstance(value, tuple) and len(value) == 2 and value[0] in RAY_PLACEHOLDER_TOKENS


def _dimension_hint(domain: Any) -> str:
    """Our dimension that corresponds to a Ray Tune domain, as source text for the error message."""
    if isinstance(domain, _RayCategorical):
        return f"Categorical({list(domain.categories)!r})"
    if isinstance(domain, _RayInteger):
        return f"Int({domain.lower}, {domain.upper - 1})"
    if isinstance(domain, _RayFloat):
        log_scale = ", log=True" if isinstance(domain.get_sampler(), _RayLogUniform) else ""
        return f"Float({domain.lower}, {domain.upper}{log_scale})"
    return "Float(low, high)"


def _reject_ray_domains(space: Mapping[str, Any], argument: str) -> None:
    for name, value in space.items():
        if isinstance(value, _RayDomain):
            raise TypeError(
                f"`{argument}[{name!r}]` is a Ray Tune sampling domain ({type(value).__name__}); TetraOptSearch "
                "searches finite grids. Use tetra_lightning.optim dimensions instead, e.g. "
                f"`{name!r}: {_dimension_hint(value)}` (from tetra_lightning.optim import Categorical, Float, Int)."
            )
        if isinstance(value, Mapping) and "grid_search" in value:
            raise TypeError(
                f"`{argument}[{name!r}]` is a Ray Tune grid_search; TetraOptSearch searches the grid itself. Use "
                f"`{name!r}: Categorical({list(value['grid_search'])!r})` from tetra_lightning.optim instead."
            )
