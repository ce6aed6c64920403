"""Whole-model rank allocation: meet a global compression ratio while losing as little as possible.

Each candidate layer gets an *error curve*: for every rank it could be factorized at, the parameter count of the
factorized layer (exact, from :func:`~tetra_lightning.decompose.factorized_param_count`) and an estimate of the
squared reconstruction error, computed cheaply from singular values of the weight's unfoldings:

* SVD: exact (Eckart-Young): the tail energy ``sum_{i>r} s_i^2`` of the matrix the layer factorizes.
* Tucker-2: the HOSVD bound ``tail_out(R_out) + tail_in(R_in)`` of the mode-0 / mode-1 unfoldings; the 2-D rank
  grid is reduced to one path that always lowers the rank whose tail grows least per parameter saved.
* CP: the Tucker-2 bound at ``(R, R)`` (a rank-``R`` CP kernel has mode ranks at most ``R``). This is optimistic
  (CP-ALS rarely reaches it), so ``method="auto"`` never trusts it: it fits CP and compares measured errors.
* TT: uniform bond ranks with the TT-SVD bound, the sum of the tail energies of the tensor's unfoldings at each
  bond (Oseledets 2011).
* Any other registered method: sampled, by decomposing at a few ranks.

Errors are divided by ``||W||_F^2`` (relative squared error) and multiplied by an optional per-layer weight. The
allocator then walks the lower convex hulls of all curves greedily, always taking the move with the smallest
weighted error increase per parameter saved, until the model's total reaches the target; the last move is then
refined to the cheapest point that still meets the target. The result is deterministic (ties broken by layer
order).

``method="auto"`` allocates on the lower envelope of the SVD and Tucker-2 curves (both reliable), then, at each
layer's parameter budget, fits every candidate method (:func:`choose_method`) and keeps the one with the lowest
measured relative error.

Allocation strategies (``allocation=``):

* ``"greedy"`` (default): the walk above on every option of every layer. With equal weights it favours the largest layers
  (they save the most parameters for a given relative error), which at high ratios leaves them at rank 1
  (relative error ~1): the layer is gone and fine-tuning cannot bring its capacity back.
* ``"capped"``: the same walk, restricted to options whose relative (Frobenius) error is at most
  ``max_rel_error`` and whose smallest rank is at least ``min_rank`` (or the layer's largest available rank if
  smaller). When the target cannot be met within the caps they are relaxed step by step (error cap towards 1,
  minimum rank halved) until it can; :attr:`AllocationPlan.caps` records the caps used.
* ``"fisher"`` / ``"fisher_capped"``: the errors are weighted by a measured sensitivity, the estimated loss increase
  ``0.5 * mean(g^2) * ||W||^2 * rel_sq_error`` (diagonal empirical Fisher from training gradients, see
  :func:`fisher_weights`), passed as ``sensitivity``; ``"fisher_capped"`` adds the caps.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import CPConfig, DecompositionConfig, SVDConfig, TTConfig, TuckerConfig
from tetra_lightning.decompose.core import _ties_leaving, decompose_layer
from tetra_lightning.decompose.methods import DENSE_LAYERS, MethodSpec, factorization, layer_shape
from tetra_lightning.decompose.ranks import factorized_param_count, resolve_ranks
from tetra_lightning.report import tied_parameters

__all__ = [
    "AllocationPlan",
    "LayerCurve",
    "RankOption",
    "allocate_ranks",
    "choose_method",
    "compressible_layers",
    "fisher_weights",
    "layer_error_curve",
]

ALLOCATIONS = ("greedy", "capped", "fisher", "fisher_capped")
#: ``method="auto"`` allocates on the envelope of these methods' curves (both reliable), then fits per layer.
AUTO_ENVELOPE: tuple[type[DecompositionConfig], ...] = (SVDConfig, TuckerConfig)


FilterFn = Callable[[nn.Module, str], bool]
ErrorWeightFn = Callable[[str, nn.Module], float]



@dataclass(frozen=True)
class RankOption:
    """One point of a layer's error curve.

    Attributes:
        method: decomposition method, or ``"keep"`` for the layer as it is.
        ranks: ranks of that method (empty for ``"keep"``).
        params: exact parameter count of the layer at these ranks (bias included).
        error: estimated relative squared reconstruction error ``||W - W_r||^2 / ||W||^2``.
    """

    method: str
    ranks: tuple[int, ...]
    params: int
    error: float

    def config(self) -> DecompositionConfig:
        """The config that factorizes a layer at this option's ranks (not for ``"keep"``).

        Example:
            >>> RankOption(TuckerConfig.method, (8, 4), 1000, 0.1).config()
            TuckerConfig(rank=(8, 4), energy=None, n_iter_max=0)
        """
        rank: Any = self.ranks if len(self.ranks) > 1 else self.ranks[0]
        return factorization(self.method).config_class(rank=rank)


@dataclass
class LayerCurve:
    """Error curve of one layer: Pareto-optimal options sorted by decreasing parameter count.

    Attributes:
        name: fully qualified module name.
        params: current parameter count of the layer.
        weight: multiplier of the layer's relative error in the allocation objective.
        options: Pareto-optimal options, the first one is ``"keep"`` (current params, zero error).
    """

    name: str
    params: int
    weight: float
    options: list[RankOption]


@dataclass
class AllocationPlan:
    """Result of :func:`allocate_ranks`.

    Attributes:
        choices: module name -> chosen option, only for layers that change.
        total_before: metric total of the model before (params or bytes).
        total_planned: metric total the plan predicts after the rewrite.
        target: metric total that was asked for.
        reachable: whether the target could be met.
        skipped: module name -> reason, for candidate layers that cannot be compressed.
        curves: the error curves, for inspection.
        allocation: the allocation strategy used.
        caps: ``{"max_rel_error": ..., "min_rank": ...}`` actually applied (``"capped"`` strategies, after any
            relaxation), else empty.
    """

    choices: dict[str, RankOption]
    total_before: int
    total_planned: int
    target: float
    reachable: bool
    skipped: dict[str, str] = field(default_factory=dict)
    curves: dict[str, LayerCurve] = field(default_factory=dict)
    allocation: str = "greedy"
    caps: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# candidate layers
# --------------------------------------------------------------------------------------------------------


def compressible_layers(
    model: nn.Module,
    filter_fn: FilterFn | None = None,
    min_layer_params: int = 0,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Layers that a decomposition may replace: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and factorized layers.

    Grouped and depthwise convs are candidates (factorized per group; a depthwise conv only by CP saves
    parameters). The projections of split attention and recurrent modules are ``nn.Linear`` layers like any
    other: call :func:`~tetra_lightning.decompose.unfuse_` first to make them candidates.

    Args:
        model: the model (fully qualified names are relative to it).
        filter_fn: ``filter_fn(module, fqn) -> bool``; layers it rejects are neither candidates nor skipped.
        min_layer_params: layers with fewer parameters are skipped (recorded with a reason), like layers that
            share a parameter with another module (tied weights); a factorized layer counts the parameters of its
            dense equivalent.

    Returns:
        ``(candidates, skipped)``: name -> module for layers to consider, name -> reason for the others.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 3), nn.Flatten(), nn.Linear(64, 10))
        >>> layers, skipped = compressible_layers(net, min_layer_params=1000)
        >>> list(layers), sorted(skipped)
        (['1'], ['0', '3'])
    """
    candidates: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    factorized_prefixes: list[str] = []
    ties = tied_parameters(model)
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in factorized_prefixes):
            continue  # the plain convs inside a factorized layer are its factors, not layers of the model
        is_factorized = isinstance(module, FactorizedLayer)
        if is_factorized:
            factorized_prefixes.append(name)
        elif not isinstance(module, DENSE_LAYERS):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        held, others = _ties_leaving(name, ties)
        if held:
            skipped[name] = f"shares {held} with {others} (tied weights): factorizing it would untie them"
            continue
        # A factorized layer is judged by the dense layer it stands for: its factors are small after a first
        # stage, and a later stage (iterative compression) must still be able to decompose it further.
        params = layer_shape(module).dense_params if is_factorized else sum(p.numel() for p in module.parameters())
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.in_channels <= 4:
            skipped[name] = f"input layer with {module.in_channels} channels: too few to factorize"
        elif params < min_layer_params:
            skipped[name] = f"{params} parameters < min_layer_params={min_layer_params}"
        else:
            candidates[name] = module
    return candidates, skipped


