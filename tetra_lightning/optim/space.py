"""Finite search spaces for the tensor-train optimizers.

Every dimension is a finite grid, so a search space is a tensor with one mode per dimension and a point is a
multi-index into it. Floats are discretized (uniformly, or uniformly in log space, or on their ``step``), ints are
ranges (log-spaced when ``log=True``), categoricals are their choices. A range with more than ``MAX_LEVELS`` values
(``Int(0, 2**31 - 1)``, a float with a fine ``step``) is never materialized: its grid is ``MAX_LEVELS`` of its
values, evenly spaced (in log space for log dimensions), and any value of the range snaps to the nearest of them. A
grid of size ``p**q`` can be split into ``q`` modes of size ``p`` ("quantization", as in QTT/TTOpt) so the TT
models see a longer chain of smaller modes.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_LEVELS", "Categorical", "Dimension", "Float", "Int", "SearchSpace", "as_space"]

# Grid points of one dimension at most: a longer range is represented by this many of its values.
MAX_LEVELS = 128


class Dimension(ABC):
    """Base class of a finite grid dimension: ``grid`` holds the values, ``size`` their number."""

    grid: tuple[Any, ...]

    @property
    def size(self) -> int:
        """Number of grid points."""
        return len(self.grid)

    def value(self, index: int) -> Any:
        """The grid value at ``index``."""
        return self.grid[int(index)]

    @abstractmethod
    def index(self, value: Any) -> int:
        """The grid index of ``value``."""

    def unit_coords(self) -> np.ndarray | None:
        """Positions of the grid points in ``[0, 1]`` (log-scaled for log dimensions); ``None`` if unordered."""
        coords = getattr(self, "_coords", None)
        if coords is None or len(coords) < 2:
            return None
        coords = np.asarray(coords, dtype=float)
        return (coords - coords[0]) / (coords[-1] - coords[0])

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""


class Categorical(Dimension):
    """A categorical dimension: an unordered finite set of choices.

    Choices are compared with their type: ``[0, 1, True, False]`` are four distinct choices (as Optuna accepts
    them), ``1`` and ``1.0`` are one, and NaN equals NaN.

    Args:
        choices: the values, at least one, all distinct.

    Raises:
        ValueError: if ``choices`` is empty or has duplicates.

    Example:
        >>> op = Categorical(["none", "skip", "conv"])
        >>> op.size, op.value(2), op.index("skip")
        (3, 'conv', 1)
        >>> Categorical([0, 1, True, False]).index(True)
        2
    """

    def __init__(self, choices: Sequence[Any]) -> None:
        if isinstance(choices, str) or not isinstance(choices, Iterable):
            raise TypeError(
                f"`choices` must be a list or tuple of values, got {choices!r}. "
                "Pass e.g. `Categorical(['relu', 'gelu'])`."
            )
        choices = tuple(choices)
        if len(choices) == 0:
            raise ValueError("`choices` must hold at least one value, got an empty sequence. "
                             "Pass e.g. `Categorical(['relu', 'gelu'])`.")
        self._lookup: dict[Any, int] = {}
        unhashable: list[int] = []
        for i, c in enumerate(choices):
            key = _choice_key(c)
            if key is None:
                unhashable.append(i)
                continue
            if key in self._lookup:
                raise ValueError(f"`choices` must be distinct, got {c!r} twice in {list(choices)!r}. "
                                 "Remove the duplicate.")
            self._lookup[key] = i
        for n, i in enumerate(unhashable):  # e.g. arrays: compared pairwise, there are few
            for j in unhashable[n + 1:]:
                if _equal(choices[i], choices[j]):
                    raise ValueError(f"`choices` must be distinct, got {choices[i]!r} twice in {list(choices)!r}. "
                                     "Remove the duplicate.")
        self._unhashable = tuple(unhashable)
        self.choices = choices
        self.grid = choices

    def index(self, value: Any) -> int:
        """Index of ``value`` among the choices.

        Raises:
            ValueError: if ``value`` is not one of the choices.
        """
        key = _choice_key(value)
        if key is not None and key in self._lookup:
            return self._lookup[key]
        for i in self._unhashable:
            if _equal(self.choices[i], value):
                return i
        raise ValueError(f"value {value!r} is not one of the choices {list(self.choices)!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}

    def __repr__(self) -> str:
        return f"Categorical({list(self.choices)!r})"


def _evenly_spaced_indices(n_values: int, n_levels: int) -> list[int]:
    """``n_levels`` distinct indices spread evenly over ``range(n_values)``, both ends included."""
    if n_values <= n_levels:
        return list(range(n_values))
    return sorted({round(i * (n_values - 1) / (n_levels - 1)) for i in range(n_levels)})


class Int(Dimension):
    """An integer range ``low, low + step, ..., high`` (both ends included).

    A range of more than ``MAX_LEVELS`` values is searched on ``MAX_LEVELS`` of them, evenly spaced; any integer of
    the range is accepted (and snaps to the nearest of them), and the range is never materialized.

    Args:
        low: smallest value.
        high: largest value, ``> low``; ``high - low`` must be a multiple of ``step``.
        step: positive spacing of the values.
        log: space the searched values evenly in log space (learning-rate-like integers such as widths or batch
            sizes); needs ``low >= 1`` and ``step == 1``.

    Raises:
        ValueError: if ``low >= high``, ``step < 1``, ``high - low`` is not a multiple of ``step``, or ``log`` with
            ``low < 1`` or ``step != 1``.

    Example:
        >>> layers = Int(2, 8, step=2)
        >>> layers.grid, layers.index(6)
        ((2, 4, 6, 8), 2)
        >>> width = Int(1, 1024, log=True)
        >>> width.size, width.grid[:4], width.value(width.index(37))
        (128, (1, 2, 3, 4), 37)
        >>> seed = Int(0, 2**31 - 1)
        >>> seed.size, seed.n_values
        (128, 2147483648)
    """

    def __init__(self, low: int, high: int, step: int = 1, log: bool = False) -> None:
        for name, v in (("low", low), ("high", high), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"`{name}` of Int must be an int, got {v!r}. Use Float for real values.")
        low, high, step = int(low), int(high), int(step)
        if low >= high:
            raise ValueError(f"Int needs `low < high`, got low={low}, high={high}. "
                             "Swap them, or use Categorical([value]) for a constant.")
        if step < 1:
            raise ValueError(f"Int `step` must be a positive int, got step={step}. Pass e.g. step=1.")
        if (high - low) % step != 0:
            raise ValueError(f"Int `high - low` must be a multiple of `step`, got low={low}, high={high}, "
                             f"step={step}. Use e.g. high={low + (high - low) // step * step}.")
        if log and (low < 1 or step != 1):
            raise ValueError(f"Int with `log=True` needs `low >= 1` and `step == 1`, got low={low}, step={step}. "
                             "Pass a positive lower bound such as low=1, or use log=False.")
        self.low, self.high, self.step, self.log = low, high, step, bool(log)
        self.n_values = (high - low) // step + 1
        if self.log:
            # all integers when they fit, else MAX_LEVELS log-spaced ones (every integer at the dense low end)
            self.grid = tuple(range(low, high + 1)) if self.n_values <= MAX_LEVELS else _log_ints(low, high)
            self._coords = np.log(np.asarray(self.grid, dtype=float))
        else:
            self.grid = tuple(low + i * step for i in _evenly_spaced_indices(self.n_values, MAX_LEVELS))
            self._coords = np.asarray(self.grid, dtype=float)
        self._coord_list: list[float] = self._coords.tolist()

    def index(self, value: Any) -> int:
        """Index of the grid point nearest to ``value`` (in log space when ``log=True``).

        Raises:
            ValueError: if ``value`` is not a number inside ``[low, high]``.
        """
        v = _number(value, self)
        if not self.low - self.step / 2 <= v <= self.high + self.step / 2:
            raise ValueError(f"value {value!r} is outside the Int range [{self.low}, {self.high}].")
        if self.n_values <= MAX_LEVELS and not self.log:
            return int(min(self.size - 1, max(0, round((v - self.low) / self.step))))
        coord = math.log(min(max(v, self.low), self.high)) if self.log else v
        return _nearest(self._coord_list, coord)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}

    def __repr__(self) -> str:
        return f"Int({self.low}, {self.high}, step={self.step}{', log=True' if self.log else ''})"


class Float(Dimension):
    """A real interval discretized to a finite grid.

    Args:
        low: left end (included).
        high: right end (included), ``> low``.
        log: place the grid uniformly in ``log`` space (needs ``low > 0``), e.g. for learning rates.
        grid: number of grid points (an int >= 2, default ``MAX_LEVELS`` = 128, fine enough that the interval
            behaves as continuous; a power ``p**q`` can be quantized into ``q`` modes of size ``p``), or an explicit
            increasing sequence of values inside ``[low, high]``.
        step: the values are ``low, low + step, ...`` up to ``high`` (Optuna's ``suggest_float(..., step=...)``):
            all of them when there are at most ``MAX_LEVELS``, else ``MAX_LEVELS`` evenly spaced ones; any value of
            the interval snaps to the nearest. Not with ``log`` or an explicit ``grid``.

    Raises:
        ValueError: if ``low >= high``, ``log`` with ``low <= 0``, a bad ``grid`` or ``step``.

    Example:
        >>> lr = Float(1e-4, 1e-1, log=True, grid=4)
        >>> [round(v, 6) for v in lr.grid]
        [0.0001, 0.001, 0.01, 0.1]
        >>> lr.index(0.0012)
        1
        >>> drop = Float(0.0, 0.5, step=0.1)
        >>> drop.grid, drop.index(0.30000000000000004)
        ((0.0, 0.1, 0.2, 0.3, 0.4, 0.5), 3)
    """

    def __init__(self, low: float, high: float, log: bool = False, grid: int | Sequence[float] = MAX_LEVELS,
                 step: float | None = None) -> None:
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"Float bounds must be finite, got low={low}, high={high}.")
        if low >= high:
            raise ValueError(f"Float needs `low < high`, got low={low}, high={high}. "
                             "Swap them, or use Categorical([value]) for a constant.")
        if log and low <= 0:
            raise ValueError(f"Float with `log=True` needs `low > 0`, got low={low}. "
                             "Pass a positive lower bound such as low=1e-6, or use log=False.")
        self.low, self.high, self.log = low, high, bool(log)
        self.step: float | None = None
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(step)) or float(step) <= 0:
                raise ValueError(f"Float `step` must be a positive number, got step={step!r}. Pass e.g. step=0.1.")
            if log:
                raise ValueError("Float takes `step` or `log=True`, not both (as in Optuna). Drop one of them.")
            if not (isinstance(grid, (int, np.integer)) and grid == MAX_LEVELS):
                raise ValueError(f"Float takes `step` or `grid`, not both, got step={step}, grid={grid!r}. "
                                 "Drop one of them.")
            self.step = float(step)
            n_values = int(math.floor((high - low) / self.step + 1e-9)) + 1
            picks = _evenly_spaced_indices(n_values, MAX_LEVELS)
            # low + i * step, rounded so 0.1 * 3 reads 0.3; the digits follow the step's own precision
            digits = max(0, 12 - int(math.floor(math.log10(self.step))))
            values = np.array([min(high, round(low + i * self.step, digits)) for i in picks])
        elif isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
            if grid < 2:
                raise ValueError(f"Float `grid` must be an int >= 2 or a sequence of values, got grid={grid}. "
                                 "Pass e.g. grid=16.")
            if log:
                values = np.exp(np.linspace(math.log(low), math.log(high), int(grid)))
            else:
                values = np.linspace(low, high, int(grid))
            values[0], values[-1] = low, high
        else:
            try:
                values = np.asarray(list(grid), dtype=float)  # type: ignore[arg-type]
            except (TypeError, ValueError) as err:
                raise TypeError(f"Float `grid` must be an int or a sequence of floats, got {grid!r}.") from err
            if values.size < 2 or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
                raise ValueError(f"an explicit Float `grid` needs >= 2 strictly increasing values, got {grid!r}.")
            if values[0] < low or values[-1] > high:
                raise ValueError(f"Float `grid` values must lie in [low, high] = [{low}, {high}], got {grid!r}.")
            if log and values[0] <= 0:
                raise ValueError(f"Float with `log=True` needs positive grid values, got {grid!r}.")
        self.grid = tuple(float(v) for v in values)
        self._coords = np.log(values) if log else values
        self._coord_list = self._coords.tolist()

    def index(self, value: Any) -> int:
        """Index of the grid point nearest to ``value`` (in log space when ``log=True``).

        Raises:
            ValueError: if ``value`` is not a number inside ``[low, high]``.
        """
        v = _number(value, self)
        span = self.high - self.low
        if not (self.low - 1e-9 * span <= v <= self.high + 1e-9 * span):
            raise ValueError(f"value {value!r} is outside the Float range [{self.low}, {self.high}].")
        coord = math.log(max(v, self.low)) if self.log else v
        return _nearest(self._coord_list, coord)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        else:
            out["grid"] = list(self.grid)
        return out

    def __repr__(self) -> str:
        if self.step is not None:
            return f"Float({self.low}, {self.high}, step={self.step})"
        return f"Float({self.low}, {self.high}, log={self.log}, grid={self.size})"


def _log_ints(low: int, high: int) -> tuple[int, ...]:
    """``MAX_LEVELS`` distinct integers of ``[low, high]`` spread evenly in log space (``high - low >= MAX_LEVELS``)."""

    def spread(n: int) -> list[int]:
        return sorted({int(round(v)) for v in np.exp(np.linspace(math.log(low), math.log(high), n))})

    lo, hi = MAX_LEVELS, 2 * MAX_LEVELS
    while len(spread(hi)) < MAX_LEVELS:  # rounding merges neighbours at the low end: ask for more points
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(spread(mid)) < MAX_LEVELS else (lo, mid)
    values = spread(hi)
    while len(values) > MAX_LEVELS:  # drop from the dense low end, keep both ends
        values.pop(1)
    return tuple(values)


def _number(value: Any, dim: Dimension) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"value {value!r} is not a number; {dim!r} takes numbers.")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"value {value!r} is not a number; {dim!r} takes numbers.")
    return v


def _nearest(coords: Sequence[float], coord: float) -> int:
    """Index of the sorted ``coords`` entry nearest to ``coord`` (binary search; the first on a tie)."""
    j = bisect.bisect_left(coords, coord)  # on a list: a tenth of np.searchsorted's time for one value
    if j <= 0:
        return 0
    if j >= len(coords):
        return len(coords) - 1
    return j - 1 if coord - coords[j - 1] <= coords[j] - coord else j


def nearest_levels(coords: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:func:`_nearest` for many values at once: the index of the sorted ``coords`` entry nearest to each value (the
    first on a tie; values outside the range get the end level)."""
    if len(coords) == 1:
        return np.zeros(np.shape(values), dtype=np.int64)
    j = np.clip(np.searchsorted(coords, values), 1, len(coords) - 1)
    return np.where(np.abs(coords[j - 1] - values) <= np.abs(coords[j] - values), j - 1, j).astype(np.int64)


def _choice_key(value: Any) -> Any:
    """A hashable key under which equal choices meet: bools apart from ints, NaN equal to NaN (None: unhashable)."""
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value) if isinstance(value, (float, np.floating)) else int(value)
        if isinstance(v, float) and math.isnan(v):
            return ("nan",)
        return ("number", v)
    try:
        hash(value)
    except TypeError:
        return None
    return ("other", type(value).__name__, value)


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. arrays compare elementwise: identity only
        return False


