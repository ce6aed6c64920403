"""The surrogate of ``TetraOpt`` on spaces with ordinal dimensions: a Gaussian process whose mean is a tensor train.

The objective over the search grid is modelled by a Gaussian process with the kernel

    k(x, x') = sum_k s_k k_k(x_k, x'_k) + s_p prod_k k_k(x_k, x'_k)

(main effects plus a full interaction, as in Duvenaud et al.'s additive GPs), where ``k_k`` is a Matern-5/2 kernel
on the unit coordinates of an ordinal dimension's levels (log-scaled where the dimension is) and ``exp(-[x != x'] /
l)`` on a categorical dimension (the main effect of a categorical dimension is one free value per choice). The
amplitudes ``s``, the per-dimension length scales ``l`` and the noise maximize the marginal likelihood (empirical
Bayes): irrelevant dimensions get small amplitudes and long length scales.

On the grid, the posterior mean is a tensor train: the main effects are an exact rank-2 TT and the interaction is
a CP tensor of rank ``n`` (one rank-1 term ``alpha_i prod_k k_k(x_k, X_ik)`` per observation), so the mean and the
acquisition along one dimension, the others fixed, cost ``O(levels * n)``: :meth:`GridGP.line` is what TT
coordinate ascent needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["GridGP", "matern52"]

_LOG_LENGTHSCALE_BOUNDS = (math.log(0.02), math.log(5.0))
_LOG_AMPLITUDE_BOUNDS = (math.log(1e-4), math.log(10.0))
_LOG_NOISE_BOUNDS = (math.log(1e-5), math.log(1.0))
_MAX_HYPER_POINTS = 48
_SQRT5 = math.sqrt(5.0)


def matern52(dist: np.ndarray, lengthscale: float | np.ndarray) -> np.ndarray:
    """Matern-5/2 kernel of distances ``dist`` at ``lengthscale``.

    Example:
        >>> k = matern52(np.array([0.0, 0.5, 1.0]), 0.5)
        >>> [round(float(v), 4) for v in k]
        [1.0, 0.524, 0.1387]
    """
    r = dist / lengthscale
    return (1.0 + _SQRT5 * r + 5.0 / 3.0 * r * r) * np.exp(-_SQRT5 * r)


def _kernel_and_grad(dist: np.ndarray, lengthscale: np.ndarray, ordinal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension kernels of stacked distances ``(d, ...)`` and their derivatives in ``log(lengthscale)``.

    Ordinal dimensions (``ordinal[k]``) use Matern-5/2, categorical ones ``exp(-dist / l)`` with ``dist`` in {0, 1}.
    """
    shape = (-1,) + (1,) * (dist.ndim - 1)
    r = dist / lengthscale.reshape(shape)
    kern = np.empty_like(r)
    grad = np.empty_like(r)
    if ordinal.any():
        ro = r[ordinal]
        e = np.exp(-_SQRT5 * ro)
        kern[ordinal] = (1.0 + _SQRT5 * ro + 5.0 / 3.0 * ro * ro) * e
        grad[ordinal] = 5.0 / 3.0 * ro * ro * (1.0 + _SQRT5 * ro) * e  # d/dlog(l) of Matern-5/2
    if not ordinal.all():
        rc = r[~ordinal]
        e = np.exp(-rc)
        kern[~ordinal] = e
        grad[~ordinal] = rc * e
    return kern, grad