# --------------------------------------------------------------------------------------------------------
# error curves
# --------------------------------------------------------------------------------------------------------


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.dense_weight() if isinstance(layer, FactorizedLayer) else layer.weight
    return weight.detach().to(device="cpu", dtype=torch.float64)


def _blocks(layer: nn.Module, weight: torch.Tensor) -> list[torch.Tensor]:
    """The 4-D kernel of every group (a Linear: one ``(out, in, 1, 1)``; a Conv1d: ``(out, in, 1, k)``)."""
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    elif weight.dim() == 3:
        weight = weight[:, :, None, :]
    return list(weight.chunk(layer_shape(layer).groups, dim=0))


def _squared_singular_values(matrix: torch.Tensor) -> torch.Tensor:
    small = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.T
    values = torch.linalg.eigvalsh(small @ small.T).flip(0).clamp_min(0.0)
    return values


def _tails(squared: torch.Tensor) -> list[float]:
    """``tails[r] = sum(squared[r:])`` for r = 0..len (so tails[len] = 0)."""
    reversed_cumsum = torch.flip(torch.cumsum(torch.flip(squared, [0]), 0), [0])
    return [float(v) for v in reversed_cumsum] + [0.0]


def _tail(tails: list[float], rank: int) -> float:
    return tails[min(rank, len(tails) - 1)]


