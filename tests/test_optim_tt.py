from __future__ import annotations

import itertools

import numpy as np

from tetra_lightning.optim.tt import (
    additive_tt,
    maxvol,
    maxvol_rect,
    tt_als_fit,
    tt_coordinate_ascent,
    tt_distribution_loglik_grad,
    tt_distribution_sample,
    tt_eval,
    tt_random,
)


def _all_indices(sizes: list[int]) -> np.ndarray:
    return np.array(list(itertools.product(*[range(s) for s in sizes])), dtype=np.int64)


def test_tt_eval_matches_dense_contraction() -> None:
    rng = np.random.default_rng(0)
    cores = tt_random([3, 4, 2], 2, rng)
    dense = np.einsum("aib,bjc,ckd->ijk", *cores)
    idx = _all_indices([3, 4, 2])
    np.testing.assert_allclose(tt_eval(cores, idx), dense.reshape(-1), rtol=1e-12)


def test_maxvol_finds_max_volume_rows() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 3))
    rows = maxvol(a, tol=1.0 + 1e-9, max_iters=200)
    vol = abs(np.linalg.det(a[rows]))
    best = max(abs(np.linalg.det(a[list(c)])) for c in itertools.combinations(range(12), 3))
    # a dominant submatrix: every coefficient of a @ inv(a[rows]) is <= 1, and its volume is near the maximum
    assert np.abs(a @ np.linalg.inv(a[rows])).max() <= 1.0 + 1e-6
    assert vol >= 0.5 * best
    assert len(set(rows.tolist())) == 3


def test_maxvol_rect_adds_rows_outside_the_span_bound() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.1, 0.1]])
    rows = maxvol_rect(a, max_extra=2)
    assert len(rows) == 3  # the fourth row has coefficients <= 1 and is not added
    assert 3 not in rows.tolist()


def test_als_recovers_a_low_rank_tensor() -> None:
    rng = np.random.default_rng(1)
    sizes = [4, 5, 4, 3]
    truth = tt_random(sizes, 2, rng)
    idx = _all_indices(sizes)
    train = idx[rng.permutation(len(idx))[:150]]  # 150 of 240 entries
    fit = tt_als_fit(tt_random(sizes, 2, rng), train, tt_eval(truth, train), sweeps=40, prox=1e-8)
    err = np.linalg.norm(tt_eval(fit, idx) - tt_eval(truth, idx)) / np.linalg.norm(tt_eval(truth, idx))
    assert err < 1e-4


def test_additive_tt_is_exact_and_ascent_finds_its_max() -> None:
    rng = np.random.default_rng(2)
    terms = [rng.standard_normal(n) for n in (3, 5, 4, 6)]
    cores = additive_tt(0.7, terms, rank=3)
    idx = _all_indices([3, 5, 4, 6])
    expected = 0.7 + sum(t[idx[:, k]] for k, t in enumerate(terms))
    np.testing.assert_allclose(tt_eval(cores, idx), expected, atol=1e-12)
    found = tt_coordinate_ascent(cores, np.zeros((1, 4), dtype=np.int64))
    assert found[0].tolist() == [int(np.argmax(t)) for t in terms]


def test_distribution_sampling_frequencies_and_loglik_gradient() -> None:
    rng = np.random.default_rng(4)
    cores = [np.abs(c) + 0.1 for c in tt_random([3, 2, 3], 2, rng)]
    idx = _all_indices([3, 2, 3])
    p = tt_eval(cores, idx)
    p /= p.sum()
    samples = tt_distribution_sample(cores, 40000, rng)
    codes = samples[:, 0] * 6 + samples[:, 1] * 3 + samples[:, 2]
    freq = np.bincount(codes, minlength=18) / len(codes)
    assert np.abs(freq - p).max() < 0.01
    # gradient of the mean log-likelihood against central finite differences
    data = idx[[0, 5, 17, 5]]
    ll, grads = tt_distribution_loglik_grad(cores, data)
    np.testing.assert_allclose(ll, np.mean(np.log(p[[0, 5, 17, 5]])), rtol=1e-10)
    eps = 1e-6
    for k, pos in [(0, (0, 1, 1)), (1, (1, 0, 0)), (2, (0, 2, 0))]:
        plus = [c.copy() for c in cores]
        minus = [c.copy() for c in cores]
        plus[k][pos] += eps
        minus[k][pos] -= eps
        fd = (tt_distribution_loglik_grad(plus, data)[0] - tt_distribution_loglik_grad(minus, data)[0]) / (2 * eps)
        np.testing.assert_allclose(grads[k][pos], fd, rtol=1e-5, atol=1e-8)
