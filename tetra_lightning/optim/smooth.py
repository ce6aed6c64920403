"""``method="tetra"`` on the spaces users tune: continuous, log-scaled and wide integer dimensions, mixed with
categorical ones.

On such a space the grid is fine (``MAX_LEVELS`` levels per float axis), so a surrogate that treats every level
as a free value (the finite-grid TT model of ``method="tetra"`` on categorical spaces) cannot generalize from a few
dozen points. Here the surrogate is :class:`~tetra_lightning.optim.surrogate.GridGP`: a Gaussian process whose
kernel is main effects plus a full interaction (its posterior mean is a tensor train on the grid: a rank-2 TT
plus a CP tensor of rank ``n``), fitted by empirical Bayes on the standardized values, a diverged run's value
clipped (``transform="clip"``; a power transform to normality, ``"yj"``, turns a smooth minimum into a log funnel
the GP fits badly). A proposal maximizes the log expected improvement by coordinate ascent along the TT's modes
(each mode's levels evaluated in one batch, the other coordinates fixed: the rank-1 case of TTOpt's maxvol cross
sweep over the acquisition tensor) from the best points and random starts, plus random perturbations of the
incumbent (as TuRBO: a random subset of the axes, and ``gauss_candidates`` Gaussian steps of every axis at once,
the diagonal moves a rotated valley needs); a share ``local_fraction`` of the proposals is searched inside a trust
region around the incumbent whose width doubles after ``succ_tol`` improvements in a row and halves after
``fail_tol`` evaluations without one (it opens again once it falls below ``tr_min``). The trust region moves on the
told history alone, so the Optuna sampler, which rebuilds the optimizer from the study for every trial, follows the
same region as an optimizer told one point at a time. After a small Latin-hypercube design (``n_init``, default 6)
every proposal is model-based; GP and TPE samplers start with 10 random trials. Batches use the kriging believer (a
pending point counts as observed at its predicted mean). Failed evaluations are modelled as the worst value seen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tetra_lightning.optim._strategy import MAX_FIT_POINTS, Strategy, normal_scores
from tetra_lightning.optim.space import Float, Int, SearchSpace, nearest_levels
from tetra_lightning.optim.surrogate import GridGP

if TYPE_CHECKING:
    from tetra_lightning.optim.tetraopt import TetraOpt

__all__ = ["DEFAULT_LOCAL_FRACTION", "DEFAULT_N_INIT", "SmoothStrategy", "is_smooth_space", "log_ei", "warp_scores", "yeo_johnson"]

DEFAULT_N_INIT = 6
DEFAULT_LOCAL_FRACTION = 0.3
TR_INIT = 0.5
TRANSFORMS = ("clip", "yj", "rank", "raw")
DEFAULT_GAUSS_CANDIDATES = 192
# the largest noise variance the GP may fit by default (standardized values): a hundredth of the variance
DEFAULT_MAX_NOISE = 0.01
# an Int of more values than this is searched as a fine (ordinal) axis
_WIDE_INT = 32


def is_smooth_space(space: SearchSpace) -> bool:
    """Whether ``method="tetra"`` uses the smooth strategy on ``space``: it has a Float or an Int with more than 32
    levels (the default 128-level Float, a wide Int); a space of categoricals, short integer ranges and coarse
    explicit grids (``Float(..., grid=8)``) keeps the finite-grid TT model.

    Example:
        >>> from tetra_lightning.optim import Categorical
        >>> is_smooth_space(SearchSpace({"lr": Float(1e-4, 1e-1, log=True), "act": Categorical(["relu", "gelu"])}))
        True
        >>> is_smooth_space(SearchSpace({"depth": Int(1, 8), "act": Categorical(["relu", "gelu"])}))
        False
        >>> is_smooth_space(SearchSpace({"lr": Float(1e-4, 1e-1, log=True, grid=8)}))
        False
    """
    return any(
        (isinstance(d, Float) and d.size > _WIDE_INT) or (isinstance(d, Int) and d.n_values > _WIDE_INT)
        for d in space.values()
    )


def warp_scores(y: np.ndarray, transform: str) -> np.ndarray:
    """Standardized scores for the surrogate (larger is better).

    ``"clip"`` (default): a loss further than 5 interquartile ranges of the good half above the median (a diverged
    run, a function's far walls) is clipped there, the others are kept as they are, so a smooth minimum stays
    smooth. ``"yj"``: the clipped losses then Yeo-Johnson-transformed with the maximum-likelihood exponent, as HEBO
    does (the default before this release: on ``benchmarks/hpo.py`` it turned the quadratic bowls of BBOB into log
    funnels and scored 0.05 lower at 80 trials). ``"rank"``: normal scores of the ranks. ``"raw"``: the values as they
    are.

    Example:
        >>> z = warp_scores(np.array([-1e6, -3.0, -2.0, -1.0]), "clip")
        >>> [round(float(v), 2) for v in z]
        [-1.7, 0.28, 0.57, 0.85]
        >>> z = warp_scores(np.array([-1e6, -3.0, -2.0, -1.0]), "yj")
        >>> [round(float(v), 2) for v in z]
        [-1.44, -0.23, 0.35, 1.32]
    """
    if transform == "rank":
        z = normal_scores(y)
    elif transform == "raw" or np.ptp(y) == 0:
        z = np.asarray(y, dtype=float)
    else:
        loss = -np.asarray(y, dtype=float)
        q25, med = np.percentile(loss, [25, 50])
        scale = 2.0 * (med - q25) if med > q25 else max(float(loss.std()), 1e-12)
        # the scale comes from the good half (losses below the median); a bad value further than 5 such
        # interquartile ranges above the median (6.7 sigma of a normal sample) is clipped there, so one diverged
        # run cannot squeeze every good value onto one score
        loss = np.minimum((loss - med) / scale, 5.0)
        if transform == "clip":
            z = -loss
        else:
            z = yeo_johnson(loss)
            z = -z if np.all(np.isfinite(z)) else normal_scores(y)
    return (z - z.mean()) / max(float(z.std()), 1e-12)


_LAMBDAS = np.linspace(-4.0, 6.0, 101)


def _yj(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The Yeo-Johnson transform of ``x`` (shape ``(n,)``) for every exponent in ``lam`` (shape ``(m,)``): ``(m, n)``."""
    lam = lam[:, None]
    pos, lp, ln = x >= 0, np.log1p(np.maximum(x, 0.0)), np.log1p(np.maximum(-x, 0.0))
    with np.errstate(all="ignore"):
        a = np.where(np.abs(lam) < 1e-8, lp, np.expm1(lam * lp) / np.where(np.abs(lam) < 1e-8, 1.0, lam))
        b2 = 2.0 - lam
        b = np.where(np.abs(b2) < 1e-8, -ln, -np.expm1(b2 * ln) / np.where(np.abs(b2) < 1e-8, 1.0, b2))
    return np.where(pos, a, b)


def yeo_johnson(x: np.ndarray) -> np.ndarray:
    """The Yeo-Johnson transform with the maximum-likelihood exponent (as ``scipy.stats.yeojohnson``, to ~0.01 in
    the exponent, which is searched in [-4, 6]), vectorized: a hundred times cheaper than SciPy's bounded search,
    which dominated the time per trial.

    Example:
        >>> z = yeo_johnson(np.array([0.0, 1.0, 2.0, 30.0]))
        >>> bool(np.all(np.diff(z) > 0)) and float(z[-1]) < 30.0
        True
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 2 or np.ptp(x) == 0:
        return x.copy()
    log_jac = float(np.sum(np.sign(x) * np.log1p(np.abs(x))))

    def llf(lam: np.ndarray) -> np.ndarray:
        t = _yj(x, lam)
        with np.errstate(all="ignore"):
            var = t.var(axis=1)
            out = -0.5 * n * np.log(var) + (lam - 1.0) * log_jac
        return np.where(np.isfinite(out) & (var > 0), out, -np.inf)

    values = llf(_LAMBDAS)
    k = int(np.argmax(values))
    fine = np.linspace(_LAMBDAS[max(k - 1, 0)], _LAMBDAS[min(k + 1, _LAMBDAS.size - 1)], 41)
    lam = fine[int(np.argmax(llf(fine)))]
    return _yj(x, np.array([lam]))[0]


class SmoothStrategy(Strategy):
    """``method="tetra"`` on spaces with continuous or wide integer dimensions (see the module docstring)."""

    def __init__(self, opt: TetraOpt) -> None:
        super().__init__(opt)
        self.coords = [opt.space[name].unit_coords() for name in opt.space.names]
        self.sizes = list(opt.space.sizes)
        d = len(self.sizes)
        options = opt.options
        self.local = float(opt.local_fraction)
        self.tr_init = float(options.get("tr_init", TR_INIT))
        self.tr_min = float(options.get("tr_min", 1.0 / 64))
        self.fail_tol = options.get("fail_tol", max(4, d))
        self.succ_tol = options.get("succ_tol", 3)
        self.transform = options.get("transform", "clip")
        self.n_random = options.get("random_candidates", 0)
        self.multiscale = bool(options.get("multiscale", False))
        self.gauss = options.get("gauss_candidates", DEFAULT_GAUSS_CANDIDATES)
        if isinstance(self.gauss, bool) or not isinstance(self.gauss, (int, np.integer)) or self.gauss < 0:
            raise ValueError(f"`gauss_candidates` must be a non-negative int, got {self.gauss!r}.")
        self.max_noise = options.get("max_noise", DEFAULT_MAX_NOISE)
        if isinstance(self.max_noise, bool) or not isinstance(self.max_noise, (int, float)) \
                or not 0.0 < self.max_noise <= 1.0:
            raise ValueError(f"`max_noise` must be a float in (0, 1], got {self.max_noise!r}. Use a small value "
                             f"such as 1e-4 for a deterministic objective.")
        if isinstance(self.n_random, bool) or not isinstance(self.n_random, (int, np.integer)) or self.n_random < 0:
            raise ValueError(f"`random_candidates` must be a non-negative int, got {self.n_random!r}.")
        restart = options.get("restart", 0)
        if not 0.0 < self.tr_min <= self.tr_init <= 1.0:
            raise ValueError(f"the trust region needs 0 < tr_min <= tr_init <= 1 (unit widths), got tr_min="
                             f"{self.tr_min}, tr_init={self.tr_init}. The defaults are 1/64 and {TR_INIT}.")
        for name, value in (("fail_tol", self.fail_tol), ("succ_tol", self.succ_tol)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"`transform` must be one of {TRANSFORMS}, got {self.transform!r}. The default is 'clip'.")
        if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)) or restart < 0:
            raise ValueError(f"`restart` must be a non-negative int (0 turns restarts off), got {restart!r}.")
        self.restart = int(restart)
        self.n_restarts = 0
        self._epoch_start = 0
        self._told = 0
        self._n_ok = len(opt._ok_index)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._design: list[np.ndarray] | None = None  # drawn when first needed (the Optuna sampler replays mostly past it)
        self._epoch_best = -math.inf
        self._epoch_evals = 0
        self._stale = 0
        self.width = self.tr_init
        self._succ = 0
        self._fail = 0

    def observe(self, indices: list[tuple[int, ...]], scores: list[float]) -> None:
        opt = self.opt
        for h in opt.history[self._told:]:
            improved = False
            if h["value"] is not None:
                self._n_ok += 1
                score = opt._sign * h["value"]
                if score > self._epoch_best + 1e-12 * max(1.0, abs(self._epoch_best)):
                    improved = self._epoch_best > -math.inf
                    self._epoch_best = score
                    self._stale = 0
                else:
                    self._stale += 1
            else:
                self._stale += 1
            # the trust region moves on the history alone (not on what was asked), so a replayed history (the
            # Optuna sampler rebuilds TetraOpt for every trial) ends in the same region as telling one by one
            self._epoch_evals += 1
            if self._epoch_evals <= self.opt.n_init:
                continue
            if improved:
                self._succ, self._fail = self._succ + 1, 0
            else:
                self._succ, self._fail = 0, self._fail + 1
            if self._succ >= self.succ_tol:
                self.width, self._succ = min(2.0 * self.width, 1.0), 0
            elif self._fail >= self.fail_tol:
                self.width, self._fail = self.width / 2.0, 0
            if self.width < self.tr_min:
                # the region collapsed on a (local) optimum at the grid's resolution: look wide again, same data
                self.width, self._succ, self._fail = self.tr_init, 0, 0
            if self.restart and self._stale >= self.restart:
                self.n_restarts += 1
                self._epoch_start = self._n_ok
                self._new_epoch()
        self._told = len(opt.history)

    def _lhs_design(self, n: int) -> list[np.ndarray]:
        # a generator of its own (seed, epoch): the same design whether it is drawn at once or after a replay
        rng = np.random.default_rng([self.opt.seed, self._epoch_start])
        best, best_gap = None, -1.0
        for _ in range(10):  # maximin over a few Latin hypercubes
            cols = []
            for s, c in zip(self.sizes, self.coords, strict=True):
                if c is None:
                    reps = -(-n // s)
                    cols.append(np.concatenate([rng.permutation(s) for _ in range(reps)])[:n])
                else:
                    u = (rng.permutation(n) + rng.random(n)) / n
                    cols.append(np.abs(c[None, :] - u[:, None]).argmin(axis=1))
            pts = np.stack(cols, axis=1)
            unit = self._unit(pts)
            gap = np.inf
            if n > 1:
                dist = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(-1)
                gap = float(dist[np.triu_indices(n, 1)].min())
            if gap > best_gap:
                best, best_gap = pts, gap
        return [best[i] for i in range(n)]

    def _unit(self, pts: np.ndarray) -> np.ndarray:
        cols = []
        for k, c in enumerate(self.coords):
            if c is None:
                cols.append(pts[:, k] / max(1, self.sizes[k] - 1))
            else:
                cols.append(c[pts[:, k]])
        return np.stack(cols, axis=1)

    def propose(self, n: int) -> list[np.ndarray]:
        opt = self.opt
        out: list[np.ndarray] = []
        taken: set[tuple[int, ...]] = set()
        if self._design is None and self._epoch_evals < opt.n_init:
            self._design = self._lhs_design(opt.n_init)
        while self._design and self._epoch_evals < opt.n_init and len(out) < n:
            row = self._design.pop(0)
            t = tuple(int(v) for v in row)
            if opt._is_free(t) and t not in taken:
                out.append(row)
                taken.add(t)
        x, y = opt._data()
        x, y = x[self._epoch_start:], y[self._epoch_start:]
        if len(out) >= n or len(y) < 2:
            return out
        failed = opt._failed_indices()
        if len(failed):
            x = np.concatenate([x, failed])
            y = np.concatenate([y, np.full(len(failed), y.min())])
        if len(y) > MAX_FIT_POINTS:
            ranked = np.argsort(-y)
            keep = np.concatenate([ranked[: MAX_FIT_POINTS // 2],
                                   opt._rng.choice(ranked[MAX_FIT_POINTS // 2:], MAX_FIT_POINTS // 2,
                                                   replace=False)])
            x, y = x[keep], y[keep]
        scores = warp_scores(y, self.transform)
        gp = GridGP(self.coords, self.sizes, opt._rng, max_noise=float(self.max_noise)).fit(x, scores)
        center = x[int(np.argmax(y))]
        best = float(scores.max())
        while len(out) < n:
            pick = self._pick(gp, center, x, y, taken, best, local=opt._rng.random() < self.local)
            if pick is None:
                break
            out.append(pick)
            taken.add(tuple(int(v) for v in pick))
            if len(out) < n:  # kriging believer: the pending point counts as observed at its predicted mean
                mean, _ = gp.predict(pick[None])
                x = np.concatenate([x, pick[None]])
                scores = np.concatenate([scores, mean])
                gp = gp.refit(x, scores)
        return out

    def _box(self, center: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
        """Per ordinal dimension, the level range within ``width / 2`` (unit coordinates) of the center."""
        lo, hi = [], []
        for k, c in enumerate(self.coords):
            if c is None:
                lo.append(0)
                hi.append(self.sizes[k] - 1)
                continue
            u = c[center[k]]
            inside = np.nonzero(np.abs(c - u) <= width / 2 + 1e-12)[0]
            lo.append(int(inside.min()))
            hi.append(int(inside.max()))
        return np.array(lo), np.array(hi)

    def _pick(self, gp: Any, center: np.ndarray, x: np.ndarray, y: np.ndarray, taken: set[tuple[int, ...]],
              best: float, local: bool) -> np.ndarray | None:
        opt = self.opt
        rng = opt._rng
        d = len(self.sizes)
        if local:
            lo, hi = self._box(center, self.width)
        else:
            lo, hi = np.zeros(d, dtype=np.int64), np.array(self.sizes) - 1
        # coordinate ascent of log EI along the TT's modes, inside the box, from the best points and random ones
        order = np.argsort(-y)
        uniform = None
        if self.n_random and not local:
            # as Optuna's GPSampler: uniform candidates over the whole space, the two best by EI start ascents
            uniform = rng.integers(lo, hi + 1, size=(int(self.n_random), d))
            mean, std = gp.predict(uniform)
            top = uniform[np.argsort(-log_ei(mean, std, best))[:2]]
            starts = [center, x[order[1]], *top]
        else:
            starts = [center, x[order[1]]] + [rng.integers(lo, hi + 1) for _ in range(2)]
        starts = np.clip(np.array(starts), lo, hi)
        ascent = self._ei_ascent(gp, starts, lo, hi, best)
        # perturbations of the incumbent inside the box (as TuRBO): a random subset of the dimensions moves
        m = 256
        mask = rng.random((m, d)) < min(1.0, 2.0 / d)
        mask[np.arange(m), rng.integers(0, d, size=m)] = True
        pert = np.where(mask, rng.integers(lo, hi + 1, size=(m, d)), center[None, :])
        cand = np.concatenate([ascent, pert])
        if self.gauss:
            cand = np.concatenate([cand, self._gauss_steps(center, lo, hi, int(self.gauss))])
        if uniform is not None:
            cand = np.concatenate([cand, uniform])
        free = np.array([opt._is_free(t) and t not in taken for t in map(tuple, cand.tolist())], dtype=bool)
        if not free.any():
            return None
        cand = cand[free]
        mean, std = gp.predict(cand)
        return cand[int(np.argmax(log_ei(mean, std, best)))]

    def _gauss_steps(self, center: np.ndarray, lo: np.ndarray, hi: np.ndarray, m: int) -> np.ndarray:
        """Steps of the incumbent in every ordinal dimension at once (Gaussian, at 1/4, 1/16 and 1/64 of the trust
        region's width), snapped to the nearest level inside the box: the diagonal moves that coordinate ascent
        and axis-subset perturbations cannot make along a rotated, narrow valley."""
        rng = self.opt._rng
        d = len(self.sizes)
        scales = self.width * np.array([0.25, 1.0 / 16, 1.0 / 64])
        sigma = np.repeat(scales, -(-m // len(scales)))[:m, None]
        out = np.repeat(center[None, :], m, axis=0)
        steps = rng.standard_normal((m, d)) * sigma
        for k, c in enumerate(self.coords):
            if c is None or lo[k] == hi[k]:
                continue
            out[:, k] = nearest_levels(c, np.clip(c[center[k]] + steps[:, k], c[lo[k]], c[hi[k]]))
        return out

    def _ei_ascent(self, gp: Any, starts: np.ndarray, lo: np.ndarray, hi: np.ndarray, best: float,
                   rounds: int = 2) -> np.ndarray:
        """Coordinate ascent of log EI inside the box: per mode, the best of up to ~40 levels (an even spread of
        the box and the current level's neighbours)."""
        x = np.array(starts, dtype=np.int64, copy=True)
        for _ in range(rounds):
            changed = False
            for k in range(x.shape[1]):
                if lo[k] == hi[k]:
                    continue
                span = np.arange(lo[k], hi[k] + 1)
                if len(span) > 40:
                    offsets = np.arange(-3, 4)
                    if self.multiscale:  # and every power-of-two step: coarse to fine around each point
                        steps = 2 ** np.arange(2, int(math.log2(len(span))) + 1)
                        offsets = np.concatenate([offsets, steps, -steps])
                    near = (x[:, k][:, None] + offsets[None, :]).ravel()
                    spread = np.unique(np.round(np.linspace(lo[k], hi[k], 24)).astype(np.int64))
                    span = np.unique(np.concatenate([spread, np.clip(near, lo[k], hi[k])]))
                mean, std = gp.line(x, k, span)
                pick = span[log_ei(mean, std, best).argmax(axis=1)]
                if (pick != x[:, k]).any():
                    changed = True
                    x[:, k] = pick
            if not changed:
                break
        return x


def log_ei(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """log expected improvement over ``best`` (maximization), stable far in the tails."""
    from scipy.special import log_ndtr

    z = (mean - best) / std
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    with np.errstate(all="ignore"):
        direct = np.log(np.maximum(np.exp(log_phi) + z * np.exp(log_ndtr(z)), 1e-300))
    tail = log_phi - 2.0 * np.log(np.maximum(-z, 1e-12))  # phi(z) + z Phi(z) ~ phi(z) / z^2 for z << 0
    return np.log(std) + np.where(z > -5.0, direct, tail)