def _group_tails(matrices: Sequence[torch.Tensor]) -> list[float]:
    """Tail energies summed over the groups (each group truncated at the same rank)."""
    stacked = torch.stack(list(matrices))  # groups have equal shapes: one batched eigen-decomposition
    if stacked.shape[1] > stacked.shape[2]:
        stacked = stacked.transpose(1, 2)
    squared = torch.linalg.eigvalsh(stacked @ stacked.transpose(1, 2)).flip(-1).clamp_min(0.0).sum(0)
    return _tails(squared)


def _count(layer: nn.Module, method: MethodSpec, ranks: tuple[int, ...]) -> int:
    return int(factorized_param_count(layer, method, ranks))


def _svd_curve(layer: nn.Module, weight: torch.Tensor, norm_sq: float, limit: int) -> list[RankOption]:
    # SVD factorizes each group's matrix: (out, in) for Linear, (C_out, C_in*kh*kw) for a conv (a kxk conv to the
    # rank followed by a 1x1 conv).
    matrices = [block.reshape(block.shape[0], -1) for block in _blocks(layer, weight)]
    tails = _group_tails(matrices)
    options = []
    for rank in range(1, min(matrices[0].shape) + 1):
        params = _count(layer, SVDConfig, (rank,))
        if params >= limit:
            break
        options.append(RankOption(SVDConfig.method, (rank,), params, _tail(tails, rank) / norm_sq))
    return options


def _tucker_tails(layer: nn.Module, weight: torch.Tensor) -> tuple[list[float], list[float]]:
    blocks = _blocks(layer, weight)
    unfold_out = [block.reshape(block.shape[0], -1) for block in blocks]
    tails_out = _group_tails(unfold_out)
    if all(block[0].numel() == block.shape[1] for block in blocks):
        # a matrix (Linear, 1x1 conv): both unfoldings have the same singular values
        return tails_out, list(tails_out)
    unfold_in = [block.movedim(1, 0).reshape(block.shape[1], -1) for block in blocks]
    return tails_out, _group_tails(unfold_in)


def _tucker_curve(layer: nn.Module, weight: torch.Tensor, norm_sq: float, limit: int) -> list[RankOption]:
    tails_out, tails_in = _tucker_tails(layer, weight)
    rank_out, rank_in = len(tails_out) - 1, len(tails_in) - 1
    if weight.dim() == 2:
        # A matrix's best Tucker-2 has equal ranks and the error of its truncated SVD at that rank.
        options = []
        for rank in range(min(rank_out, rank_in), 0, -1):
            params = _count(layer, TuckerConfig, (rank, rank))
            if params < limit:
                options.append(RankOption(TuckerConfig.method, (rank, rank), params, _tail(tails_out, rank) / norm_sq))
        return options
    options = []
    params = _count(layer, TuckerConfig, (rank_out, rank_in))
    while rank_out >= 1 and rank_in >= 1:
        if params < limit:
            error = (_tail(tails_out, rank_out) + _tail(tails_in, rank_in)) / norm_sq
            options.append(RankOption(TuckerConfig.method, (rank_out, rank_in), params, error))
        if rank_out == 1 and rank_in == 1:
            break
        # Lower the rank whose tail energy grows least per parameter saved (a path through the 2-D rank grid).
        moves = []
        if rank_out > 1:
            p = _count(layer, TuckerConfig, (rank_out - 1, rank_in))
            moves.append(((tails_out[rank_out - 1] - tails_out[rank_out]) / max(params - p, 1), 0, p))
        if rank_in > 1:
            p = _count(layer, TuckerConfig, (rank_out, rank_in - 1))
            moves.append(((tails_in[rank_in - 1] - tails_in[rank_in]) / max(params - p, 1), 1, p))
        _, which, params = min(moves)
        if which == 0:
            rank_out -= 1
        else:
            rank_in -= 1
    return options


