"""Rank-shrinking priors and SVD-training regularizers on factorized layers (MAP penalties added to the loss).

A *rank component* is everything one index of a rank (bond) touches: for an SVD layer, row ``r`` of ``first`` and
column ``r`` of ``second``; for a TT bond ``k``, slice ``j`` on the right of core ``k`` and on the left of core
``k + 1``. :func:`rank_components` lists them, one ``(bond, R)`` norm matrix per layer.

The low-rank prior of Hawkins & Zhang (Bayesian tensorized networks with automatic rank determination) puts a
zero-mean Gaussian on the entries of each component with its own precision ``tau_r ~ Gamma(a, b)``. Integrating
``tau_r`` out gives a Student-t group prior whose negative log is, up to a constant,

``-log p(w_r) = (a + D_r / 2) * log(1 + ||w_r||^2 / (2 b))``

for a component with ``D_r`` entries. Its gradient is ``(2a + D_r) w_r / (2b + ||w_r||^2)``: large and
proportional to ``w_r`` for small components (they are pulled to exactly zero), vanishing like ``D_r / ||w_r||``
for large ones (the components the data needs keep their scale). The MAP estimate is obtained by adding
``weight * sum_r -log p(w_r)`` to the loss, with ``weight = 1 / N`` for a loss averaged over ``N`` samples.

No Lightning import here; :class:`~tetra_lightning.callbacks.lowrank.LowRankCallback` applies the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from tetra_lightning.decompose.embedding import TTEmbedding
from tetra_lightning.decompose.svd import SVDConv2d, SVDLinear
from tetra_lightning.decompose.tt import TTConv2d, TTLinear

__all__ = [
    "GammaGaussianPrior",
    "SVDTrainingRegularizer",
    "bond_groups",
    "component_scales",
    "lowrank_penalty",
    "shrinkable_layers",
]

FilterFn = Callable[[nn.Module, str], bool]


def _tt_cores(layer: nn.Module) -> list[Tensor] | None:
    """Cores ``(r_{k-1}, m_k, n_k, r_k)`` of a TT layer, the TT-conv spatial filters first as ``(1, kh kw, r_0)``."""
    if isinstance(layer, TTConv2d):
        spatial = layer.spatial.weight.reshape(layer.spatial.out_channels, -1).T[None]  # (1, kh kw, r_0)
        return [spatial, *layer.cores]
    if isinstance(layer, (TTLinear, TTEmbedding)):
        return list(layer.cores)
    return None


def bond_groups(layer: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """The two factors sharing each rank index: ``[(left, right), ...]``, one pair per bond.

    ``left`` has the rank index on its last axis and ``right`` on its first, both flattened to 2-D:
    ``left`` ``(D_left, R)`` and ``right`` ``(R, D_right)``. SVD layers have one bond; TT layers one per bond.

    Args:
        layer: an ``SVDLinear``, ``SVDConv2d``, ``TTLinear``, ``TTConv2d`` or ``TTEmbedding``.

    Returns:
        The pairs (views, so gradients flow to the parameters).

    Raises:
        TypeError: for a layer without rank components (CP, Tucker, dense).

    Example:
        >>> from tetra_lightning.decompose import SVDLinear
        >>> [(tuple(a.shape), tuple(b.shape)) for a, b in bond_groups(SVDLinear(8, 4, rank=3))]
        [((4, 3), (3, 8))]
    """
    if isinstance(layer, (SVDLinear, SVDConv2d)):
        return [(layer.second.weight.flatten(1), layer.first.weight.flatten(1))]
    cores = _tt_cores(layer)
    if cores is None:
        raise TypeError(
            f"`layer` must be an SVD or TT factorized layer with rank components, got {type(layer).__name__}. "
            "CP/Tucker layers and dense layers cannot be shrunk by rank."
        )
    return [
        (left.reshape(-1, left.shape[-1]), right.reshape(right.shape[0], -1))
        for left, right in zip(cores[:-1], cores[1:], strict=True)
    ]


def component_scales(layer: nn.Module) -> list[Tensor]:
    """The scale of each rank component, one vector per bond: ``||left[:, r]|| * ||right[r, :]||``.

    For an SVD layer with orthonormal factors this is the singular value ``s_r``; removing component ``r``
    changes the weight by at most this much (spectral norm).

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> layer = SVDLinear.from_dense(torch.nn.Linear(6, 6), rank=6)
        >>> s = torch.linalg.svdvals(layer.dense_weight().detach())
        >>> bool(torch.allclose(component_scales(layer)[0].detach().sort(descending=True).values, s, atol=1e-5))
        True
    """
    return [left.norm(dim=0) * right.norm(dim=1) for left, right in bond_groups(layer)]


def shrinkable_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> Iterator[tuple[str, nn.Module]]:
    """``(fqn, layer)`` for every SVD/TT layer of ``model`` (including ``model`` itself) accepted by ``filter_fn``."""
    for name, module in model.named_modules():
        if isinstance(module, (SVDLinear, SVDConv2d)) or _tt_cores(module) is not None:
            if filter_fn is None or filter_fn(module, name):
                yield name, module


@dataclass
class GammaGaussianPrior:
    """Low-rank Gamma-Gaussian prior (Hawkins & Zhang) as a MAP penalty: ``sum_r (a + D_r/2) log(1 + ||w_r||^2/2b)``.

    Args:
        a: shape of the Gamma prior on each component's precision (> 0). Small values favour sparsity.
        b: rate of the Gamma prior (> 0); ``sqrt(2 b)`` is the component norm below which the pull is strongest.

    Raises:
        ValueError: for ``a <= 0`` or ``b <= 0``.

    Example:
        >>> from tetra_lightning.decompose import SVDLinear
        >>> prior = GammaGaussianPrior(a=1.0, b=1e-3)
        >>> layer = SVDLinear(16, 8, rank=4)
        >>> bool(prior.negative_log_prior(layer) > 0)
        True
    """

    a: float = 1.0
    b: float = 1e-3

    def __post_init__(self) -> None:
        for key in ("a", "b"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    f"`{key}` of GammaGaussianPrior must be a float > 0, got {value!r}. Pass e.g. a=1.0, b=1e-3."
                )

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": "gamma", **asdict(self)}

    def negative_log_prior(self, layer: nn.Module) -> Tensor:
        """``-log p`` of all rank components of ``layer`` (up to a constant)."""
        total: Tensor | None = None
        for left, right in bond_groups(layer):
            squared = left.pow(2).sum(dim=0) + right.pow(2).sum(dim=1)  # (R,)
            entries = left.shape[0] + right.shape[1]
            term = ((self.a + entries / 2) * torch.log1p(squared / (2 * self.b))).sum()
            total = term if total is None else total + term
        assert total is not None
        return total


@dataclass
class SVDTrainingRegularizer:
    """SVD training (Yang et al., 2020): sparsity of the singular values plus orthogonality of the factors.

    ``sparsity * h(s) + orthogonality * (||U^T U - I||_F^2 + ||V V^T - I||_F^2)`` with ``s`` the component
    scales and ``U``, ``V`` the factors with unit-norm columns/rows, so that the orthogonality term does not fight
    the sparsity term over the scale. ``h`` is the L1 norm ``sum_r s_r`` (``measure="l1"``) or the Hoyer measure
    ``sum_r s_r / ||s||_2`` (``measure="hoyer"``), which only sees the *shape* of the spectrum. Use Hoyer when a
    normalization layer follows the factorized layer (a conv before BatchNorm): there the weight's scale does not
    change the output, so an L1 (or any scale-sensitive) penalty shrinks every component together and the few
    largest dominate a relative threshold; Hoyer is scale invariant and only moves energy between components.
    For TT layers the same terms apply to each bond.

    Args:
        sparsity: weight of the sparsity term (>= 0).
        orthogonality: weight of the orthogonality penalty (>= 0).
        measure: ``"l1"`` or ``"hoyer"``.

    Raises:
        ValueError: for a negative weight or an unknown ``measure``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> layer = SVDLinear.from_dense(torch.nn.Linear(8, 8), rank=4)
        >>> bool(SVDTrainingRegularizer(sparsity=0.0, orthogonality=1.0).negative_log_prior(layer) < 1e-8)
        True
    """

    sparsity: float = 1e-3
    orthogonality: float = 1e-2
    measure: str = "l1"

    def __post_init__(self) -> None:
        for key in ("sparsity", "orthogonality"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(
                    f"`{key}` of SVDTrainingRegularizer must be a float >= 0, got {value!r}. Pass e.g. 1e-3."
                )
        if self.measure not in ("l1", "hoyer"):
            raise ValueError(
                f"`measure` of SVDTrainingRegularizer must be 'l1' or 'hoyer', got {self.measure!r}. Pass measure='hoyer' "
                "for layers followed by a normalization layer."
            )

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": "svd", **asdict(self)}

    def negative_log_prior(self, layer: nn.Module) -> Tensor:
        """The regularizer of ``layer`` (named like the prior's method so both plug into :func:`lowrank_penalty`)."""
        total: Tensor | None = None
        for left, right in bond_groups(layer):
            left_norms, right_norms = left.norm(dim=0), right.norm(dim=1)
            scales = left_norms * right_norms
            if self.measure == "hoyer":
                term = self.sparsity * scales.sum() / scales.pow(2).sum().sqrt().clamp_min(1e-12)
            else:
                term = self.sparsity * scales.sum()
            if self.orthogonality > 0:
                u = left / left_norms.clamp_min(1e-12)
                v = right / right_norms.clamp_min(1e-12)[:, None]
                eye = torch.eye(u.shape[1], device=u.device, dtype=u.dtype)
                term = term + self.orthogonality * ((u.T @ u - eye).pow(2).sum() + (v @ v.T - eye).pow(2).sum())
            total = term if total is None else total + term
        assert total is not None
        return total


Prior = GammaGaussianPrior | SVDTrainingRegularizer


def lowrank_penalty(
    model: nn.Module, prior: Prior, weight: float = 1.0, filter_fn: FilterFn | None = None
) -> Tensor:
    """``weight * sum`` of the prior's penalty over every SVD/TT layer of ``model``; add it to the loss.

    Args:
        model: the model.
        prior: a :class:`GammaGaussianPrior` or :class:`SVDTrainingRegularizer`.
        weight: scale of the penalty; ``1 / N`` for a loss averaged over ``N`` training samples gives the MAP.
        filter_fn: optional ``(module, fqn) -> bool`` selecting the layers.

    Returns:
        A scalar tensor (a zero tensor when the model has no such layer).

    Raises:
        ValueError: for a negative or non-finite ``weight``.

    Example:
        >>> import torch
        >>> from tetra_lightning.decompose import SVDLinear
        >>> model = torch.nn.Sequential(SVDLinear(8, 8, rank=8), torch.nn.ReLU())
        >>> loss = lowrank_penalty(model, GammaGaussianPrior(), weight=1e-3)
        >>> loss.backward()
        >>> model[0].first.weight.grad is not None
        True
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"`weight` must be a finite float >= 0, got {weight!r}. Pass e.g. weight=1 / len(dataset).")
    terms = [prior.negative_log_prior(layer) for _, layer in shrinkable_layers(model, filter_fn)]
    if not terms:
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return weight * torch.stack(terms).sum()