class GridGP:
    """Gaussian process with main-effect plus interaction kernel over a product grid (see the module docstring).

    Args:
        coords: per dimension, the unit coordinates of its grid levels (ordinal) or ``None`` (categorical).
        levels: number of levels of every dimension.
        rng: random generator (subsampling for the hyperparameters on long histories).
        max_noise: the largest noise variance the evidence may choose, on standardized values (1.0); a small
            value (1e-4) makes the posterior interpolate a deterministic objective.

    Raises:
        ValueError: for ``max_noise`` outside (0, 1].

    Example:
        >>> rng = np.random.default_rng(0)
        >>> coords = [np.linspace(0, 1, 21), np.linspace(0, 1, 21)]
        >>> x = rng.integers(0, 21, size=(25, 2))
        >>> y = -((x[:, 0] / 20 - 0.3) ** 2) - (x[:, 1] / 20 - 0.7) ** 2
        >>> gp = GridGP(coords, [21, 21], rng).fit(x, (y - y.mean()) / y.std())
        >>> grid = np.stack(np.meshgrid(np.arange(21), np.arange(21), indexing="ij"), -1).reshape(-1, 2)
        >>> mean, std = gp.predict(grid)
        >>> grid[int(np.argmax(mean))].tolist(), bool(std.max() < 1.0)
        ([6, 14], True)
    """

    def __init__(self, coords: Sequence[np.ndarray | None], levels: Sequence[int],
                 rng: np.random.Generator | None = None, max_noise: float = 1.0) -> None:
        if not 0.0 < max_noise <= 1.0:
            raise ValueError(f"`max_noise` must be in (0, 1] (a variance on standardized values), got {max_noise!r}.")
        self.max_noise = float(max_noise)
        self.d = len(coords)
        self.levels = [int(v) for v in levels]
        self.ordinal = np.array([c is not None for c in coords], dtype=bool)
        # distances between levels are computed where needed (|u_i - u_j| for ordinal, [i != j] for categorical):
        # a 1024-level axis would otherwise cost a million-entry matrix per dimension and per fit
        self.coords = [None if c is None else np.asarray(c, dtype=float) for c in coords]
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def _dist(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between the levels ``a`` and ``b`` of dimension ``k``, ``(len(a), len(b))``."""
        c = self.coords[k]
        if c is None:
            return (a[:, None] != b[None, :]).astype(float)
        return np.abs(c[a][:, None] - c[b][None, :])

    # ------------------------------------------------------------------ hyperparameters
    def _pair_dists(self, x: np.ndarray) -> np.ndarray:
        return np.stack([self._dist(k, x[:, k], x[:, k]) for k in range(self.d)])

    def _optimize_hypers(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n, d = x.shape
        dist = self._pair_dists(x)
        cat_add = np.stack([(dist[k] == 0).astype(float) for k in range(d)])  # main effect of a categorical dim
        eye = np.eye(n)
        ordinal = self.ordinal
        center = math.log(0.5 / d)

        def neg_evidence(theta: np.ndarray) -> tuple[float, np.ndarray]:
            amps, s_p = np.exp(theta[:d]), math.exp(theta[d])
            ls, noise = np.exp(theta[d + 1:2 * d + 1]), math.exp(theta[-1])
            kern, dkern = _kernel_and_grad(dist, ls, ordinal)
            main = np.where(ordinal[:, None, None], kern, cat_add)
            prod = np.prod(kern, axis=0)
            cov = np.tensordot(amps, main, 1) + s_p * prod + (noise + 1e-8) * eye
            try:
                chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                return 1e10, np.zeros_like(theta)
            inv_chol = np.linalg.inv(chol)
            inv = inv_chol.T @ inv_chol
            alpha = inv @ y
            value = 0.5 * float(y @ alpha) + float(np.log(np.diag(chol)).sum())
            w = np.outer(alpha, alpha) - inv  # d(log evidence) = 0.5 tr(w dK)
            grad = np.zeros_like(theta)
            grad[:d] = -0.5 * np.einsum("ij,kij->k", w, main) * amps
            grad[d] = -0.5 * float(np.sum(w * prod)) * s_p
            # d prod / dlog l_k = prod * dk_k / k_k (k_k > 0 everywhere)
            dprod = prod[None] * dkern / np.maximum(kern, 1e-300)
            dmain = np.where(ordinal[:, None, None], dkern, 0.0) * amps[:, None, None]
            grad[d + 1:2 * d + 1] = -0.5 * np.einsum("ij,kij->k", w, dmain + s_p * dprod)
            grad[-1] = -0.5 * float(np.trace(w)) * noise
            # weak log-normal priors: amplitudes near 1/(2d), interaction near 1/2, length scales near 0.5
            value += 0.125 * float(np.sum((theta[:d] - center) ** 2)) + 0.125 * (theta[d] - math.log(0.5)) ** 2
            grad[:d] += 0.25 * (theta[:d] - center)
            grad[d] += 0.25 * (theta[d] - math.log(0.5))
            lt = theta[d + 1:2 * d + 1] - math.log(0.5)
            value += 0.125 * float(np.sum(lt ** 2))
            grad[d + 1:2 * d + 1] += 0.25 * lt
            return value, grad

        noise_bounds = (min(_LOG_NOISE_BOUNDS[0], math.log(self.max_noise)), math.log(self.max_noise))
        theta0 = np.concatenate([np.full(d, center), [math.log(0.5)], np.full(d, math.log(0.5)),
                                 [min(math.log(1e-3), noise_bounds[1])]])
        bounds = ([_LOG_AMPLITUDE_BOUNDS] * (d + 1) + [_LOG_LENGTHSCALE_BOUNDS] * d + [noise_bounds])
        return _minimize_bounded(neg_evidence, theta0, bounds)

    # ------------------------------------------------------------------ fitting
    def fit(self, x: np.ndarray, y: np.ndarray) -> GridGP:
        """Fits the GP to grid points ``x`` (n, d) with standardized values ``y`` (n,).

        Returns:
            ``self``.
        """
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=float)
        self.x, self.mu = x, float(y.mean())
        yc = y - self.mu
        n, d = x.shape
        if n > _MAX_HYPER_POINTS:
            # the evidence is cheap to optimize on a subset: the best quarter and a random sample of the rest
            ranked = np.argsort(-yc)
            top = _MAX_HYPER_POINTS // 4
            sub = np.concatenate([ranked[:top], self.rng.choice(ranked[top:], _MAX_HYPER_POINTS - top,
                                                                 replace=False)])
            theta = self._optimize_hypers(x[sub], yc[sub] - yc[sub].mean())
        else:
            theta = self._optimize_hypers(x, yc)
        self.amplitudes = np.exp(theta[:d])
        self.interaction = math.exp(theta[d])
        self.lengthscales = np.exp(theta[d + 1:2 * d + 1])
        self.noise = math.exp(theta[-1])
        self._condition(x, y)
        return self

    def _condition(self, x: np.ndarray, y: np.ndarray) -> None:
        """Factors, Cholesky factor and weights for observations ``x``, ``y`` at the current hyperparameters."""
        n, d = x.shape
        self.x, self.mu = x, float(y.mean())
        yc = y - self.mu
        cov = self._cross(x) + (self.noise + 1e-8) * np.eye(n)
        chol = np.linalg.cholesky(cov)
        self._chol_inv = np.linalg.inv(chol)  # lower triangular: variances are one matrix product away
        self.alpha = self._chol_inv.T @ (self._chol_inv @ yc)
        self.prior_var = float(self.amplitudes.sum() + self.interaction)

    def refit(self, x: np.ndarray, y: np.ndarray) -> GridGP:
        """A copy conditioned on new data ``x``, ``y`` with the same hyperparameters (no evidence maximization)."""
        other = GridGP.__new__(GridGP)
        other.__dict__.update(self.__dict__)
        other._condition(np.asarray(x, dtype=np.int64), np.asarray(y, dtype=float))
        return other

    def _factors(self, k: int, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kernel of dimension ``k`` between ``levels`` and the observations, ``(len(levels), n)``: the factor of
        the interaction term and the main effect's (equal for ordinal dimensions, ``[same choice]`` for
        categorical ones)."""
        dist = self._dist(k, np.asarray(levels, dtype=np.int64), self.x[:, k])
        kern, _ = _kernel_and_grad(dist[None], self.lengthscales[k:k + 1], self.ordinal[k:k + 1])
        return kern[0], (kern[0] if self.ordinal[k] else (dist == 0) * 1.0)

    def _cross(self, idx: np.ndarray) -> np.ndarray:
        """Prior covariance between grid points ``idx`` (m, d) and the observations, (m, n)."""
        main = np.zeros((len(idx), len(self.x)))
        prod = np.ones((len(idx), len(self.x)))
        for k in range(self.d):
            kern, main_k = self._factors(k, idx[:, k])
            main += self.amplitudes[k] * main_k
            prod *= kern
        return main + self.interaction * prod

    def predict(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at grid points ``idx`` (m, d)."""
        idx = np.asarray(idx, dtype=np.int64)
        cross = self._cross(idx)
        mean = self.mu + cross @ self.alpha
        v = self._chol_inv @ cross.T
        var = self.prior_var - np.einsum("ij,ij->j", v, v)
        return mean, np.sqrt(np.maximum(var, 1e-12))

    def line(self, idx: np.ndarray, k: int, levels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation along dimension ``k``, the others fixed at ``idx`` (m, d).

        Args:
            idx: the points whose coordinate ``k`` moves.
            k: the dimension.
            levels: the levels of dimension ``k`` to evaluate (default: all).

        Returns:
            Two arrays ``(m, len(levels))``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        m, n = len(idx), len(self.alpha)
        lv = np.arange(self.levels[k]) if levels is None else np.asarray(levels, dtype=np.int64)
        others = [j for j in range(self.d) if j != k]
        main_rest = np.zeros((m, n))
        prod_rest = np.ones((m, n))
        for j in others:
            kern, main_j = self._factors(j, idx[:, j])
            main_rest += self.amplitudes[j] * main_j
            prod_rest *= kern
        kern_k, main_k = self._factors(k, lv)
        # cross covariance for every (point, level): (m, L, n)
        cross = (main_rest[:, None, :] + self.amplitudes[k] * main_k[None, :, :]
                 + self.interaction * prod_rest[:, None, :] * kern_k[None, :, :])
        flat = cross.reshape(-1, n)
        mean = self.mu + flat @ self.alpha
        v = flat @ self._chol_inv.T
        var = self.prior_var - np.einsum("ij,ij->i", v, v)
        shape = (m, len(lv))
        return mean.reshape(shape), np.sqrt(np.maximum(var, 1e-12)).reshape(shape)


def _minimize_bounded(fun, theta0: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    from scipy.optimize import minimize

    result = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 20})
    return np.asarray(result.x if np.all(np.isfinite(result.x)) else theta0)