def _cp_curve(layer: nn.Module, weight: torch.Tensor, norm_sq: float, limit: int) -> list[RankOption]:
    tails_out, tails_in = _tucker_tails(layer, weight)
    bound = factorization(CPConfig).rank_bounds(layer_shape(layer), None)[0]
    options = []
    for rank in range(1, bound + 1):
        params = _count(layer, CPConfig, (rank,))
        if params >= limit:
            break
        if weight.dim() == 2:
            error = _tail(tails_out, rank) / norm_sq  # the CP of a matrix is its truncated SVD: exact
        else:
            error = (_tail(tails_out, rank) + _tail(tails_in, rank)) / norm_sq
        options.append(RankOption(CPConfig.method, (rank,), params, error))
    return options


def _tt_curve(layer: nn.Module, weight: torch.Tensor, norm_sq: float, limit: int) -> list[RankOption]:
    """Uniform TT ranks with the TT-SVD error bound ``sum_k tail_k(r_k)`` (Oseledets 2011, Theorem 2.2).

    ``tail_k`` is the squared truncation error of the ``k``-th unfolding of the full tensor at rank ``r_k``; the
    TT-SVD error is at most their sum, so the curve needs one eigen-decomposition per bond and no decomposition.
    """
    shape = layer_shape(layer)
    handler = factorization(TTConfig)
    handler.check_applies(shape)
    tensor = handler.tensor(weight, shape, None)  # type: ignore[attr-defined]
    dims = list(tensor.shape)
    tails = [
        _tails(_squared_singular_values(tensor.reshape(math.prod(dims[: bond + 1]), -1)))
        for bond in range(len(dims) - 1)
    ]
    bounds = handler.rank_bounds(shape, None)
    options: list[RankOption] = []
    for uniform in range(1, max(bounds) + 1):
        ranks = tuple(min(uniform, bound) for bound in bounds)
        if options and ranks == options[-1].ranks:
            break
        params = _count(layer, TTConfig, ranks)
        if params >= limit:
            break
        error = sum(_tail(bond_tails, rank) for bond_tails, rank in zip(tails, ranks, strict=True)) / norm_sq
        options.append(RankOption(TTConfig.method, ranks, params, min(error, 1.0)))
    return options


def _sampled_curve(layer: nn.Module, method: MethodSpec, limit: int, samples: int = 12) -> list[RankOption]:
    config_class = factorization(method).config_class
    options: dict[tuple[int, ...], RankOption] = {}
    for step in range(1, samples + 1):
        config = config_class(rank=step / (samples + 1))
        try:
            ranks = tuple(int(r) for r in resolve_ranks(layer, config))
            params = _count(layer, config_class, ranks)
            if params >= limit or ranks in options:
                continue
            factorized = decompose_layer(layer, config_class(rank=ranks))
        except (TypeError, ValueError):
            continue
        error = float(factorized.rel_error) ** 2
        if math.isfinite(error):
            options[ranks] = RankOption(config_class.method, ranks, params, error)
    return list(options.values())


CurveFn = Callable[[nn.Module, torch.Tensor, float, int], list[RankOption]]
#: Methods whose error curve comes from singular values; the others are sampled by decomposing.
_ANALYTIC_CURVES: dict[type[DecompositionConfig], CurveFn] = {
    SVDConfig: _svd_curve,
    TuckerConfig: _tucker_curve,
    CPConfig: _cp_curve,
    TTConfig: _tt_curve,
}


