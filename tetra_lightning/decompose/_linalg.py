"""Numerical kernels shared by the factorized layers: fast truncated SVD, HOSVD, CP-ALS and TT-SVD.

Everything here works on plain tensors (no modules) in float32 on the tensor's own device, with the
eigendecompositions done in float64 for accuracy. The Gram-matrix route used for the SVD is several times
faster than ``torch.linalg.svd`` on the wide unfoldings of conv kernels (``512 x 4608``: 0.07 s vs 1.1 s on
one CPU core) and exact at full rank because the reconstruction is a projection ``U U^T W``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def gram_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of ``matrix @ matrix.T`` in descending order.

    Args:
        matrix: ``(m, n)`` tensor.

    Returns:
        ``(eigenvalues, eigenvectors)``: eigenvalues (squared singular values, clamped at 0) of shape ``(m,)``
        in descending order and the ``(m, m)`` orthonormal eigenvectors (left singular vectors), float32.
    """
    gram = (matrix @ matrix.T).double()
    values, vectors = torch.linalg.eigh(gram)
    values = values.flip(0).clamp_min(0.0)
    vectors = vectors.flip(1)
    return values.to(matrix.dtype), vectors.to(matrix.dtype)


def squared_singular_values(matrix: Tensor) -> Tensor:
    """Squared singular values of ``matrix`` in descending order (length ``min(m, n)``)."""
    small = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.T
    return gram_eigh(small)[0]


def energy_rank(squared_values: Tensor, energy: float) -> int:
    """Smallest ``k`` with ``sum(s[:k]^2) / sum(s^2) >= energy`` (at least 1)."""
    total = float(squared_values.sum())
    if total <= 0.0:
        return 1
    cumulative = torch.cumsum(squared_values.double(), 0) / total
    # Tolerance so that energy=1.0 does not demand more than the numerical rank because of round-off.
    k = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-9, dtype=torch.float64)).item()) + 1
    return max(1, min(k, squared_values.numel()))


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rank-``rank`` SVD ``matrix ~= left @ right`` with the singular values split as ``sqrt`` on both sides.

    Args:
        matrix: ``(m, n)`` tensor.
        rank: number of singular triplets kept, ``1 <= rank <= min(m, n)``.

    Returns:
        ``(left, right, singular_values)``: ``left`` is ``(m, rank)`` = ``U sqrt(S)``, ``right`` is
        ``(rank, n)`` = ``sqrt(S) V^T`` and ``singular_values`` holds *all* ``min(m, n)`` singular values.
    """
    transposed = matrix.shape[0] > matrix.shape[1]
    work = matrix.T if transposed else matrix
    values, vectors = gram_eigh(work)
    basis = vectors[:, :rank]  # (m', rank), orthonormal
    projected = basis.T @ work  # (rank, n') = S V^T exactly, no division by small singular values
    sigma = projected.norm(dim=1)
    scale = sigma.clamp_min(torch.finfo(sigma.dtype).tiny).sqrt()
    left = basis * scale
    right = projected / scale[:, None]
    singular_values = values.sqrt()
    if transposed:
        left, right = right.T, left.T
    return left, right, singular_values


def leading_basis(matrix: Tensor, rank: int) -> Tensor:
    """Orthonormal ``(m, rank)`` basis of the dominant left singular subspace of ``matrix``.

    A tall ``matrix`` (``m > n``) is not squared on its long side: the right singular vectors come from the
    ``(n, n)`` Gram matrix and the basis is ``orth(matrix @ V_rank)`` (on AlexNet's ``9216 x 4096`` classifier
    unfolding, a ``4096 x 4096`` eigendecomposition instead of a ``9216 x 9216`` one: ~11x less work).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a = torch.randn(300, 20) @ torch.randn(20, 40)  # tall, rank 20
        >>> u = leading_basis(a, 20)
        >>> u.shape, bool(torch.allclose(u @ (u.T @ a), a, atol=1e-3))
        (torch.Size([300, 20]), True)
    """
    m, n = matrix.shape
    if m <= n or rank > n:
        return gram_eigh(matrix)[1][:, :rank]
    right = gram_eigh(matrix.T)[1][:, :rank]
    return orthonormal_columns(matrix @ right)


def orthonormal_columns(matrix: Tensor) -> Tensor:
    """Q of the QR decomposition of ``matrix`` (m >= k columns), signed so that each column of Q has a positive
    inner product with the matching column of ``matrix``: orthogonal columns are just normalized."""
    q, r = torch.linalg.qr(matrix)
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, torch.ones_like(signs), signs)


def unfold(tensor: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding ``(shape[mode], prod(other dims))``."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def hosvd_two_modes(kernel: Tensor, rank_out: int, rank_in: int) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 of a conv kernel by truncated HOSVD on modes 0 and 1.

    Args:
        kernel: ``(C_out, C_in, kh, kw)``.
        rank_out: rank kept on the output-channel mode.
        rank_in: rank kept on the input-channel mode.

    Returns:
        ``(core, u_out, u_in)`` with ``core`` ``(rank_out, rank_in, kh, kw)``, ``u_out`` ``(C_out, rank_out)``
        and ``u_in`` ``(C_in, rank_in)`` such that ``kernel ~= core x_0 u_out x_1 u_in``.
    """
    if kernel.shape[2] * kernel.shape[3] == 1 and max(rank_out, rank_in) <= min(kernel.shape[:2]):
        # a matrix (a Linear or a 1x1 conv): both bases from one eigendecomposition of its short side
        matrix = kernel[:, :, 0, 0]
        if matrix.shape[0] <= matrix.shape[1]:
            vectors = gram_eigh(matrix)[1]
            u_out, u_in = vectors[:, :rank_out], orthonormal_columns(matrix.T @ vectors[:, :rank_in])
        else:
            vectors = gram_eigh(matrix.T)[1]
            u_out, u_in = orthonormal_columns(matrix @ vectors[:, :rank_out]), vectors[:, :rank_in]
    else:
        u_out = leading_basis(unfold(kernel, 0), rank_out)
        u_in = leading_basis(unfold(kernel, 1), rank_in)
    core = torch.einsum("oihw,oa,ib->abhw", kernel, u_out, u_in)
    return core, u_out, u_in


