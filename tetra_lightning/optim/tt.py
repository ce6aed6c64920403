"""Tensor-train utilities for the optimizers (pure numpy).

A TT is a list of cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``; its entry at a
multi-index ``x`` is the product ``G_1[:, x_1, :] @ ... @ G_d[:, x_d, :]``. Here: batched evaluation, maxvol and
rectangular maxvol (pivot rows for TT-cross), TT regression by alternating least squares (the surrogate model),
coordinate ascent on a TT, and a non-negative TT as a probability distribution (sampling and log-likelihood
gradients, as in PROTES).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "additive_tt",
    "maxvol",
    "maxvol_rect",
    "tt_als_fit",
    "tt_coordinate_ascent",
    "tt_distribution_loglik_grad",
    "tt_distribution_sample",
    "tt_eval",
    "tt_random",
]


def tt_random(mode_sizes: Sequence[int], rank: int, rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    """Random Gaussian TT cores with all inner ranks ``rank`` (entries ``N(0, scale**2)``).

    Example:
        >>> cores = tt_random([3, 4, 5], 2, np.random.default_rng(0))
        >>> [c.shape for c in cores]
        [(1, 3, 2), (2, 4, 2), (2, 5, 1)]
    """
    d = len(mode_sizes)
    ranks = [1] + [rank] * (d - 1) + [1]
    return [scale * rng.standard_normal((ranks[k], n, ranks[k + 1])) for k, n in enumerate(mode_sizes)]


def tt_eval(cores: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Values of a TT at the multi-indices ``idx`` of shape ``(m, d)``.

    Example:
        >>> cores = [np.arange(3.0).reshape(1, 3, 1), np.ones((1, 2, 1))]
        >>> tt_eval(cores, np.array([[2, 0], [1, 1]]))
        array([2., 1.])
    """
    idx = np.asarray(idx, dtype=np.int64)
    left = cores[0][0, idx[:, 0], :]  # (m, r1)
    for k in range(1, len(cores)):
        left = np.einsum("ma,amb->mb", left, cores[k][:, idx[:, k], :])
    return left[:, 0]