def layer_error_curve(layer: nn.Module, method: MethodSpec) -> list[RankOption]:
    """All options of one method for one layer that save parameters, with estimated relative squared errors.

    Args:
        layer: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or a factorized layer (then its current dense weight
            is the reference and only options smaller than its current parameter count are listed).
        method: ``"svd"``, ``"tucker"``, ``"cp"`` or ``"tt"`` (or a config class).

    Returns:
        Options (unsorted, not Pareto-filtered); empty when the method does not apply or cannot save parameters.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> options = layer_error_curve(nn.Linear(32, 32), "svd")
        >>> [o.ranks for o in options[:2]], options[0].params  # rank r keeps r * (32 + 32) + 32 parameters
        ([(1,), (2,)], 96)
        >>> round(options[-1].error, 3) < round(options[0].error, 3)
        True
    """
    weight = _dense_weight(layer)
    limit = sum(p.numel() for p in layer.parameters())
    norm_sq = float(weight.pow(2).sum()) or 1.0
    try:
        config_class = factorization(method).config_class
        curve = _ANALYTIC_CURVES.get(config_class)
        if curve is not None:
            return curve(layer, weight, norm_sq, limit)
        return _sampled_curve(layer, config_class, limit)
    except (TypeError, ValueError):
        # The method does not support this layer (e.g. TT of a grouped conv).
        return []


def _pareto(options: Sequence[RankOption]) -> list[RankOption]:
    """Options sorted by decreasing params with strictly increasing error (dominated ones dropped)."""
    ordered = sorted(options, key=lambda o: (-o.params, o.error, o.method, o.ranks))
    front: list[RankOption] = []
    # From the smallest option upwards, keep an option only if it has less error than every smaller one.
    best_error = math.inf
    for option in reversed(ordered):  # increasing params
        if option.error < best_error:
            front.append(option)
            best_error = option.error
    front.reverse()
    return front


def _lower_hull(options: Sequence[RankOption]) -> list[int]:
    """Indices of the lower convex hull of (params, error), starting at index 0 (largest params)."""
    hull: list[int] = []
    for index, option in enumerate(options):
        while len(hull) >= 2:
            a, b = options[hull[-2]], options[hull[-1]]
            # Slopes in "error per parameter saved"; keep the hull convex (non-decreasing slopes).
            slope_ab = (b.error - a.error) / max(a.params - b.params, 1)
            slope_bc = (option.error - b.error) / max(b.params - option.params, 1)
            if slope_bc <= slope_ab:
                hull.pop()
            else:
                break
        hull.append(index)
    return hull


def _build_curve(
    name: str,
    layer: nn.Module,
    methods: Sequence[str],
    weight: float,
) -> LayerCurve:
    params = sum(p.numel() for p in layer.parameters())
    options: list[RankOption] = []
    for method in methods:
        options.extend(o for o in layer_error_curve(layer, method) if o.params < params)
    keep = RankOption("keep", (), params, 0.0)
    return LayerCurve(name=name, params=params, weight=weight, options=[keep, *_pareto(options)])


def _cap_schedule(max_rel_error: float, min_rank: int) -> list[tuple[float, int]]:
    """The caps, then relaxed ones (error cap halfway to 1, minimum rank halved), ending without caps."""
    steps = [(max_rel_error, min_rank)]
    for k in range(1, 5):
        steps.append((1.0 - (1.0 - max_rel_error) / 2**k, max(1, min_rank >> k)))
    steps.append((math.inf, 1))
    return steps


def _capped_curve(curve: LayerCurve, max_rel_error: float, min_rank: int) -> LayerCurve:
    """``curve`` without the options above the error cap or below the layer's minimum rank."""
    factorized = curve.options[1:]
    # "where the layer allows": a layer whose options all have smaller ranks gets its largest available one
    floor = min(min_rank, max((min(o.ranks) for o in factorized), default=1))
    max_sq = max_rel_error**2
    allowed = [o for o in factorized if min(o.ranks) >= floor and o.error <= max_sq]
    return LayerCurve(curve.name, curve.params, curve.weight, [curve.options[0], *allowed])


