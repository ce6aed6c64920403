from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import (
    FactorizedLayer,
    SVDConfig,
    TuckerConfig,
    compress_,
    config_from_dict,
    decompose_layer,
    factorized_param_count,
)
from tetra_lightning.decompose.allocation import (
    allocate_ranks,
    choose_method,
    compressible_layers,
    fisher_weights,
    layer_error_curve,
)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _low_rank_conv(out_channels: int, in_channels: int, rank: int, seed: int) -> nn.Conv2d:
    """A conv whose (C_out, C_in*k*k) unfolding has exactly rank ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    left = torch.randn(out_channels, rank, generator=generator)
    right = torch.randn(rank, in_channels * 9, generator=generator)
    with torch.no_grad():
        conv.weight.copy_((left @ right).reshape(conv.weight.shape) / 10)
    return conv


class MixedNet(nn.Module):
    """Stem (3 channels), one nearly low-rank conv, one full-rank conv, a 1x1 conv and a small head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.low = _low_rank_conv(64, 32, rank=6, seed=1)
        with torch.no_grad():
            self.low.weight.add_(1e-3 * torch.randn_like(self.low.weight))
        self.full = nn.Conv2d(64, 64, 3, padding=1)
        self.pointwise = nn.Conv2d(64, 64, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.full(self.low(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", [nn.Linear(40, 24), nn.Conv2d(16, 24, 3)])
def test_svd_curve_is_exact(layer: nn.Module) -> None:
    torch.manual_seed(0)
    options = layer_error_curve(layer, "svd")
    dense = _count(layer)
    assert options and all(o.params < dense for o in options)
    for option in options[:: max(1, len(options) // 4)]:
        factorized = decompose_layer(layer, SVDConfig(rank=option.ranks[0]))
        assert option.params == _count(factorized) == factorized_param_count(layer, "svd", option.ranks)
        # Eckart-Young: the tail energy is the exact squared relative error.
        assert option.error == pytest.approx(factorized.rel_error**2, rel=1e-3, abs=1e-6)


def test_tucker_curve_bounds_the_hosvd_error() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 32, 3)
    options = layer_error_curve(conv, "tucker")
    assert len(options) > 10
    # The path lowers one rank at a time, so parameters strictly decrease along it.
    assert all(a.params > b.params for a, b in itertools.pairwise(options))
    for option in options[:: len(options) // 5]:
        factorized = decompose_layer(conv, TuckerConfig(rank=option.ranks))
        assert option.params == _count(factorized)
        assert factorized.rel_error**2 <= option.error + 1e-6
        # ... and the HOSVD bound is tight within a factor 2 (two modes).
        assert option.error <= 2 * factorized.rel_error**2 + 1e-6


def test_compressible_layers_skips_stem_and_small_layers() -> None:
    layers, skipped = compressible_layers(MixedNet(), min_layer_params=1024)
    assert list(layers) == ["low", "full", "pointwise"]
    assert set(skipped) == {"stem", "head"}
    assert "3 channels" in skipped["stem"] and "min_layer_params" in skipped["head"]
    only_full, _ = compressible_layers(MixedNet(), filter_fn=lambda module, name: name == "full")
    assert list(only_full) == ["full"]


@pytest.mark.parametrize("method", ["svd", "tucker", "auto"])
@pytest.mark.parametrize("ratio", [2.0, 4.0])
def test_allocation_meets_the_whole_model_ratio(method: str, ratio: float) -> None:
    model = MixedNet()
    dense = _count(model)
    plan = allocate_ranks(model, dense / ratio, method, min_layer_params=1024)
    assert plan.reachable
    assert plan.total_before == dense
    reached = dense / plan.total_planned
    assert ratio <= reached <= 1.1 * ratio
    assert "stem" not in plan.choices and "head" not in plan.choices
    if method != "auto":
        configs = {
            name: config_from_dict({"method": o.method, "rank": o.ranks if len(o.ranks) > 1 else o.ranks[0]})
            for name, o in plan.choices.items()
        }
        compress_(model, configs)
        assert _count(model) == plan.total_planned  # the plan's counts are exact
        assert ratio <= dense / _count(model) <= 1.1 * ratio


def test_allocation_is_deterministic_and_beats_a_uniform_fraction() -> None:
    model = MixedNet()
    dense = _count(model)
    first = allocate_ranks(model, dense / 3, "svd")
    second = allocate_ranks(MixedNet(), dense / 3, "svd")
    assert first.choices == second.choices
    # The nearly rank-6 layer gets a rank close to 6, the full-rank layers keep more.
    assert 6 <= first.choices["low"].ranks[0] <= 8
    greedy_error = sum(o.error for o in first.choices.values())

    # A uniform fraction of every layer's parameters at (at least) the same total parameter count.
    layers, _ = compressible_layers(model, min_layer_params=1024)
    uniform_error, uniform_total = math.inf, math.inf
    for fraction in [f / 100 for f in range(5, 100)]:
        total, error = dense, 0.0
        for layer in layers.values():
            options = layer_error_curve(layer, "svd")
            budget = fraction * _count(layer)
            option = max((o for o in options if o.params <= budget), key=lambda o: o.params)
            total += option.params - _count(layer)
            error += option.error
        if total <= first.total_planned:
            uniform_error, uniform_total = error, total
    assert uniform_total <= first.total_planned
    assert greedy_error < 0.7 * uniform_error


def test_unreachable_target_is_reported() -> None:
    model = MixedNet()
    plan = allocate_ranks(model, 100, "svd")
    assert not plan.reachable
    assert plan.total_planned > 100
    # Everything compressible went to its smallest option.
    assert all(o.ranks == (1,) for o in plan.choices.values())


def test_choose_method_picks_the_lowest_measured_error() -> None:
    svd_friendly = _low_rank_conv(32, 32, rank=4, seed=3)
    budget = factorized_param_count(svd_friendly, "svd", (4,))
    config, errors = choose_method(svd_friendly, budget, ("svd", "tucker", "cp"))
    assert config.method == "svd"
    assert errors["svd"] < 1e-3
    assert errors["svd"] == min(errors.values())
    assert set(errors) == {"svd", "tucker", "cp"}

    # A kernel with exact Tucker-2 structure (4, 4): Tucker at that budget is exact, SVD is not.
    generator = torch.Generator().manual_seed(4)
    core = torch.randn(4, 4, 3, 3, generator=generator)
    u_out, u_in = torch.randn(32, 4, generator=generator), torch.randn(32, 4, generator=generator)
    tucker_friendly = nn.Conv2d(32, 32, 3)
    with torch.no_grad():
        tucker_friendly.weight.copy_(torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in))
    budget = factorized_param_count(tucker_friendly, "tucker", (4, 4))
    config, errors = choose_method(tucker_friendly, budget, ("svd", "tucker", "cp"))
    assert config.method == "tucker"
    assert errors["tucker"] < 1e-4 < errors["svd"]


def test_choose_method_on_a_matrix_fits_only_svd_which_no_tucker_or_cp_beats() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    budget = factorized_param_count(linear, "svd", (12,))
    config, errors = choose_method(linear, budget, ("svd", "tucker", "cp"))
    assert config.method == "svd" and set(errors) == {"svd"}
    # what the skipped methods would have reached at the same budget: never below the SVD's error
    for method in ("tucker", "cp"):
        only, other = choose_method(linear, budget, (method,))
        assert only is not None and other[method] >= errors["svd"] - 1e-6
    # without SVD among the candidates, Tucker and CP are fitted as before
    _, errors = choose_method(nn.Conv2d(48, 96, 1), budget, ("tucker", "cp"))
    assert set(errors) == {"tucker", "cp"}


def test_hosvd_of_a_matrix_matches_the_truncated_svd_on_both_sides() -> None:
    from tetra_lightning.decompose._linalg import hosvd_two_modes, leading_basis

    torch.manual_seed(1)
    for rows, cols in ((40, 120), (120, 40)):
        matrix = torch.randn(rows, cols)
        core, u_out, u_in = hosvd_two_modes(matrix[:, :, None, None], 10, 10)
        approx = u_out @ core[:, :, 0, 0] @ u_in.T
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        best = (u[:, :10] * s[:10]) @ vh[:10]
        assert torch.allclose(approx, best, atol=1e-4)
        assert torch.allclose(u_out.T @ u_out, torch.eye(10), atol=1e-5)
        assert torch.allclose(u_in.T @ u_in, torch.eye(10), atol=1e-5)
        # the tall route of leading_basis spans the same subspace as the SVD's left vectors
        basis = leading_basis(matrix, 10)
        assert torch.allclose(basis @ basis.T, u[:, :10] @ u[:, :10].T, atol=1e-4)


def test_allocation_on_factorized_layers_goes_further() -> None:
    model = MixedNet()
    dense = _count(model)
    first = allocate_ranks(model, dense / 2, "svd")
    compress_(model, {n: SVDConfig(rank=o.ranks[0]) for n, o in first.choices.items()})
    assert isinstance(model.full, FactorizedLayer)
    second = allocate_ranks(model, dense / 4, "svd")
    assert second.total_before == _count(model)
    compress_(model, {n: SVDConfig(rank=o.ranks[0]) for n, o in second.choices.items()})
    assert 4 <= dense / _count(model) <= 4.4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`metric` must be 'params' or 'bytes'"):
        allocate_ranks(MixedNet(), 1000, "svd", metric="flops")
    with pytest.raises(ValueError, match="`method` must be one of"):
        allocate_ranks(MixedNet(), 1000, "qr")
    with pytest.raises(ValueError, match="`allocation` must be one of"):
        allocate_ranks(MixedNet(), 1000, "svd", allocation="uniform")
    with pytest.raises(ValueError, match=r"`max_rel_error` must be in \(0, 1\]"):
        allocate_ranks(MixedNet(), 1000, "svd", max_rel_error=1.5)
    with pytest.raises(ValueError, match="`min_rank` must be an int >= 1"):
        allocate_ranks(MixedNet(), 1000, "svd", min_rank=0)
    with pytest.raises(ValueError, match="needs `sensitivity`"):
        allocate_ranks(MixedNet(), 1000, "svd", allocation="fisher")


# --------------------------------------------------------------------------------------------------------
# allocation strategies
# --------------------------------------------------------------------------------------------------------


class WideNet(nn.Module):
    """One small and two large full-rank convs: equal-weight greedy crushes the large ones first."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.small = nn.Conv2d(32, 32, 3, padding=1)
        self.big1 = nn.Conv2d(32, 96, 3, padding=1)
        self.big2 = nn.Conv2d(96, 96, 3, padding=1)
        self.head = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.big2(self.big1(self.small(self.stem(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("allocation", ["greedy", "capped", "fisher", "fisher_capped"])
@pytest.mark.parametrize("ratio", [2.0, 4.5])
def test_every_strategy_meets_the_ratio_and_is_deterministic(allocation: str, ratio: float) -> None:
    model = WideNet()
    dense = _count(model)
    sensitivity = {"small": 2.0, "big1": 1.0, "big2": 0.5} if allocation.startswith("fisher") else None
    plan = allocate_ranks(model, dense / ratio, "svd", allocation=allocation, sensitivity=sensitivity)
    again = allocate_ranks(WideNet(), dense / ratio, "svd", allocation=allocation, sensitivity=sensitivity)
    assert plan.reachable and plan.allocation == allocation
    assert ratio <= dense / plan.total_planned <= 1.1 * ratio
    assert plan.choices == again.choices
    configs = {n: SVDConfig(rank=o.ranks[0]) for n, o in plan.choices.items()}
    compress_(model, configs)
    assert ratio <= dense / _count(model) <= 1.1 * ratio


def test_capped_respects_the_error_cap_and_minimum_rank() -> None:
    model = WideNet()
    dense = _count(model)
    greedy = allocate_ranks(model, dense / 2, "svd", allocation="greedy")
    capped = allocate_ranks(model, dense / 2, "svd", allocation="capped", max_rel_error=0.8, min_rank=8)
    assert capped.caps == {"max_rel_error": 0.8, "min_rank": 8}  # reachable without relaxing
    assert capped.reachable and 2 <= dense / capped.total_planned <= 2.2
    for option in capped.choices.values():
        assert math.sqrt(option.error) <= 0.8 + 1e-9
        assert min(option.ranks) >= 8
    # Without the cap, greedy takes at least one layer beyond it.
    assert max(math.sqrt(o.error) for o in greedy.choices.values()) > 0.8


def test_capped_relaxes_the_caps_only_as_far_as_the_target_needs() -> None:
    model = WideNet()
    dense = _count(model)
    plan = allocate_ranks(model, dense / 12, "svd", allocation="capped", max_rel_error=0.5, min_rank=16)
    assert plan.reachable and 12 <= dense / plan.total_planned <= 13.2
    assert plan.caps["max_rel_error"] > 0.5 and plan.caps["min_rank"] < 16
    for option in plan.choices.values():
        assert math.sqrt(option.error) <= plan.caps["max_rel_error"] + 1e-9
    impossible = allocate_ranks(model, 10, "svd", allocation="capped")
    assert not impossible.reachable and math.isinf(impossible.caps["max_rel_error"])


def test_fisher_weights_protect_the_sensitive_layer() -> None:
    model = WideNet()
    dense = _count(model)
    layers, _ = compressible_layers(model, min_layer_params=1024)
    assert fisher_weights({"big1": 8.0, "nope": 1.0}, layers, batches=2) == {
        "big1": pytest.approx(4.0 / _count(model.big1) * float(model.big1.weight.detach().pow(2).sum()))
    }
    protect = {"small": 1.0, "big1": 1e6, "big2": 1.0}
    neglect = {"small": 1.0, "big1": 1e-6, "big2": 1.0}
    kept = allocate_ranks(model, dense / 3, "svd", allocation="fisher", sensitivity=protect)
    crushed = allocate_ranks(model, dense / 3, "svd", allocation="fisher", sensitivity=neglect)

    def big1_error(plan: Any) -> float:
        option = plan.choices.get("big1")
        return 0.0 if option is None else option.error

    assert big1_error(kept) < big1_error(crushed)