def _interfaces(cores: Sequence[np.ndarray], idx: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Left products L[k] = prod_{j<k} G_j[x_j] (m, r_{k-1}) and right products R[k] = prod_{j>k} (m, r_k)."""
    m, d = idx.shape
    lefts = [np.ones((m, 1))]
    for k in range(d - 1):
        lefts.append(np.einsum("ma,amb->mb", lefts[-1], cores[k][:, idx[:, k], :]))
    rights = [np.ones((m, 1))] * d
    rights = list(rights)
    for k in range(d - 1, 0, -1):
        rights[k - 1] = np.einsum("amb,mb->ma", cores[k][:, idx[:, k], :], rights[k])
    return lefts, rights


def additive_tt(offset: float, terms: Sequence[np.ndarray], rank: int = 2,
                rng: np.random.Generator | None = None, noise: float = 0.0) -> list[np.ndarray]:
    """The exact rank-2 TT of ``offset + sum_k terms[k][x_k]``, padded to ``rank`` with optional noise.

    Example:
        >>> cores = additive_tt(1.0, [np.array([0.0, 1.0]), np.array([0.0, 10.0])])
        >>> tt_eval(cores, np.array([[1, 1], [0, 1]]))
        array([12., 11.])
    """
    d = len(terms)
    if d == 1:
        return [(offset + np.asarray(terms[0], dtype=float)).reshape(1, -1, 1)]
    rank = max(2, int(rank))
    cores: list[np.ndarray] = []
    for k, g in enumerate(terms):
        g = np.asarray(g, dtype=float)
        n = g.size
        r_left = 1 if k == 0 else rank
        r_right = 1 if k == d - 1 else rank
        core = np.zeros((r_left, n, r_right))
        if rng is not None and noise > 0:
            core += noise * rng.standard_normal(core.shape)
        if k == 0:
            core[0, :, 0] = 1.0
            core[0, :, 1] = g + offset
        elif k == d - 1:
            core[0, :, 0] = g
            core[1, :, 0] = 1.0
        else:
            core[0, :, 0] = 1.0
            core[0, :, 1] = g
            core[1, :, 1] = 1.0
            core[1, :, 0] = 0.0
        cores.append(core)
    return cores


def tt_als_fit(cores: list[np.ndarray], idx: np.ndarray, y: np.ndarray, sweeps: int = 2,
               prox: float = 1.0, weights: np.ndarray | None = None) -> list[np.ndarray]:
    """TT regression (completion) by alternating least squares, in place on ``cores``.

    Each core is refit with the others fixed; since a sample only touches the slice ``G_k[:, x_k, :]``, the
    normal equations split into one small ``r*r`` system per mode value. ``prox`` is a proximal ridge
    ``prox * ||G_k - G_k_old||^2`` that keeps the fit near its start (e.g. an additive model) where data are
    scarce, and keeps ALS stable.

    Args:
        cores: initial cores, updated in place and returned.
        idx: sample multi-indices ``(m, d)``.
        y: sample values ``(m,)``.
        sweeps: number of left-to-right-to-left sweeps.
        prox: proximal ridge weight (> 0).
        weights: optional per-sample weights.

    Returns:
        The fitted cores.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> truth = tt_random([4, 4, 4], 2, rng)
        >>> x = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
        >>> fit = tt_als_fit(tt_random([4, 4, 4], 2, rng), x, tt_eval(truth, x), sweeps=30, prox=1e-6)
        >>> bool(np.abs(tt_eval(fit, x) - tt_eval(truth, x)).max() < 1e-3)
        True
    """
    idx = np.asarray(idx, dtype=np.int64)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    m, d = idx.shape
    lefts, rights = _interfaces(cores, idx)
    rows = np.arange(m)
    # per-mode selectors (weighted one-hot), reused by every sweep
    selectors = []
    for k in range(d):
        sel = np.zeros((cores[k].shape[1], m))
        sel[idx[:, k], rows] = w
        selectors.append(sel)
    order = list(range(d)) + list(range(d - 2, 0, -1))
    for _ in range(sweeps):
        for k in order:
            core = cores[k]
            ra, n, rb = core.shape
            q = ra * rb
            phi = (lefts[k][:, :, None] * rights[k][:, None, :]).reshape(m, q)
            gram = (selectors[k] @ (phi[:, :, None] * phi[:, None, :]).reshape(m, q * q)).reshape(n, q, q)
            rhs = selectors[k] @ (phi * y[:, None])
            old = core.transpose(1, 0, 2).reshape(n, q)
            gram += prox * np.eye(q)
            rhs += prox * old
            new = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
            cores[k] = new.reshape(n, ra, rb).transpose(1, 0, 2)
            # refresh the interfaces that the next cores of the sweep need (forward: lefts, backward: rights)
            slices = new.reshape(n, ra, rb)[idx[:, k]]  # (m, ra, rb)
            if k + 1 < d:
                lefts[k + 1] = np.matmul(lefts[k][:, None, :], slices)[:, 0, :]
            if k > 0:
                rights[k - 1] = np.matmul(slices, rights[k][:, :, None])[:, :, 0]
    return cores


def tt_coordinate_ascent(cores: Sequence[np.ndarray], start: np.ndarray, max_rounds: int = 10) -> np.ndarray:
    """Maximize a TT from ``start`` points by exact coordinate-wise maximization (a local optimum per start).

    Args:
        cores: the TT.
        start: starting multi-indices ``(m, d)``.
        max_rounds: passes over the modes.

    Returns:
        The improved multi-indices ``(m, d)``.

    Example:
        >>> cores = additive_tt(0.0, [np.array([0.0, 2.0, 1.0]), np.array([3.0, 0.0, 1.0])])
        >>> tt_coordinate_ascent(cores, np.array([[0, 1]])).tolist()
        [[1, 0]]
    """
    x = np.array(start, dtype=np.int64, copy=True)
    d = len(cores)
    for _ in range(max_rounds):
        changed = False
        lefts, rights = _interfaces(cores, x)
        for k in range(d):
            # values for all choices of mode k, others fixed: (m, n_k)
            vals = np.einsum("ma,anb,mb->mn", lefts[k], cores[k], rights[k])
            best = vals.argmax(axis=1)
            moved = best != x[:, k]
            if moved.any():
                changed = True
                x[:, k] = best
            if k + 1 < d:
                lefts[k + 1] = np.einsum("ma,amb->mb", lefts[k], cores[k][:, x[:, k], :])
        if not changed:
            break
    return x


def maxvol(a: np.ndarray, tol: float = 1.05, max_iters: int = 100) -> np.ndarray:
    """Rows of a tall matrix ``a`` (n, r), n >= r, spanning a submatrix of (locally) maximal volume.

    Greedy start by pivoted elimination, then row swaps while some coefficient of ``a @ inv(a[rows])`` exceeds
    ``tol`` in modulus (Goreinov-Tyrtyshnikov).

    Example:
        >>> a = np.array([[1.0, 0.0], [0.0, 0.1], [0.0, 5.0], [0.5, 0.5]])
        >>> sorted(maxvol(a).tolist())
        [0, 2]
    """
    a = np.asarray(a, dtype=float)
    n, r = a.shape
    if n < r:
        raise ValueError(f"maxvol needs a tall matrix (rows >= columns), got shape {a.shape}.")
    if r == 0:
        return np.zeros(0, dtype=np.int64)
    # greedy initial pivots: Gram-Schmidt-like elimination picking the largest residual row each time
    residual = a.copy()
    rows: list[int] = []
    for _ in range(r):
        norms = np.einsum("ij,ij->i", residual, residual)
        norms[rows] = -1.0
        i = int(np.argmax(norms))
        rows.append(i)
        v = residual[i]
        nv = float(v @ v)
        if nv > 0:
            residual = residual - np.outer(residual @ v / nv, v)
    rows_arr = np.array(rows, dtype=np.int64)
    sub = a[rows_arr]
    try:
        coef = np.linalg.solve(sub.T, a.T).T  # a @ inv(sub)
    except np.linalg.LinAlgError:
        return rows_arr
    for _ in range(max_iters):
        i, j = np.unravel_index(np.argmax(np.abs(coef)), coef.shape)
        if abs(coef[i, j]) <= tol:
            break
        # swap pivot j for row i: rank-1 update of the coefficient matrix
        rows_arr[j] = i
        col = coef[:, j].copy()
        row = coef[i, :].copy()
        row[j] -= 1.0
        coef -= np.outer(col, row) / coef[i, j]
    return rows_arr


def maxvol_rect(a: np.ndarray, tol: float = 1.05, max_extra: int = 1, force: bool = False) -> np.ndarray:
    """Square maxvol plus up to ``max_extra`` rows of largest coefficient norm (rank growth for adaptive cross).

    Rows are added while their coefficient norm exceeds 1 (they enlarge the volume), or regardless of it with
    ``force=True`` (rank growth at every step, as with ``dr_min=1`` in teneva's cross).

    Example:
        >>> a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.1, 0.1]])
        >>> sorted(maxvol_rect(a, max_extra=1).tolist())
        [0, 1, 2]
    """
    a = np.asarray(a, dtype=float)
    rows = list(maxvol(a, tol=tol))
    if max_extra <= 0 or len(rows) >= a.shape[0]:
        return np.array(rows, dtype=np.int64)
    coef = a @ np.linalg.pinv(a[rows])
    norms = np.einsum("ij,ij->i", coef, coef)
    norms[rows] = -np.inf
    for _ in range(max_extra):
        i = int(np.argmax(norms))
        if not np.isfinite(norms[i]) or (norms[i] <= 1.0 + 1e-12 and not force):
            break
        rows.append(i)
        norms[i] = -np.inf
    return np.array(rows, dtype=np.int64)


def _dist_right(cores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Normalized right sums Z_k = sum over modes >= k of the (non-negative) TT, Z_d = [1]."""
    d = len(cores)
    z = [np.ones(1)] * (d + 1)
    z = list(z)
    for k in range(d - 1, -1, -1):
        v = cores[k].sum(axis=1) @ z[k + 1]
        z[k] = v / max(float(np.abs(v).max()), 1e-300)
    return z