def _greedy(
    curves: Mapping[str, LayerCurve],
    cost: Callable[[str, RankOption], float],
    total_before: float,
    target_total: float,
) -> tuple[dict[str, RankOption], float]:
    """Greedy walk down the lower convex hulls; returns the chosen option per layer and the resulting total."""
    names = list(curves)
    hulls = {name: _lower_hull(curves[name].options) for name in names}
    position = dict.fromkeys(names, 0)  # index into the hull
    total = float(total_before)
    heap: list[tuple[float, int, str]] = []

    def push(order: int, name: str) -> None:
        hull = hulls[name]
        if position[name] + 1 < len(hull):
            curve = curves[name]
            current = curve.options[hull[position[name]]]
            following = curve.options[hull[position[name] + 1]]
            saved = max(cost(name, current) - cost(name, following), 1e-12)
            slope = curve.weight * (following.error - current.error) / saved
            heapq.heappush(heap, (slope, order, name))

    for order, name in enumerate(names):
        push(order, name)
    last_moved: str | None = None
    while total > target_total and heap:
        _, order, name = heapq.heappop(heap)
        curve, hull = curves[name], hulls[name]
        current = curve.options[hull[position[name]]]
        position[name] += 1
        following = curve.options[hull[position[name]]]
        total += cost(name, following) - cost(name, current)
        last_moved = name
        push(order, name)

    chosen = {name: curves[name].options[hulls[name][position[name]]] for name in names}
    if last_moved is not None and total <= target_total:
        # The last hull step may overshoot; take the least-error Pareto option of that layer that still fits.
        curve = curves[last_moved]
        current = chosen[last_moved]
        rest = total - cost(last_moved, current)
        fitting = [o for o in curve.options if rest + cost(last_moved, o) <= target_total]
        best = min(fitting, key=lambda o: (o.error, -o.params))
        total = rest + cost(last_moved, best)
        chosen[last_moved] = best
    return chosen, total


def fisher_weights(
    grad_sq_sums: Mapping[str, float],
    layers: Mapping[str, nn.Module],
    batches: int = 1,
) -> dict[str, float]:
    """Sensitivity weights of the ``"fisher"`` allocations from accumulated squared gradients.

    A second-order Taylor expansion with the diagonal empirical Fisher ``F`` gives a loss increase of about
    ``0.5 * sum_i F_i * dW_i^2``; with ``F`` replaced by its mean over the layer, ``mean(F) * ||W||^2 *
    rel_sq_error``. The weight of a layer is therefore ``mean(g^2) * ||W||^2`` (the constant 0.5 and ``batches``
    do not change the allocation, they only keep the numbers readable).

    Args:
        grad_sq_sums: layer name -> sum over batches and over the layer's parameters of squared gradients.
        layers: layer name -> module (its dense weight gives ``||W||^2``, its parameters the element count).
        batches: number of batches summed.

    Returns:
        Layer name -> weight, for the layers in both mappings.

    Example:
        >>> layer = nn.Linear(4, 4, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(0.5)
        >>> fisher_weights({"fc": 1.6}, {"fc": layer}, batches=1)  # mean g^2 = 0.1, ||W||^2 = 4
        {'fc': 0.4}
    """
    weights = {}
    for name, total in grad_sq_sums.items():
        layer = layers.get(name)
        if layer is None:
            continue
        numel = sum(p.numel() for p in layer.parameters()) or 1
        norm_sq = float(_dense_weight(layer).pow(2).sum())
        weights[name] = round(float(total) / max(1, batches) / numel * norm_sq, 12)
    return weights