# --------------------------------------------------------------------------------------------------------
# CP-ALS for 4-way conv kernels
# --------------------------------------------------------------------------------------------------------


@dataclass
class CPResult:
    """Result of :func:`cp_als`: balanced factors ``[A_out, B_in, C_h, D_w]`` and the relative error."""

    factors: list[Tensor]
    rel_error: float
    iterations: int
    degenerate: bool


def _khatri_rao(first: Tensor, second: Tensor) -> Tensor:
    """Column-wise Kronecker product ``(I*J, R)`` with the index of ``first`` varying slowest."""
    return (first[:, None, :] * second[None, :, :]).reshape(-1, first.shape[1])


def _solve_normal(mttkrp: Tensor, gram: Tensor, previous: Tensor, proximal: float) -> Tensor:
    """Solve ``F (gram + mu I) = mttkrp + mu previous`` (proximal ALS step, Tikhonov towards ``previous``)."""
    rank = gram.shape[0]
    scale = float(torch.diagonal(gram).mean().clamp_min(1e-30))
    mu = proximal * scale
    # A tiny absolute ridge keeps Cholesky defined for rank-deficient Grams without biasing the fit.
    system = gram + (mu + 1e-10 * scale) * torch.eye(rank, dtype=gram.dtype, device=gram.device)
    rhs = mttkrp + mu * previous
    # Large systems are solved in the working precision (float32 for big kernels: 4x faster, and the
    # regularised system is well conditioned); small ones, or a failed float32 Cholesky, in float64.
    for dtype in ((gram.dtype, torch.float64) if rank > 128 else (torch.float64,)):
        chol, info = torch.linalg.cholesky_ex(system.to(dtype))
        if int(info) == 0:
            return torch.cholesky_solve(rhs.to(dtype).T, chol).T.to(mttkrp.dtype)
    solution = torch.linalg.lstsq(system.double(), rhs.double().T).solution.T
    return solution.to(mttkrp.dtype)