def tt_distribution_sample(cores: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` multi-indices from the distribution ``p(x) ~ TT(x)`` of a non-negative TT (sequentially).

    Example:
        >>> cores = [np.array([[[0.0], [1.0]]]), np.array([[[1.0], [0.0], [0.0]]])]
        >>> tt_distribution_sample(cores, 3, np.random.default_rng(0)).tolist()
        [[1, 0], [1, 0], [1, 0]]
    """
    d = len(cores)
    z = _dist_right(cores)
    out = np.zeros((n, d), dtype=np.int64)
    q = np.ones((n, 1))
    for k in range(d):
        probs = np.einsum("ma,anb,b->mn", q, cores[k], z[k + 1])
        probs = np.maximum(probs, 0.0) + 1e-300
        probs /= probs.sum(axis=1, keepdims=True)
        cum = probs.cumsum(axis=1)
        u = rng.random((n, 1))
        choice = np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)
        out[:, k] = choice
        q = np.einsum("ma,mab->mb", q, cores[k][:, choice, :].transpose(1, 0, 2))
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    return out


def tt_distribution_loglik_grad(cores: Sequence[np.ndarray], idx: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Mean log-likelihood of ``idx`` under ``p(x) = TT(x) / sum(TT)`` (non-negative cores) and its gradient.

    Returns:
        ``(mean_loglik, grads)`` with one gradient per core (w.r.t. the core entries).

    Example:
        >>> cores = [np.full((1, 2, 1), 1.0), np.full((1, 2, 1), 1.0)]
        >>> ll, grads = tt_distribution_loglik_grad(cores, np.array([[0, 1]]))
        >>> round(ll, 4), grads[0][0, :, 0].round(3).tolist()
        (-1.3863, [0.5, -0.5])
    """
    idx = np.asarray(idx, dtype=np.int64)
    m, d = idx.shape
    lefts, rights = _interfaces(cores, idx)
    value = np.einsum("ma,ma->m", lefts[-1], np.einsum("amb,mb->ma", cores[-1][:, idx[:, -1], :], rights[-1]))
    value = np.maximum(value, 1e-300)
    # normalization Z = sum of all entries, with its left/right partial sums
    sums = [c.sum(axis=1) for c in cores]
    lz = [np.ones(1)]
    for k in range(d - 1):
        lz.append(lz[-1] @ sums[k])
    rz = [np.ones(1)] * d
    rz = list(rz)
    for k in range(d - 1, 0, -1):
        rz[k - 1] = sums[k] @ rz[k]
    total = max(float(lz[-1] @ sums[-1] @ rz[-1]), 1e-300)
    loglik = float(np.mean(np.log(value)) - np.log(total))
    grads = []
    for k in range(d):
        ra, n, rb = cores[k].shape
        g = np.zeros((ra, n, rb))
        contrib = (lefts[k][:, :, None] * rights[k][:, None, :]) / value[:, None, None]  # (m, ra, rb)
        np.add.at(g.transpose(1, 0, 2), idx[:, k], contrib)
        g /= m
        g -= (np.outer(lz[k], rz[k]) / total)[:, None, :]
        grads.append(g)
    return loglik, grads