def allocate_ranks(
    model: nn.Module,
    target_total: float,
    method: str,
    *,
    filter_fn: FilterFn | None = None,
    min_layer_params: int = 1024,
    metric: str = "params",
    error_weight: ErrorWeightFn | None = None,
    layers: Mapping[str, nn.Module] | None = None,
    allocation: str = "greedy",
    max_rel_error: float = 0.8,
    min_rank: int = 8,
    sensitivity: Mapping[str, float] | None = None,
) -> AllocationPlan:
    """Chooses ranks for every compressible layer so that the whole model meets ``target_total``.

    Args:
        model: the model; all its parameters (and buffers for ``metric="bytes"``) count in the total.
        target_total: parameter count (or bytes) the whole model should have at most afterwards.
        method: ``"svd"``, ``"tucker"``, ``"cp"``, ``"tt"``, or ``"auto"`` (allocate on the envelope of SVD and
            Tucker-2; use :func:`choose_method` per layer afterwards).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selecting candidate layers.
        min_layer_params: smaller layers are left dense.
        metric: ``"params"`` or ``"bytes"`` (parameters weighted by their element size; buffers are fixed).
        error_weight: ``error_weight(fqn, module) -> float`` multiplying each layer's relative squared error
            (default 1: every layer's relative error counts the same).
        layers: precomputed candidates (name -> module), overriding ``filter_fn`` / ``min_layer_params``.
        allocation: ``"greedy"`` (default), ``"capped"``, ``"fisher"`` or ``"fisher_capped"`` (see the module
            docstring). On the quarter-width ResNet-18 --quick protocol of ``benchmarks/resnet18_cifar10.py``
            (7 epochs of fine-tuning) the capped and Fisher-weighted variants did not fine-tune better than greedy.
        max_rel_error: error cap of the capped strategies, on the relative Frobenius error (not squared), in
            (0, 1].
        min_rank: minimum rank of the capped strategies (every rank of a multi-rank option), >= 1.
        sensitivity: layer name -> weight for the ``"fisher"`` strategies (e.g. from :func:`fisher_weights`);
            layers missing from it get the median weight. Multiplies ``error_weight``.

    Returns:
        An :class:`AllocationPlan`; ``choices`` holds the layers to change.

    Raises:
        ValueError: for an unknown ``metric``, ``method`` or ``allocation``, bad caps, or a ``"fisher"`` strategy
            without ``sensitivity``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
        >>> total = sum(p.numel() for p in net.parameters())
        >>> plan = allocate_ranks(net, total / 2, "svd")
        >>> plan.reachable, plan.total_planned <= total / 2, total / plan.total_planned < 2.2
        (True, True, True)
        >>> capped = allocate_ranks(net, total / 2, "svd", allocation="capped", max_rel_error=0.9, min_rank=8)
        >>> min(o.ranks[0] for o in capped.choices.values()) >= 8
        True
    """
    if metric not in ("params", "bytes"):
        raise ValueError(f"`metric` must be 'params' or 'bytes', got {metric!r}.")
    if method not in ("auto", "svd", "tucker", "cp", "tt"):
        raise ValueError(f"`method` must be one of 'auto', 'svd', 'cp', 'tucker', 'tt', got {method!r}.")
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"`allocation` must be one of {', '.join(map(repr, ALLOCATIONS))}, got {allocation!r}."
        )
    if not 0 < max_rel_error <= 1:
        raise ValueError(f"`max_rel_error` must be in (0, 1], got {max_rel_error!r}.")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise ValueError(f"`min_rank` must be an int >= 1, got {min_rank!r}.")
    if allocation.startswith("fisher") and not sensitivity:
        raise ValueError(
            f"allocation={allocation!r} needs `sensitivity` (layer name -> weight, see `fisher_weights`)."
        )
    skipped: dict[str, str] = {}
    if layers is None:
        layers, skipped = compressible_layers(model, filter_fn, min_layer_params)
    methods = [cls.method for cls in AUTO_ENVELOPE] if method == "auto" else [method]

    def unit(layer: nn.Module) -> int:
        if metric == "bytes":
            return next(layer.parameters()).element_size()
        return 1

    if metric == "bytes":
        total_before = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    else:
        total_before = sum(p.numel() for p in model.parameters())

    median = 1.0
    if sensitivity and allocation.startswith("fisher"):
        values = sorted(float(v) for v in sensitivity.values())
        median = values[len(values) // 2]
    curves: dict[str, LayerCurve] = {}
    for name, layer in layers.items():
        weight = 1.0 if error_weight is None else float(error_weight(name, layer))
        if allocation.startswith("fisher"):
            assert sensitivity is not None
            weight *= float(sensitivity.get(name, median))
        curve = _build_curve(name, layer, methods, weight)
        if len(curve.options) < 2:
            skipped[name] = f"no {'/'.join(methods)} factorization has fewer parameters than the layer"
            continue
        curves[name] = curve

    def cost(name: str, option: RankOption) -> float:
        return option.params * unit(layers[name])

    caps: dict[str, float] = {}
    if allocation in ("capped", "fisher_capped"):
        for cap_error, cap_rank in _cap_schedule(max_rel_error, min_rank):
            capped = {name: _capped_curve(curve, cap_error, cap_rank) for name, curve in curves.items()}
            smallest = total_before - sum(
                cost(name, c.options[0]) - min(cost(name, o) for o in c.options) for name, c in capped.items()
            )
            if smallest <= target_total or math.isinf(cap_error):
                break
        chosen, total = _greedy(capped, cost, total_before, target_total)
        caps = {"max_rel_error": cap_error, "min_rank": cap_rank}
    else:
        chosen, total = _greedy(curves, cost, total_before, target_total)

    choices = {name: option for name, option in chosen.items() if option.method != "keep"}
    return AllocationPlan(
        choices=choices,
        total_before=int(total_before),
        total_planned=int(round(total)),
        target=float(target_total),
        reachable=total <= target_total,
        skipped=skipped,
        curves=curves,
        allocation=allocation,
        caps=caps,
    )


def _option_at_budget(layer: nn.Module, method: MethodSpec, budget: int) -> RankOption | None:
    """The largest uniform ranks of ``method`` whose parameter count fits ``budget`` (error not estimated)."""
    config_class = factorization(method).config_class
    params = sum(p.numel() for p in layer.parameters())
    fraction = min(1.0, budget / max(params, 1))
    try:
        ranks = tuple(int(r) for r in resolve_ranks(layer, config_class(rank=fraction)))
        while _count(layer, config_class, ranks) > budget and max(ranks) > 1:
            ranks = tuple(max(1, r - 1) for r in ranks)
        count = _count(layer, config_class, ranks)
    except (TypeError, ValueError):
        return None
    if count > budget or count >= params:
        return None
    return RankOption(config_class.method, ranks, count, math.nan)


def _best_option_within(options: Sequence[RankOption], budget: int) -> RankOption | None:
    fitting = [o for o in options if o.params <= budget]
    if not fitting:
        return None
    return min(fitting, key=lambda o: (o.error, -o.params))


def choose_method(
    layer: nn.Module,
    budget: int,
    methods: Sequence[str] = ("svd", "tucker", "cp"),
) -> tuple[Any, dict[str, float]]:
    """Fits every method at a parameter budget and returns the config with the lowest measured error.

    For each method the ranks with the lowest estimated error whose exact parameter count fits ``budget`` (for
    TT, whose error is not estimated, the largest uniform rank that fits) are decomposed with
    :func:`~tetra_lightning.decompose.decompose_layer`; the measured ``rel_error`` decides. Methods that do not
    apply (TT on a grouped conv) or cannot meet the budget are left out. On a matrix (a Linear, an ungrouped
    ``1 x 1`` conv) Tucker-2 and CP are not fitted when SVD is a candidate: both are rank-``R`` products there, so
    by Eckart-Young neither can have a lower error than the truncated SVD at the same budget (this halves the
    time of ``method="auto"`` on classifier-heavy models such as AlexNet and VGG).

    Args:
        layer: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or a factorized layer.
        budget: maximum parameter count of the factorized layer.
        methods: candidate methods.

    Returns:
        ``(config, errors)``: the winning :class:`~tetra_lightning.decompose.DecompositionConfig` (``None`` if no
        method fits the budget) and the measured relative error of every method that was tried.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> conv = nn.Conv2d(32, 32, 3)
        >>> config, errors = choose_method(conv, budget=4000)
        >>> config.method in errors and errors[config.method] == min(errors.values())
        True
    """
    errors: dict[str, float] = {}
    best: tuple[float, int, Any] | None = None
    shape = layer_shape(layer)
    if "svd" in methods and shape.kernel_size == (1, 1) and shape.groups == 1:
        methods = [m for m in methods if m not in ("tucker", "cp")]
    for order, method in enumerate(methods):
        if factorization(method).config_class in _ANALYTIC_CURVES:
            option = _best_option_within(layer_error_curve(layer, method), budget)
        else:  # sampling the curve would decompose a dozen times; the ranks at the budget need one
            option = _option_at_budget(layer, method, budget)
        if option is None:
            continue
        config = option.config()
        try:
            factorized = decompose_layer(layer, config)
        except (TypeError, ValueError):
            continue
        error = float(factorized.rel_error)
        if not math.isfinite(error):
            continue
        errors[method] = error
        if best is None or (error, order) < (best[0], best[1]):
            best = (error, order, config)
    return (best[2] if best is not None else None), errors
