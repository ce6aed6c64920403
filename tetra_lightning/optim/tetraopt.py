"""TetraOpt: a batch-native ask/tell black-box optimizer over finite grids, built on tensor trains.

Methods (``method=``):

- ``"tetra"`` (default): model-based TT search for small budgets, in two forms chosen by the space.
  On spaces with a ``Float`` or an ``Int`` of more than 32 values (what a training script tunes: learning rates,
  dropout, widths), :mod:`tetra_lightning.optim.smooth`: a Gaussian process whose posterior mean is a tensor train
  on the fine grid (main effects as a rank-2 TT plus a CP interaction), log expected improvement maximized by
  coordinate ascent along the TT's modes, partly inside a trust region around the incumbent. On spaces of
  categoricals and short integer ranges (NAS cells), the finite-grid TT model: after a balanced random design, every
  proposal fits a low-rank TT surrogate (an additive model, which is an exact rank-2 TT, refined by ALS TT
  completion with a proximal ridge toward it) on a bootstrap resample of the (rank-transformed) values seen so far
  (Thompson sampling), then takes the surrogate's best unseen point, either among one-coordinate mutations of
  the incumbent (local search) or over the whole space (enumerated when small, else TT coordinate ascent from
  the elite and random starts). When the search has not improved its best for ``restart`` evaluations, it starts an
  independent search epoch (a new balanced design, a surrogate fitted on the new epoch's points only), so a run
  caught in a local optimum's basin spends the rest of its budget on a fresh search instead of around that basin;
  the cache still keeps any point from being evaluated twice, and the best point is kept across epochs.
- ``"ttopt"``: TT-cross with maxvol pivots on scores mapped so the incumbent dominates (TTOpt), rank-adaptive
  from rank 1 up to ``rank`` via rectangular maxvol, restarted from the incumbent when the sweeps stop producing
  new points.
- ``"protes"``: sampling from a non-negative TT distribution whose log-likelihood of the elite is raised by Adam
  steps after every batch (PROTES), with the elite taken over the whole history.
- ``"random"``: uniform random unseen points (a baseline).

Budget semantics: the budget counts unique evaluations told to the optimizer (failed ones included). ``ask`` only
returns distinct points that were never evaluated nor are pending, so repeated points never reach the objective.
Points passed as ``warm_start`` are known before the search and are not counted.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tetra_lightning.optim._strategy import MAX_FIT_POINTS, Strategy, normal_scores
from tetra_lightning.optim.smooth import (
    DEFAULT_LOCAL_FRACTION,
    DEFAULT_N_INIT,
    SmoothStrategy,
    is_smooth_space,
)
from tetra_lightning.optim.space import SearchSpace, as_space
from tetra_lightning.optim.tt import (
    additive_tt,
    maxvol_rect,
    tt_als_fit,
    tt_coordinate_ascent,
    tt_distribution_loglik_grad,
    tt_distribution_sample,
    tt_eval,
)

__all__ = ["METHODS", "OptimizeResult", "TetraOpt", "maximize", "minimize"]

METHODS = ("tetra", "ttopt", "protes", "random")
_ENUMERATE_LIMIT = 1 << 16


@dataclass
class OptimizeResult:
    """Result of :func:`maximize` / :func:`minimize`.

    Attributes:
        best_params: params of the best successful evaluation (``None`` if none succeeded).
        best_value: its value (``nan`` if none succeeded).
        history: one dict per unique evaluation, in order: ``number``, ``params``, ``value`` (``None`` when
            failed), ``state`` (``"complete"`` or ``"failed"``), ``error`` (traceback text or ``None``).
        n_evaluations: number of unique evaluations (the budget used).
        n_failed: how many of them failed.
        n_cache_hits: repeated requests answered from the cache (not counted in the budget).

    Example:
        >>> from tetra_lightning.optim import Int, maximize
        >>> res = maximize(lambda p: -(p["x"] - 3) ** 2, {"x": Int(0, 9)}, budget=10)
        >>> res.best_params, res.best_value, res.n_evaluations
        ({'x': 3}, 0.0, 10)
    """

    best_params: dict[str, Any] | None
    best_value: float
    history: list[dict[str, Any]] = field(default_factory=list)
    n_evaluations: int = 0
    n_failed: int = 0
    n_cache_hits: int = 0

    @property
    def values(self) -> list[float | None]:
        """Values in evaluation order (``None`` for failures)."""
        return [h["value"] for h in self.history]


class TetraOpt:
    """Tensor-train black-box optimizer with a batch-native ask/tell interface.

    Args:
        space: a :class:`SearchSpace` or a plain dict of dimensions.
        budget: maximum number of unique evaluations (``None``: unlimited, until the space is exhausted).
        seed: random seed; the same seed and the same told values give the same sequence of points.
        direction: ``"maximize"`` or ``"minimize"``.
        method: one of ``"tetra"`` (default), ``"ttopt"``, ``"protes"``, ``"random"`` (see the module docstring).
        rank: TT rank of the surrogate (``tetra``), maximal rank (``ttopt``) or distribution rank (``protes``);
            ``None`` picks 2, 2 and 4.
        n_init: size of the initial design (``tetra``); ``None`` picks 6 on smooth spaces (a Latin hypercube),
            else a value from the space (a balanced design).
        local_fraction: share of ``tetra`` proposals searched near the incumbent: among its one-coordinate
            mutations on categorical spaces (default 0.5), inside the trust region on smooth ones (default 0.3).
        warm_start: known ``(params, value)`` pairs used by the model but not counted in the budget and never
            proposed again.
        options: method-specific settings: ``als_sweeps`` (2), ``prox`` (1.0), ``ridge`` (1.0), ``restart``
            (evaluations without improvement before a new search epoch; default 2.5x the number of one-coordinate
            neighbors of a point, at least 30; 0 turns restarts off) for ``tetra``; on smooth spaces also
            ``random_candidates`` (0: uniform candidates scored by expected improvement in every global step, the
            best two starting the fibre-wise ascent, as Optuna's GPSampler) and ``multiscale`` (False: the ascent
            also tries power-of-two steps away from every observed level on axes of more than 40 levels), both off
            by default (not better on ``benchmarks/hpo.py`` yet), ``gauss_candidates`` (192: Gaussian steps of the
            incumbent in every axis at once among the candidates, 0 turns them off), ``transform`` (``"clip"``: how
            values are standardized for the surrogate, see :func:`~tetra_lightning.optim.smooth.warp_scores`) and
            ``max_noise`` (0.01: the largest noise variance the Gaussian process may fit, on standardized values,
            a float in (0, 1]; 1.0 lets the evidence explain any difference as noise;
            ``TetraOptSampler(deterministic_objective=True)`` sets 1e-4);
            ``batch`` (10), ``elite`` (3), ``lr`` (0.1), ``gd_steps`` (3) for ``protes``.

    Raises:
        ValueError: for an unknown ``method``/``direction``, a non-positive ``budget`` or bad options.

    Example:
        >>> from tetra_lightning.optim import Int, TetraOpt
        >>> opt = TetraOpt({"x": Int(0, 9), "y": Int(0, 9)}, budget=30, seed=0)
        >>> while params := opt.ask(2):
        ...     opt.tell(params, [-(p["x"] - 7) ** 2 - (p["y"] - 2) ** 2 for p in params])
        >>> opt.best_params, opt.best_value, len(opt.history)
        ({'x': 7, 'y': 2}, 0.0, 30)
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        budget: int | None = None,
        seed: int = 0,
        *,
        direction: str = "maximize",
        method: str = "tetra",
        rank: int | None = None,
        n_init: int | None = None,
        local_fraction: float | None = None,
        warm_start: Sequence[tuple[Mapping[str, Any], float]] | None = None,
        **options: Any,
    ) -> None:
        self.space = as_space(space)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, np.integer))
                                   or budget < 1):
            raise ValueError(f"`budget` must be a positive int or None, got {budget!r}. Pass e.g. budget=100.")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"`direction` must be 'maximize' or 'minimize', got {direction!r}.")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}. The default is 'tetra'.")
        if rank is not None and (not isinstance(rank, (int, np.integer)) or rank < 1):
            raise ValueError(f"`rank` must be a positive int or None, got {rank!r}. Pass e.g. rank=2.")
        if local_fraction is not None and not 0.0 <= float(local_fraction) <= 1.0:
            raise ValueError(f"`local_fraction` must be in [0, 1], got {local_fraction!r}.")
        if n_init is not None and (not isinstance(n_init, (int, np.integer)) or n_init < 1):
            raise ValueError(f"`n_init` must be a positive int or None, got {n_init!r}.")
        known = {"als_sweeps", "prox", "ridge", "local_elite", "clip", "restart", "batch", "elite", "lr", "gd_steps",
                 "smooth", "refine_scale", "tr_init", "tr_min", "fail_tol", "succ_tol", "transform", "acq",
                 "random_candidates", "multiscale", "max_noise", "gauss_candidates"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for TetraOpt; known options are {sorted(known)}.")
        self.budget = None if budget is None else int(budget)
        self.seed = int(seed)
        self.direction = direction
        self.method = method
        self.options = dict(options)
        self._sign = 1.0 if direction == "maximize" else -1.0
        self._rng = np.random.default_rng(seed)
        self._dims = np.array(self.space.sizes, dtype=np.int64)
        self._modes = self.space.mode_sizes
        self._cache: dict[tuple[int, ...], float] = {}  # index -> raw value (nan when failed)
        self._pending: set[tuple[int, ...]] = set()
        self._ok_index: list[tuple[int, ...]] = []
        self._ok_score: list[float] = []  # sign-adjusted: larger is better
        self._n_failed_seen = 0
        self.history: list[dict[str, Any]] = []
        self.n_cache_hits = 0
        self._best_i: tuple[int, ...] | None = None
        self._best_params: dict[str, Any] | None = None
        self._best_score = -math.inf
        self._all: np.ndarray | None = None
        if self.space.size <= _ENUMERATE_LIMIT:
            grids = np.meshgrid(*[np.arange(s) for s in self.space.sizes], indexing="ij")
            self._all = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
        default_rank = {"tetra": 2, "ttopt": 2, "protes": 4, "random": 1}[method]
        self.rank = int(rank) if rank is not None else default_rank
        smooth = method == "tetra" and is_smooth_space(self.space)
        if n_init is None:
            n_init = DEFAULT_N_INIT if smooth else int(np.clip(3 + sum(s - 1 for s in self.space.sizes) // 2, 5, 15))
        self.n_init = int(n_init)
        if local_fraction is None:
            local_fraction = DEFAULT_LOCAL_FRACTION if smooth else 0.5
        self.local_fraction = float(local_fraction)
        for params, value in warm_start or []:
            idx = self.space.to_index(params)
            if idx not in self._cache:
                self._record(idx, self._exact(params), _as_value(value), None, counted=False)
        self._strategy = _make_strategy(self)

    # ------------------------------------------------------------------ state
    @property
    def n_evaluations(self) -> int:
        """Unique evaluations told so far (counted against the budget)."""
        return len(self.history)

    @property
    def best_params(self) -> dict[str, Any] | None:
        """Params of the best successful evaluation (``None`` before the first one)."""
        return None if self._best_params is None else dict(self._best_params)

    @property
    def best_value(self) -> float:
        """Best value seen (``nan`` before the first successful evaluation)."""
        return self._cache[self._best_i] if self._best_i is not None else math.nan

    @property
    def n_restarts(self) -> int:
        """Independent search epochs started after the search stalled (``method="tetra"``; 0 for the others)."""
        return int(getattr(self._strategy, "n_restarts", 0))

    def remaining(self) -> int | None:
        """Evaluations that may still be asked (budget minus told and pending), ``None`` when unlimited."""
        if self.budget is None:
            return None
        return max(0, self.budget - self.n_evaluations - len(self._pending))

    # ---------------------------------------------------------------- ask/tell
    def ask(self, n: int = 1) -> list[dict[str, Any]]:
        """Propose up to ``n`` distinct points never evaluated nor pending.

        Fewer (possibly none) are returned only when the budget or the space is exhausted.

        Args:
            n: number of points wanted (>= 1).

        Returns:
            A list of params dicts.

        Raises:
            ValueError: if ``n < 1``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"`n` must be a positive int, got {n!r}. Pass e.g. ask(4).")
        rem = self.remaining()
        n = int(n) if rem is None else min(int(n), rem)
        n = min(n, self.space.size - len(self._cache) - len(self._pending))
        out: list[tuple[int, ...]] = []
        if n <= 0:
            return []
        taken: set[tuple[int, ...]] = set()
        for idx in self._strategy.propose(n):
            t = tuple(int(v) for v in idx)
            if t in self._cache or t in self._pending or t in taken:
                continue
            taken.add(t)
            out.append(t)
            if len(out) == n:
                break
        if len(out) < n:
            out.extend(self._random_unseen(n - len(out), taken))
        for t in out:
            self._pending.add(t)
        return [self.space.from_index(t) for t in out]

    def tell(self, params: Sequence[Mapping[str, Any]], values: Sequence[float | None]) -> None:
        """Report the values of evaluated points (batch).

        ``None``, NaN or inf values mark failed evaluations: they are recorded, count against the budget, and are
        never proposed again. A point already evaluated is answered from the cache: the new value is ignored and
        counted as a cache hit, not as an evaluation. A value between grid points (e.g. from another sampler) is
        recorded with its exact params in :attr:`history` and :attr:`best_params`; the model files it under the
        nearest grid point, which is then never proposed.

        Args:
            params: params dicts, e.g. as returned by :meth:`ask` (other points of the space are accepted too).
            values: one value per params dict.

        Raises:
            ValueError: if the lengths differ or a params dict does not fit the space.
            TypeError: if a value is neither a number nor ``None`` (nothing of the batch is recorded then).
        """
        self._tell(params, values, None)

    def _tell(self, params: Sequence[Mapping[str, Any]], values: Sequence[float | None],
              errors: Sequence[str | None] | None) -> None:
        if isinstance(params, Mapping):
            raise TypeError("`params` must be a list of params dicts; wrap a single one as tell([params], [value]).")
        if len(params) != len(values):
            raise ValueError(f"`params` and `values` must have the same length, got {len(params)} and "
                             f"{len(values)}.")
        # validate the whole batch first: a bad entry records nothing
        points = [(self.space.to_index(p), self._exact(p)) for p in params]
        numbers = [_as_value(v) for v in values]
        new_i, new_s = [], []
        for j, ((idx, exact), v) in enumerate(zip(points, numbers, strict=True)):
            if idx in self._cache:
                self.n_cache_hits += 1
                continue
            self._pending.discard(idx)
            error = errors[j] if errors is not None else None
            score = self._record(idx, exact, v, error, counted=True)
            if score is not None:
                new_i.append(idx)
                new_s.append(score)
        self._strategy.observe(new_i, new_s)

    def _exact(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The told params as plain Python values, in the space's order (dimensions only)."""
        return {name: _plain(params[name]) for name in self.space.names}

    def _record(self, idx: tuple[int, ...], params: dict[str, Any], val: float, error: str | None,
                counted: bool) -> float | None:
        ok = math.isfinite(val)
        self._cache[idx] = val if ok else math.nan
        if counted:
            self.history.append({
                "number": len(self.history),
                "params": dict(params),
                "value": val if ok else None,
                "state": "complete" if ok else "failed",
                "error": error,
            })
        if not ok:
            self._n_failed_seen += 1
            return None
        score = self._sign * val
        self._ok_index.append(idx)
        self._ok_score.append(score)
        if score > self._best_score:
            self._best_score = score
            self._best_i = idx
            self._best_params = dict(params)
        return score

    # ---------------------------------------------------------------- helpers
    def _is_free(self, idx: tuple[int, ...]) -> bool:
        return idx not in self._cache and idx not in self._pending

    def _random_unseen(self, n: int, taken: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        for _ in range(50):
            cand = self.space.sample_indices(self._rng, max(4 * n, 8))
            for row in cand:
                t = tuple(int(v) for v in row)
                if self._is_free(t) and t not in taken:
                    taken.add(t)
                    out.append(t)
                    if len(out) == n:
                        return out
        if self._all is not None:  # nearly exhausted small space: scan what is left
            for row in self._all[self._rng.permutation(len(self._all))]:
                t = tuple(int(v) for v in row)
                if self._is_free(t) and t not in taken:
                    taken.add(t)
                    out.append(t)
                    if len(out) == n:
                        break
        return out

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        """Successful points (multi-indices) and their scores (larger is better)."""
        if not self._ok_index:
            return np.zeros((0, len(self._dims)), dtype=np.int64), np.zeros(0)
        return np.array(self._ok_index, dtype=np.int64), np.array(self._ok_score, dtype=float)

    def _failed_indices(self) -> np.ndarray:
        rows = [k for k, v in self._cache.items() if not math.isfinite(v)]
        if not rows:
            return np.zeros((0, len(self._dims)), dtype=np.int64)
        return np.array(rows, dtype=np.int64)


def _as_value(value: Any) -> float:
    """A told value as a float (NaN for ``None``: a failed evaluation)."""
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        raise TypeError(f"a told value must be a number or None (a failed evaluation), got {value!r}. "
                        "Tell the objective's float value, or None for a failed evaluation.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"a told value must be a number or None (a failed evaluation), got {value!r} "
                        f"({type(value).__name__}). Tell the objective's float value, or None for a failed "
                        "evaluation.") from None


def _plain(value: Any) -> Any:
    """numpy scalars as Python scalars."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------- strategies
def _make_strategy(opt: TetraOpt) -> Strategy:
    if opt.method == "tetra" and is_smooth_space(opt.space):
        return SmoothStrategy(opt)
    return {"tetra": _TetraStrategy, "ttopt": _CrossStrategy, "protes": _ProtesStrategy,
            "random": Strategy}[opt.method](opt)


class _TetraStrategy(Strategy):
    """Bootstrap-Thompson TT surrogate + local search around the incumbent (the default)."""

    def __init__(self, opt: TetraOpt) -> None:
        super().__init__(opt)
        self.sweeps = int(opt.options.get("als_sweeps", 2))
        self.prox = float(opt.options.get("prox", 1.0))
        self.ridge = float(opt.options.get("ridge", 1.0))
        self.local_elite = int(opt.options.get("local_elite", 1))
        self.clip = float(opt.options.get("clip", 0.0))
        if self.local_elite < 1 or not 0.0 <= self.clip < 1.0:
            raise ValueError("`local_elite` must be >= 1 and `clip` in [0, 1), got "
                             f"local_elite={self.local_elite}, clip={self.clip}.")
        if self.sweeps < 0 or self.prox <= 0 or self.ridge <= 0:
            raise ValueError("`als_sweeps` must be >= 0 and `prox`, `ridge` > 0, got "
                             f"als_sweeps={self.sweeps}, prox={self.prox}, ridge={self.ridge}.")
        n_neighbors = sum(s - 1 for s in opt.space.sizes)
        restart = opt.options.get("restart", max(30, round(2.5 * n_neighbors)))
        if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)) or restart < 0:
            raise ValueError(f"`restart` must be a non-negative int (0 turns restarts off), got {restart!r}.")
        self.restart = int(restart)
        self.n_restarts = 0
        self._epoch_start = 0  # position in opt._ok_index where the current search epoch starts
        self._epoch_best = -math.inf
        self._stale = 0  # evaluations since the epoch's best last improved
        self._told = 0  # history entries processed
        self._n_ok = len(opt._ok_index)  # successful points processed (warm starts belong to the first epoch)
        self._design = self._balanced_design(opt.n_init)
        # a surrogate fit costs ~ the number of TT modes: on long chains one fit serves several proposals so the
        # overhead per point stays small (1 on NAS-Bench-201's 6 modes, 4 on 20 modes)
        n_modes = len(opt._modes)
        self.picks_per_fit = max(1, round(n_modes / 5))
        if "als_sweeps" not in opt.options and n_modes > 10:
            self.sweeps = 1
        self._queue: list[np.ndarray] = []

    def observe(self, indices: list[tuple[int, ...]], scores: list[float]) -> None:
        # walk the history point by point (failures included), so telling a batch at once, or replaying a whole
        # study as Optuna's sampler does, restarts at the same points as telling one by one
        opt = self.opt
        for h in opt.history[self._told:]:
            if h["value"] is not None:
                self._n_ok += 1
                score = opt._sign * h["value"]
                if score > self._epoch_best:
                    self._epoch_best, self._stale = score, 0
                else:
                    self._stale += 1
            else:
                self._stale += 1
            if self.restart and self._stale >= self.restart:
                # the epoch has stalled (typically in a local optimum's basin): start an independent one
                self.n_restarts += 1
                self._epoch_start = self._n_ok
                self._epoch_best, self._stale = -math.inf, 0
                self._design = self._balanced_design(opt.n_init)
                self._queue.clear()
        self._told = len(opt.history)

    def _balanced_design(self, n: int) -> list[np.ndarray]:
        # every dimension cycles through its values in random order: each value appears ~n/size times
        opt = self.opt
        cols = []
        for s in opt.space.sizes:
            reps = -(-n // s)
            col = np.concatenate([opt._rng.permutation(s) for _ in range(reps)])[:n]
            cols.append(col)
        pts = np.stack(cols, axis=1)
        return [pts[i] for i in range(n)]

    def _fit(self, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        opt = self.opt
        rng = opt._rng
        boot = rng.integers(0, len(y), size=len(y))
        xb, yb = x[boot], y[boot]
        modes = opt.space.to_modes(xb)
        sizes = opt._modes
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        design = np.zeros((len(yb), int(sum(sizes))))
        for k in range(len(sizes)):
            design[np.arange(len(yb)), offsets[k] + modes[:, k]] = 1.0
        mean = float(yb.mean())
        coef = np.linalg.solve(design.T @ design + self.ridge * np.eye(design.shape[1]), design.T @ (yb - mean))
        terms = [coef[offsets[k]:offsets[k] + s] for k, s in enumerate(sizes)]
        cores = additive_tt(mean, terms, rank=opt.rank, rng=rng, noise=0.05)
        if opt.rank >= 2 and self.sweeps > 0 and len(sizes) > 1:
            cores = tt_als_fit(cores, modes, yb, sweeps=self.sweeps, prox=self.prox)
        return cores

    def _predict(self, cores: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
        return tt_eval(cores, self.opt.space.to_modes(idx))

    def _neighbors(self, center: Sequence[int]) -> np.ndarray:
        rows = []
        for k, s in enumerate(self.opt.space.sizes):
            for v in range(s):
                if v != center[k]:
                    row = np.array(center, dtype=np.int64)
                    row[k] = v
                    rows.append(row)
        return np.array(rows, dtype=np.int64).reshape(-1, len(center))

    def _free_mask(self, cand: np.ndarray, taken: set[tuple[int, ...]]) -> np.ndarray:
        opt = self.opt
        return np.array([opt._is_free(t) and t not in taken for t in map(tuple, cand.tolist())], dtype=bool)

    def propose(self, n: int) -> list[np.ndarray]:
        opt = self.opt
        out: list[np.ndarray] = []
        taken: set[tuple[int, ...]] = set()
        while self._design and len(out) < n:
            row = self._design.pop(0)
            t = tuple(int(v) for v in row)
            if opt._is_free(t):
                out.append(row)
                taken.add(t)
        x, y = opt._data()
        x, y = x[self._epoch_start:], y[self._epoch_start:]  # the current epoch's points (warm starts in the first)
        if len(out) >= n or len(y) < 2:
            return out
        # failures are modelled as the worst score seen, so their region is avoided
        failed = opt._failed_indices()
        if len(failed):
            x = np.concatenate([x, failed])
            y = np.concatenate([y, np.full(len(failed), y.min())])
        while self._queue and len(out) < n:
            row = self._queue.pop(0)
            t = tuple(int(v) for v in row)
            if opt._is_free(t) and t not in taken:
                out.append(row)
                taken.add(t)
        if len(out) >= n:
            return out
        if len(y) > MAX_FIT_POINTS:
            # bounded fit cost on long runs: the best half of the cap plus a random sample of the rest
            ranked = np.argsort(-y)
            keep = np.concatenate([ranked[: MAX_FIT_POINTS // 2],
                                   opt._rng.choice(ranked[MAX_FIT_POINTS // 2:], MAX_FIT_POINTS // 2,
                                                   replace=False)])
            x, y = x[keep], y[keep]
        scores = normal_scores(y)
        if self.clip > 0:  # focus the model on the good region: all points below the quantile look alike
            scores = np.maximum(scores, np.quantile(scores, self.clip))
        order = np.argsort(-y)
        while len(out) < n:
            cores = self._fit(x, scores)
            picks = self._picks(cores, x, order, taken, max(self.picks_per_fit, 1))
            if not picks:
                break
            out.append(picks[0])
            self._queue.extend(picks[1:])
        while self._queue and len(out) < n:
            out.append(self._queue.pop(0))
        return out

    def _picks(self, cores: list[np.ndarray], x: np.ndarray, order: np.ndarray, taken: set[tuple[int, ...]],
               count: int) -> list[np.ndarray]:
        opt = self.opt
        out: list[np.ndarray] = []
        while len(out) < count:
            pick = None
            if opt._rng.random() < opt.local_fraction:
                # one-coordinate mutations of the best `local_elite` points that still have unseen neighbors
                pool, used = [], 0
                for center in order[: 5 * self.local_elite]:
                    cand = self._neighbors(x[center])
                    free = self._free_mask(cand, taken)
                    if free.any():
                        pool.append(cand[free])
                        used += 1
                        if used == self.local_elite:
                            break
                if pool:
                    cand = np.concatenate(pool)
                    pick = cand[int(np.argmax(self._predict(cores, cand)))]
            if pick is None:
                pick = self._global_pick(cores, x, order, taken)
            if pick is None:
                break
            out.append(pick)
            taken.add(tuple(int(v) for v in pick))
        return out

    def _global_pick(self, cores: list[np.ndarray], x: np.ndarray, order: np.ndarray,
                     taken: set[tuple[int, ...]]) -> np.ndarray | None:
        opt = self.opt
        if opt._all is not None:
            pred = self._predict(cores, opt._all)
            for j in np.argsort(-pred)[: len(opt._cache) + len(opt._pending) + len(taken) + 1]:
                t = tuple(int(v) for v in opt._all[j])
                if opt._is_free(t) and t not in taken:
                    return opt._all[j]
            return None
        starts = np.concatenate([x[order[:2]], opt.space.sample_indices(opt._rng, 2)])
        space = opt.space
        local = space.from_modes(tt_coordinate_ascent(cores, space.to_modes(starts), max_rounds=4))
        cand = np.concatenate([local, self._neighbors(local[0]), space.sample_indices(opt._rng, 32)])
        free = self._free_mask(cand, taken)
        if not free.any():
            return None
        cand = cand[free]
        return cand[int(np.argmax(self._predict(cores, cand)))]


class _CrossStrategy(Strategy):
    """TTOpt-style TT-cross: sweeps over the modes requesting fibers, maxvol on incumbent-dominated scores."""

    def __init__(self, opt: TetraOpt) -> None:
        super().__init__(opt)
        self.d = len(opt._modes)
        self._restart(opt.space.to_modes(opt.space.sample_indices(opt._rng, 1))[0])

    def _restart(self, x0: np.ndarray) -> None:
        d = self.d
        self.left = [np.array(x0[:k], dtype=np.int64).reshape(1, k) for k in range(d)]
        self.right = [np.array(x0[k + 1:], dtype=np.int64).reshape(1, d - k - 1) for k in range(d)]
        self.k = d - 1
        self.direction = -1
        self.steps_without_new = 0

    def _fiber(self, k: int) -> np.ndarray:
        n = self.opt._modes[k]
        lft, rgt = self.left[k], self.right[k]
        a, b = len(lft), len(rgt)
        li = np.repeat(np.arange(a), n * b)
        ii = np.tile(np.repeat(np.arange(n), b), a)
        ri = np.tile(np.arange(b), a * n)
        return np.concatenate([lft[li], ii[:, None], rgt[ri]], axis=1)

    def _scores(self, vals: np.ndarray) -> np.ndarray:
        opt = self.opt
        finite = np.isfinite(vals)
        ref = opt._best_score if np.isfinite(opt._best_score) else 0.0
        _, ys = opt._data()
        scale = float(ys.std()) if len(ys) > 1 and ys.std() > 0 else 1.0
        z = np.where(finite, vals, -np.inf)
        return np.pi / 2 - np.arctan((ref - z) / scale)

    def _advance(self, fiber: np.ndarray, vals: np.ndarray) -> None:
        opt = self.opt
        k, d = self.k, self.d
        a, n, b = len(self.left[k]), opt._modes[k], len(self.right[k])
        z = self._scores(vals).reshape(a, n, b)
        extra = 1
        if self.direction > 0 and k < d - 1:
            mat = z.reshape(a * n, b)
            q, _ = np.linalg.qr(mat)
            target = min(opt.rank, a * n)
            rows = maxvol_rect(q, max_extra=max(0, min(extra, target - q.shape[1])), force=True)
            best_row = int(np.argmax(mat.max(axis=1)))
            if best_row not in rows:
                rows[-1] = best_row
            rows = rows[:target]
            li, ii = rows // n, rows % n
            self.left[k + 1] = np.concatenate([self.left[k][li], ii[:, None]], axis=1)
        elif self.direction < 0 and k > 0:
            mat = z.reshape(a, n * b).T
            q, _ = np.linalg.qr(mat)
            target = min(opt.rank, n * b)
            rows = maxvol_rect(q, max_extra=max(0, min(extra, target - q.shape[1])), force=True)
            best_row = int(np.argmax(mat.max(axis=1)))
            if best_row not in rows:
                rows[-1] = best_row
            rows = rows[:target]
            ii, ri = rows // b, rows % b
            self.right[k - 1] = np.concatenate([ii[:, None], self.right[k][ri]], axis=1)
        nk = k + self.direction
        if nk < 0 or nk >= d:
            self.direction = -self.direction
            nk = k + self.direction if d > 1 else k
        self.k = nk

    def propose(self, n: int) -> list[np.ndarray]:
        opt = self.opt
        space = opt.space
        for _ in range(4 * self.d + 4):
            fiber = self._fiber(self.k)
            idx = space.from_modes(fiber)
            keys = [tuple(int(v) for v in row) for row in idx]
            free = [i for i, t in enumerate(keys) if opt._is_free(t)]
            if free:
                self.steps_without_new = 0
                return [idx[i] for i in free[:n]]
            if any(t in opt._pending for t in keys):
                return []  # wait for the pending part of this fiber
            vals = np.array([opt._sign * opt._cache[t] for t in keys])
            self._advance(fiber, vals)
            self.steps_without_new += 1
            if self.steps_without_new > 2 * self.d:
                # the sweeps only revisit cached points: restart from a random mutation of the incumbent
                x0 = np.array(opt._best_i) if opt._best_i is not None else space.sample_indices(opt._rng, 1)[0]
                x0 = x0.copy()
                j = int(opt._rng.integers(len(x0)))
                x0[j] = opt._rng.integers(space.sizes[j])
                self._restart(space.to_modes(x0)[0])
        return []


class _ProtesStrategy(Strategy):
    """PROTES-style TT distribution with elite log-likelihood ascent (Adam on log-parametrized cores)."""

    def __init__(self, opt: TetraOpt) -> None:
        super().__init__(opt)
        self.batch = int(opt.options.get("batch", 10))
        self.elite = int(opt.options.get("elite", 3))
        self.lr = float(opt.options.get("lr", 0.1))
        self.gd_steps = int(opt.options.get("gd_steps", 3))
        if self.batch < 1 or not 1 <= self.elite or self.lr <= 0 or self.gd_steps < 1:
            raise ValueError("PROTES options need batch >= 1, elite >= 1, lr > 0, gd_steps >= 1, got "
                             f"batch={self.batch}, elite={self.elite}, lr={self.lr}, gd_steps={self.gd_steps}.")
        modes = opt._modes
        d = len(modes)
        r = opt.rank
        ranks = [1] + [r] * (d - 1) + [1]
        self.theta = [0.1 * opt._rng.standard_normal((ranks[k], n, ranks[k + 1])) for k, n in enumerate(modes)]
        self.m = [np.zeros_like(t) for t in self.theta]
        self.v = [np.zeros_like(t) for t in self.theta]
        self.t = 0
        self.since_update = 0

    def _cores(self) -> list[np.ndarray]:
        return [np.exp(t - t.max()) for t in self.theta]

    def propose(self, n: int) -> list[np.ndarray]:
        opt = self.opt
        samples = tt_distribution_sample(self._cores(), max(4 * n, 16), opt._rng)
        return list(opt.space.from_modes(samples))

    def observe(self, indices: list[tuple[int, ...]], scores: list[float]) -> None:
        self.since_update += len(indices)
        if self.since_update < self.batch:
            return
        self.since_update = 0
        x, y = self.opt._data()
        if len(y) == 0:
            return
        top = x[np.argsort(-y)[: self.elite]]
        modes = self.opt.space.to_modes(top)
        for _ in range(self.gd_steps):
            cores = self._cores()
            _, grads = tt_distribution_loglik_grad(cores, modes)
            self.t += 1
            for k in range(len(cores)):
                g = -grads[k] * cores[k]  # chain rule for cores = exp(theta); minimize -loglik
                self.m[k] = 0.9 * self.m[k] + 0.1 * g
                self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
                mh = self.m[k] / (1 - 0.9 ** self.t)
                vh = self.v[k] / (1 - 0.999 ** self.t)
                self.theta[k] -= self.lr * mh / (np.sqrt(vh) + 1e-8)


# ---------------------------------------------------------------------- functional API
def _run(f: Callable[[dict[str, Any]], float], space: SearchSpace | Mapping[str, Any], budget: int, seed: int,
         direction: str, batch_size: int, **kwargs: Any) -> OptimizeResult:
    if budget is None or isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"`budget` must be a positive int, got {budget!r}. Pass e.g. budget=100.")
    if not callable(f):
        raise TypeError(f"`f` must be a callable params -> float, got {type(f).__name__}.")
    opt = TetraOpt(space, budget=budget, seed=seed, direction=direction, **kwargs)
    while True:
        batch = opt.ask(batch_size)
        if not batch:
            break
        values: list[float | None] = []
        errors: list[str | None] = []
        for p in batch:
            try:
                values.append(float(f(dict(p))))
                errors.append(None)
            except Exception:  # a failed evaluation is recorded and the search goes on
                values.append(None)
                errors.append(traceback.format_exc())
        opt._tell(batch, values, errors)
    n_failed = sum(1 for h in opt.history if h["state"] == "failed")
    return OptimizeResult(best_params=opt.best_params, best_value=opt.best_value, history=list(opt.history),
                          n_evaluations=opt.n_evaluations, n_failed=n_failed, n_cache_hits=opt.n_cache_hits)


def maximize(f: Callable[[dict[str, Any]], float], space: SearchSpace | Mapping[str, Any], budget: int,
             seed: int = 0, *, batch_size: int = 1, **kwargs: Any) -> OptimizeResult:
    """Maximize ``f(params)`` over a finite search space with at most ``budget`` unique evaluations.

    Exceptions and non-finite values of ``f`` are recorded as failed evaluations and the search goes on.

    Args:
        f: objective, called with a params dict, returning a float.
        space: a :class:`SearchSpace` or a plain dict of dimensions.
        budget: maximum number of unique evaluations.
        seed: random seed.
        batch_size: points asked per round (all evaluated before the next ask).
        **kwargs: passed to :class:`TetraOpt` (``method``, ``rank``, ...).

    Returns:
        An :class:`OptimizeResult`.

    Example:
        >>> from tetra_lightning.optim import Float
        >>> res = maximize(lambda p: -abs(p["x"] - 0.5), {"x": Float(0.0, 1.0, grid=11)}, budget=11)
        >>> res.best_params["x"], res.n_evaluations
        (0.5, 11)
    """
    return _run(f, space, budget, seed, "maximize", batch_size, **kwargs)


def minimize(f: Callable[[dict[str, Any]], float], space: SearchSpace | Mapping[str, Any], budget: int,
             seed: int = 0, *, batch_size: int = 1, **kwargs: Any) -> OptimizeResult:
    """Minimize ``f(params)``; same arguments and result as :func:`maximize`.

    Example:
        >>> from tetra_lightning.optim import Int
        >>> res = minimize(lambda p: (p["n"] - 4) ** 2, {"n": Int(0, 20)}, budget=21)
        >>> res.best_params, res.best_value
        ({'n': 4}, 0.0)
    """
    return _run(f, space, budget, seed, "minimize", batch_size, **kwargs)