def randomized_svd(matrix: Tensor, rank: int, generator: torch.Generator, n_power: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Randomized SVD (Halko et al.) with its own generator: ``(U (m, k), S (k,), Vh (k, n))``."""
    oversampled = min(rank + 8, *matrix.shape)
    omega = torch.randn(matrix.shape[1], oversampled, generator=generator, dtype=matrix.dtype).to(matrix.device)
    basis = torch.linalg.qr(matrix @ omega).Q
    for _ in range(n_power):
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.T @ basis).Q).Q
    small_u, values, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return (basis @ small_u)[:, :rank], values[:rank], vh[:rank]


def _component_norms(factors: Sequence[Tensor]) -> Tensor:
    norms = torch.ones(factors[0].shape[1], dtype=factors[0].dtype, device=factors[0].device)
    for factor in factors:
        norms = norms * factor.norm(dim=0)
    return norms


def balance_factors(factors: Sequence[Tensor]) -> list[Tensor]:
    """Give every factor column the same norm ``prod(norms)^(1/N)`` (weights absorbed, norms balanced)."""
    norms = [factor.norm(dim=0).clamp_min(1e-30) for factor in factors]
    weights = torch.ones_like(norms[0])
    for norm in norms:
        weights = weights * norm
    target = weights.pow(1.0 / len(factors))
    return [factor / norm * target for factor, norm in zip(factors, norms, strict=True)]


def _is_degenerate(factors: Sequence[Tensor], rel_error: float, norm: float) -> bool:
    if not all(bool(torch.isfinite(factor).all()) for factor in factors):
        return True
    if not math.isfinite(rel_error) or rel_error >= 1.0:
        return True
    # Components much larger than the tensor itself can only cancel each other: the classic CP degeneracy.
    energy = float(_component_norms(factors).pow(2).sum())
    return energy > 100.0 * norm * norm


def _cp_svd_init(core: Tensor, rank: int, generator: torch.Generator) -> list[Tensor]:
    """TensorLy-style SVD init: leading singular vectors per mode, random columns where ``rank > dim``."""
    factors = []
    for mode in range(core.ndim):
        dim = core.shape[mode]
        basis = leading_basis(unfold(core, mode), min(dim, rank))
        if rank > dim:
            extra = torch.randn(dim, rank - dim, generator=generator, dtype=core.dtype) / math.sqrt(dim)
            basis = torch.cat([basis, extra.to(core.device)], dim=1)
        factors.append(basis)
    return factors


def _cp_taps_init(core: Tensor, rank: int, generator: torch.Generator) -> list[Tensor]:
    """Exact-structure init: every spatial tap ``(h, w)`` gets components from the SVD of ``W[:, :, h, w]``.

    The ``rank`` components are shared out greedily by singular value over all taps, so the init is the best
    approximation of the kernel by per-tap low-rank matrices with that many terms (relative error ``< 1``);
    ALS then mixes the taps. Per-tap SVDs are randomized when only a few leading triplets can be chosen.
    """
    dim_o, dim_i, dim_h, dim_w = core.shape
    taps = core.permute(2, 3, 0, 1).reshape(dim_h * dim_w, dim_o, dim_i)
    full = min(dim_o, dim_i)
    # A tap can contribute at most `rank` components; in practice about rank / taps, so twice that suffices.
    per_tap = min(full, rank, 2 * math.ceil(rank / taps.shape[0]) + 8)
    lefts, rights, values = [], [], []
    for tap in taps:
        if per_tap * 3 < full:
            u, singular, vh = randomized_svd(tap, per_tap, generator, n_power=1)
            scale = singular.sqrt()
            left, right = u * scale, vh * scale[:, None]
        else:
            left, right, singular = truncated_svd(tap, per_tap)
            singular = singular[:per_tap]
        lefts.append(left)
        rights.append(right)
        values.append(singular)
    flat = torch.cat(values)
    tap_index = torch.cat([torch.full((v.numel(),), t, dtype=torch.long) for t, v in enumerate(values)])
    comp_index = torch.cat([torch.arange(v.numel()) for v in values])
    chosen = torch.argsort(flat.cpu(), descending=True)[:rank]
    if chosen.numel() < rank:  # more components than all taps hold: repeat the strongest ones, halved
        chosen = chosen.repeat(rank // chosen.numel() + 1)[:rank]
    a_out = torch.stack([lefts[int(tap_index[c])][:, int(comp_index[c])] for c in chosen], dim=1)
    b_in = torch.stack([rights[int(tap_index[c])][int(comp_index[c])] for c in chosen], dim=1)
    counts = torch.bincount(chosen, minlength=flat.numel()).to(core.dtype)[chosen]
    a_out = a_out / counts.to(a_out.device)
    c_h = torch.zeros(dim_h, rank, dtype=core.dtype, device=core.device)
    d_w = torch.zeros(dim_w, rank, dtype=core.dtype, device=core.device)
    taps_of = tap_index[chosen].to(core.device)
    columns = torch.arange(rank, device=core.device)
    c_h[taps_of // dim_w, columns] = 1.0
    d_w[taps_of % dim_w, columns] = 1.0
    return [a_out, b_in, c_h, d_w]


def _als(
    core: Tensor, factors: list[Tensor], n_iter: int, proximal: float, tol: float
) -> tuple[list[Tensor], float, int]:
    """Proximal ALS on a 4-way tensor; returns factors, relative error on ``core`` and iterations run."""
    dim_o, dim_i, dim_h, dim_w = core.shape
    spatial = dim_h * dim_w
    norm_sq = float(core.pow(2).sum())
    a_out, b_in, c_h, d_w = factors
    # (o*p, i) and (o, i*p) views of the core, built once.
    by_out_spatial = core.reshape(dim_o, dim_i, spatial).transpose(1, 2).reshape(dim_o * spatial, dim_i)
    by_out = core.reshape(dim_o, dim_i * spatial)
    previous_error = math.inf
    rel_error = math.inf
    iteration = 0
    for iteration in range(1, n_iter + 1):  # noqa: B007 - the count is returned
        spatial_kr = _khatri_rao(c_h, d_w)  # (p, R)
        gram_b, gram_c, gram_d = b_in.T @ b_in, c_h.T @ c_h, d_w.T @ d_w
        # Mode 0 (output channels).
        partial = (by_out_spatial @ b_in).reshape(dim_o, spatial, -1)
        mttkrp = (partial * spatial_kr[None]).sum(1)
        a_out = _solve_normal(mttkrp, gram_b * gram_c * gram_d, a_out, proximal)
        # Mode 1 (input channels) uses the new A.
        gram_a = a_out.T @ a_out
        partial = (a_out.T @ by_out).reshape(-1, dim_i, spatial)  # (R, i, p)
        mttkrp = (partial * spatial_kr.T[:, None, :]).sum(2).T
        b_in = _solve_normal(mttkrp, gram_a * gram_c * gram_d, b_in, proximal)
        # Spatial modes share W x_0 A x_1 B.
        gram_b = b_in.T @ b_in
        reduced = torch.einsum("rip,ir->rp", partial, b_in).reshape(-1, dim_h, dim_w)  # (R, h, w)
        mttkrp = torch.einsum("rhw,wr->hr", reduced, d_w)
        c_h = _solve_normal(mttkrp, gram_a * gram_b * gram_d, c_h, proximal)
        gram_c = c_h.T @ c_h
        mttkrp = torch.einsum("rhw,hr->wr", reduced, c_h)
        d_w = _solve_normal(mttkrp, gram_a * gram_b * gram_c, d_w, proximal)
        gram_d = d_w.T @ d_w
        # Error from inner products only: ||X - X_hat||^2 = ||X||^2 - 2 <X, X_hat> + ||X_hat||^2.
        inner = float((mttkrp * d_w).sum())
        fit_sq = float((gram_a * gram_b * gram_c * gram_d).sum())
        rel_error = math.sqrt(max(norm_sq - 2.0 * inner + fit_sq, 0.0) / max(norm_sq, 1e-30))
        if not math.isfinite(rel_error):
            break
        if abs(previous_error - rel_error) < tol * max(rel_error, 1e-12) or rel_error < 1e-7:
            break
        previous_error = rel_error
    return [a_out, b_in, c_h, d_w], rel_error, iteration


def cp_als(
    kernel: Tensor,
    rank: int,
    n_iter_max: int = 5,
    l2_reg: float = 1e-3,
    tol: float = 1e-4,
    init: str = "auto",
    seed: int = 0,
) -> CPResult:
    """Rank-``rank`` CP of a ``(C_out, C_in, kh, kw)`` kernel, fast and guarded against degeneracy.

    Steps: (1) where ``rank`` is well below a channel dimension the kernel is first compressed by a truncated
    HOSVD to ``rank`` on that mode (lossless for kernels of CP rank ``<= rank``, CANDELINC), so ALS runs on a
    small core; (2) initialisation ``"taps"`` (per-spatial-tap SVDs, components shared out greedily: error
    always ``< 1``), ``"svd"`` (TensorLy-style leading singular vectors) or ``"auto"`` (taps, plus a second
    start from svd when the problem is small, keeping the better fit); (3) proximal ALS: every step is
    Tikhonov-regularised towards the previous iterate with weight ``l2_reg`` relative to the Gram diagonal,
    which damps diverging components without biasing a converged fit; stops after ``n_iter_max`` sweeps or
    when the relative error changes by less than ``tol`` (relative); (4) factors expanded and their norms
    balanced. A fit with non-finite factors, relative error ``>= 1`` or component energy ``> 100 ||W||^2`` is
    refitted with a 100x stronger regularisation and, if still degenerate, replaced by the initialisation
    or the best finite fit, with a ``RuntimeWarning``.

    Returns:
        :class:`CPResult` with balanced factors ``[A_out (C_out, R), B_in (C_in, R), C_h (kh, R), D_w (kw, R)]``
        and the exact relative Frobenius error of the returned factors.
    """
    # Small problems are solved in float64: same speed, and exact fits reach ~1e-12 instead of ~1e-5.
    small = kernel.numel() * rank <= 2_000_000
    work = kernel.detach().to(torch.float64 if small else torch.float32)
    dim_o, dim_i = work.shape[:2]
    norm = float(work.norm())
    if norm == 0.0:
        zeros = [torch.zeros(dim, rank, dtype=kernel.dtype, device=work.device) for dim in work.shape]
        return CPResult(zeros, 0.0, 0, False)
    # Compress a channel mode only when it pays: near full rank the projection costs more than it saves.
    compress_out = rank if rank < 0.75 * dim_o else dim_o
    compress_in = rank if rank < 0.75 * dim_i else dim_i
    core, u_out, u_in = work, None, None
    if compress_out < dim_o or compress_in < dim_i:
        core, u_out, u_in = hosvd_two_modes(work, compress_out, compress_in)
        u_out = None if compress_out == dim_o else u_out
        u_in = None if compress_in == dim_i else u_in
        if u_out is None or u_in is None:  # recompute the core with the identity on the uncompressed mode
            core = work
            if u_out is not None:
                core = torch.einsum("oihw,oa->aihw", core, u_out)
            if u_in is not None:
                core = torch.einsum("oihw,ib->obhw", core, u_in)
    if init not in ("auto", "taps", "svd"):
        raise ValueError(f"`init` must be 'auto', 'taps' or 'svd', got {init!r}.")
    initials = []
    if init in ("auto", "taps"):
        initials.append(_cp_taps_init(core, rank, torch.Generator().manual_seed(seed)))
    if init == "svd" or (init == "auto" and small):
        # Small problems can afford a second start; it escapes the swamps a single start sometimes hits.
        initials.append(_cp_svd_init(core, rank, torch.Generator().manual_seed(seed)))
    initial = initials[0]

    def expand(factors: list[Tensor]) -> tuple[list[Tensor], float]:
        a_out, b_in, c_h, d_w = factors
        if u_out is not None:
            a_out = u_out @ a_out
        if u_in is not None:
            b_in = u_in @ b_in
        expanded = [a_out, b_in, c_h, d_w]
        if not all(bool(torch.isfinite(f).all()) for f in expanded):
            return expanded, math.inf
        error = float((cp_to_kernel(expanded) - work).norm()) / norm
        return expanded, error

    attempts: list[tuple[list[Tensor], float, int]] = []
    for proximal in (l2_reg, max(l2_reg, 1e-6) * 100.0):
        for start in initials:
            fitted, _, iterations = _als(core, [f.clone() for f in start], n_iter_max, proximal, tol)
            factors, rel_error = expand(fitted)
            attempts.append((factors, rel_error, iterations))
        healthy = [a for a in attempts if not _is_degenerate(a[0], a[1], norm)]
        if healthy:
            factors, rel_error, iterations = min(healthy, key=lambda attempt: attempt[1])
            return CPResult(_finish(factors, kernel.dtype), rel_error, iterations, False)
    init_factors, init_error = expand(initial)
    attempts.append((init_factors, init_error, 0))
    candidates = [a for a in attempts if not _is_degenerate(a[0], a[1], norm)]
    factors, rel_error, iterations = min(candidates or attempts[-1:], key=lambda attempt: attempt[1])
    warnings.warn(
        f"CP decomposition of a kernel of shape {tuple(kernel.shape)} at rank {rank} is degenerate "
        "(non-finite factors, relative error >= 1, or factors much larger than the kernel) even with a 100x "
        f"stronger l2 regularisation; falling back to the best safe fit (relative error {rel_error:.3g}). "
        "Lower the rank, raise `CPConfig(l2_reg=...)`, or use TuckerConfig for this layer.",
        RuntimeWarning,
        stacklevel=3,
    )
    factors = [torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0) for f in factors]
    return CPResult(_finish(factors, kernel.dtype), rel_error, iterations, True)


def _finish(factors: Sequence[Tensor], dtype: torch.dtype) -> list[Tensor]:
    return [factor.to(dtype) for factor in balance_factors(factors)]


def cp_to_kernel(factors: Sequence[Tensor]) -> Tensor:
    """Dense ``(C_out, C_in, kh, kw)`` kernel from CP factors."""
    a_out, b_in, c_h, d_w = factors
    # One GEMM against the Khatri-Rao product; a 4-operand einsum would materialise an (o, i, R) tensor.
    right = _khatri_rao(b_in, _khatri_rao(c_h, d_w))  # (i * h * w, R)
    return (a_out @ right.T).reshape(a_out.shape[0], b_in.shape[0], c_h.shape[0], d_w.shape[0])


# --------------------------------------------------------------------------------------------------------
# TT-SVD
# --------------------------------------------------------------------------------------------------------


def tt_rank_bounds(dims: Sequence[int]) -> list[int]:
    """Largest useful TT rank at each of the ``len(dims) - 1`` bonds of a tensor with mode sizes ``dims``."""
    bounds = []
    for bond in range(1, len(dims)):
        left = math.prod(dims[:bond])
        right = math.prod(dims[bond:])
        bounds.append(min(left, right))
    return bounds


def tt_svd(tensor: Tensor, ranks: Sequence[int] | None = None, energy: float | None = None) -> list[Tensor]:
    """TT-SVD (Oseledets) with given bond ranks or a per-unfolding singular-value energy threshold.

    Args:
        tensor: tensor of shape ``dims``.
        ranks: ``len(dims) - 1`` bond ranks (each capped at what the unfolding allows).
        energy: alternative to ``ranks``: keep, at each unfolding, the smallest rank reaching this energy.

    Returns:
        Cores of shapes ``(r_{k-1}, dims[k], r_k)`` with ``r_0 = r_d = 1``.
    """
    dims = list(tensor.shape)
    cores = []
    left_rank = 1
    remainder = tensor.reshape(dims[0], -1)
    for bond, dim in enumerate(dims[:-1]):
        matrix = remainder.reshape(left_rank * dim, -1)
        if energy is not None:
            rank = energy_rank(squared_singular_values(matrix), energy)
        else:
            assert ranks is not None
            rank = ranks[bond]
        rank = max(1, min(rank, *matrix.shape))
        basis = leading_basis(matrix, rank) if matrix.shape[0] <= matrix.shape[1] else None
        if basis is None:
            # Tall matrix: take the right side's eigenbasis, the left factor is the projection.
            right_basis = leading_basis(matrix.T, rank)  # (n, rank)
            left = matrix @ right_basis
            q, r_factor = torch.linalg.qr(left)
            cores.append(q.reshape(left_rank, dim, rank))
            remainder = r_factor @ right_basis.T
        else:
            cores.append(basis.reshape(left_rank, dim, rank))
            remainder = basis.T @ matrix
        left_rank = rank
    cores.append(remainder.reshape(left_rank, dims[-1], 1))
    return cores


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """Dense tensor of shape ``(n_1, ..., n_d)`` from TT cores ``(r_{k-1}, n_k, r_k)``."""
    result = cores[0].reshape(cores[0].shape[1], cores[0].shape[2])
    dims = [cores[0].shape[1]]
    for core in cores[1:]:
        result = result @ core.reshape(core.shape[0], -1)
        dims.append(core.shape[1])
        result = result.reshape(-1, core.shape[2])
    return result.reshape(dims)