def _factor_power(n: int, max_base: int) -> tuple[int, int] | None:
    """(p, q) with p**q == n, q >= 2 and the smallest p >= 2 (None if n is no such power)."""
    for p in range(2, max_base + 1):
        q, m = 0, n
        while m % p == 0:
            m //= p
            q += 1
        if m == 1 and q >= 2:
            return p, q
    return None


_MEMO_TYPES = (int, float, str, bool)  # param values whose multi-index SearchSpace.to_index remembers
_MEMO_SIZE = 65536


class SearchSpace(Mapping[str, Dimension]):
    """An ordered product of named finite dimensions: a tensor with one mode per dimension.

    Args:
        dimensions: mapping name -> ``Categorical`` | ``Int`` | ``Float``. A plain list/tuple value is read as a
            ``Categorical`` of its items.
        quantize: split every dimension of size ``p**q`` (``q >= 2``, ``p <= max_base``) into ``q`` TT modes of
            size ``p``; the optimizers then work on that longer chain (QTT). Points and params are unchanged.
        max_base: largest base ``p`` tried by ``quantize``.

    Raises:
        ValueError: if the mapping is empty or a value is not a dimension.

    Example:
        >>> space = SearchSpace({"lr": Float(1e-4, 1e-1, log=True, grid=4), "act": ["relu", "gelu"]})
        >>> space.sizes, space.size
        ((4, 2), 8)
        >>> space.from_index((1, 0))["act"], space.to_index({"lr": 0.001, "act": "gelu"})
        ('relu', (1, 1))
    """

    def __init__(self, dimensions: Mapping[str, Any], quantize: bool = False, max_base: int = 4) -> None:
        if isinstance(dimensions, SearchSpace):
            dimensions = dict(dimensions.items())
        if not isinstance(dimensions, Mapping):
            raise TypeError(f"`dimensions` must be a dict name -> dimension, got {type(dimensions).__name__}. "
                            "Pass e.g. SearchSpace({'lr': Float(1e-4, 1e-1, log=True)}).")
        if len(dimensions) == 0:
            raise ValueError("a SearchSpace needs at least one dimension, got an empty dict. "
                             "Pass e.g. SearchSpace({'x': Int(0, 9)}).")
        dims: dict[str, Dimension] = {}
        for name, dim in dimensions.items():
            if not isinstance(name, str):
                raise TypeError(f"dimension names must be str, got {name!r}.")
            if isinstance(dim, (list, tuple)):
                dim = Categorical(dim)
            if not isinstance(dim, Dimension):
                raise TypeError(f"dimension {name!r} must be Categorical, Int or Float (or a list of choices), "
                                f"got {dim!r}.")
            dims[name] = dim
        self._dims = dims
        self._index_memo: dict[tuple[Any, ...], tuple[int, ...]] = {}
        self.names: tuple[str, ...] = tuple(dims)
        self.sizes: tuple[int, ...] = tuple(d.size for d in dims.values())
        self.quantize = bool(quantize)
        # TT modes: dimension k occupies modes [start_k, start_k + q_k) of sizes p_k (C order, first mode most
        # significant), or a single mode of its own size.
        self._split: list[tuple[int, int]] = []
        modes: list[int] = []
        for n in self.sizes:
            pq = _factor_power(n, max_base) if quantize else None
            p, q = pq if pq is not None else (n, 1)
            self._split.append((p, q))
            modes.extend([p] * q)
        self.mode_sizes: tuple[int, ...] = tuple(modes)

    # Mapping interface
    def __getitem__(self, name: str) -> Dimension:
        return self._dims[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self._dims.items())
        return f"SearchSpace({{{inner}}})"

    @property
    def size(self) -> int:
        """Number of points (exact Python int, may be huge)."""
        return math.prod(self.sizes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the dimensions."""
        return {k: v.to_dict() for k, v in self._dims.items()}

    def from_index(self, index: Sequence[int]) -> dict[str, Any]:
        """Params dict of a multi-index (one grid index per dimension)."""
        if len(index) != len(self.names):
            raise ValueError(f"index must have {len(self.names)} entries, got {len(index)}: {tuple(index)!r}.")
        return {name: self._dims[name].value(int(i)) for name, i in zip(self.names, index, strict=True)}

    def to_index(self, params: Mapping[str, Any]) -> tuple[int, ...]:
        """Multi-index of a params dict (nearest grid point for Int/Float).

        Raises:
            KeyError: if a dimension is missing from ``params``.
            ValueError: if a value is not in (or outside the range of) its dimension.
        """
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"params {dict(params)!r} miss the dimension(s) {missing}.")
        try:
            values = tuple(params[n] for n in self.names)
            key = tuple((type(v), v) for v in values)  # True and 1 index differently in a Categorical
            hit = self._index_memo.get(key) if all(type(v) in _MEMO_TYPES for v in values) else None
            if hit is not None:
                return hit
            index = tuple(self._dims[n].index(v) for n, v in zip(self.names, values, strict=True))
            if all(type(v) in _MEMO_TYPES for v in values):
                if len(self._index_memo) >= _MEMO_SIZE:
                    self._index_memo.clear()
                self._index_memo[key] = index
            return index
        except ValueError as err:
            raise ValueError(f"params {dict(params)!r} do not fit the space: {err}") from None

    def sample_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniformly random multi-indices, shape ``(n, len(self))``."""
        return np.stack([rng.integers(0, s, size=n) for s in self.sizes], axis=1).astype(np.int64)

    def to_modes(self, indices: np.ndarray) -> np.ndarray:
        """Multi-indices ``(m, ndim)`` -> TT mode indices ``(m, len(mode_sizes))``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1, len(self.sizes))
        if not self.quantize:
            return indices
        cols = []
        for k, (p, q) in enumerate(self._split):
            v = indices[:, k]
            digits = []
            for _ in range(q):
                digits.append(v % p)
                v = v // p
            cols.extend(reversed(digits))
        return np.stack(cols, axis=1)

    def from_modes(self, modes: np.ndarray) -> np.ndarray:
        """TT mode indices ``(m, len(mode_sizes))`` -> multi-indices ``(m, ndim)``."""
        modes = np.asarray(modes, dtype=np.int64).reshape(-1, len(self.mode_sizes))
        if not self.quantize:
            return modes
        out = np.zeros((modes.shape[0], len(self.sizes)), dtype=np.int64)
        col = 0
        for k, (p, q) in enumerate(self._split):
            v = np.zeros(modes.shape[0], dtype=np.int64)
            for _ in range(q):
                v = v * p + modes[:, col]
                col += 1
            out[:, k] = v
        return out


def as_space(space: SearchSpace | Mapping[str, Any]) -> SearchSpace:
    """Return ``space`` as a :class:`SearchSpace` (a plain dict of dimensions is accepted).

    Example:
        >>> as_space({"x": Int(0, 3)}).sizes
        (4,)
    """
    if isinstance(space, SearchSpace):
        return space
    return SearchSpace(space)
