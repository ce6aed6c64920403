"""Factorized layers: exactness at full rank, error at reduced rank, parameter counts, geometry variants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import (
    CPConfig,
    CPConv2d,
    FactorizedLayer,
    SVDConfig,
    SVDConv2d,
    SVDLinear,
    TTConfig,
    TTConv2d,
    TTLinear,
    TuckerConfig,
    TuckerConv2d,
    _linalg,
    decompose_layer,
    factorized_param_count,
    resolve_ranks,
)
from tetra_lightning.decompose.ranks import layer_shape, rank_bounds
from tetra_lightning.decompose.tt import factorize

torch.set_num_threads(1)


def _params(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _conv(seed: int = 0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    defaults = {"in_channels": 6, "out_channels": 8, "kernel_size": 3}
    defaults.update(kwargs)
    return nn.Conv2d(**defaults)


def _cp_conv(rank: int, seed: int = 0, **kwargs) -> nn.Conv2d:
    """A conv whose kernel has CP rank exactly ``rank``."""
    conv = _conv(seed, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    factors = [torch.randn(size, rank, generator=generator) for size in conv.weight.shape]
    with torch.no_grad():
        conv.weight.copy_(_linalg.cp_to_kernel(factors))
    return conv


GEOMETRIES = [
    {"stride": 1, "padding": 1, "dilation": 1, "bias": True},
    {"stride": 2, "padding": 1, "dilation": 1, "bias": False},
    {"stride": 1, "padding": 2, "dilation": 2, "bias": True},
    {"stride": (2, 1), "padding": (0, 2), "dilation": 1, "bias": True, "kernel_size": (3, 5)},
    {"stride": 1, "padding": "same", "dilation": 1, "bias": False},
    {"stride": 1, "padding": 1, "dilation": 1, "bias": True, "padding_mode": "reflect"},
]


def _full_rank(layer: nn.Module, method: str) -> int:
    """The largest full rank over the modes; an int rank is capped per mode, so this is exact everywhere."""
    return max(rank_bounds(layer_shape(layer), method))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(f"{k}={v}" for k, v in g.items()))
@pytest.mark.parametrize("method", ["svd", "tucker", "tt"])
def test_conv_full_rank_reproduces_dense_output(method: str, geometry: dict) -> None:
    conv = _conv(**geometry)
    config = {"svd": SVDConfig, "tucker": TuckerConfig, "tt": TTConfig}[method]
    layer = decompose_layer(conv, config(rank=_full_rank(conv, method)))
    x = torch.randn(2, 6, 11, 13)
    assert layer.rel_error < 1e-5
    assert layer(x).shape == conv(x).shape
    assert _rel(layer(x), conv(x)) < 1e-4


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(f"{k}={v}" for k, v in g.items()))
def test_cp_exact_on_rank_r_kernel(geometry: dict) -> None:
    conv = _cp_conv(3, **geometry)
    layer = decompose_layer(conv, CPConfig(rank=3, n_iter_max=300, tol=0.0))
    x = torch.randn(2, 6, 11, 13)
    assert isinstance(layer, CPConv2d)
    assert layer.rel_error < 1e-5
    assert _rel(layer(x), conv(x)) < 1e-4


def test_cp_full_rank_on_tiny_kernel_is_exact() -> None:
    # 2x2x3x3 has CP rank <= 12 = prod(shape) / max(shape): rank 12 is a full-rank CP.
    conv = _conv(1, in_channels=2, out_channels=2, padding=1)
    assert resolve_ranks(conv, CPConfig(rank=12)) == (12,)
    layer = decompose_layer(conv, CPConfig(rank=12, n_iter_max=500, tol=0.0))
    x = torch.randn(3, 2, 7, 7)
    assert _rel(layer(x), conv(x)) < 1e-4


def test_cp_factors_are_balanced_and_weights_absorbed() -> None:
    conv = _cp_conv(4, seed=3, in_channels=10, out_channels=12)
    layer = decompose_layer(conv, CPConfig(rank=4, n_iter_max=200, tol=0.0))
    norms = torch.stack([factor.norm(dim=0) for factor in layer.factors()])  # (4 factors, R)
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)
    assert not any("weight" in name and "cp" in name for name, _ in layer.named_parameters())


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_svd_and_tt(bias: bool) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(24, 20, bias=bias)
    x = torch.randn(5, 24)
    svd = decompose_layer(dense, SVDConfig(rank=20))
    assert isinstance(svd, SVDLinear)
    assert _rel(svd(x), dense(x)) < 1e-4
    tt = decompose_layer(dense, TTConfig(rank=_full_rank(dense, "tt")))
    assert isinstance(tt, TTLinear)
    assert tt.in_modes == (6, 4) and tt.out_modes == (5, 4)
    assert _rel(tt(x), dense(x)) < 1e-4
    # Leading batch dimensions are kept.
    assert tt(torch.randn(2, 3, 24)).shape == (2, 3, 20)


def test_tt_linear_explicit_modes_three_cores() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(64, 27)
    # dims (12, 12, 12): bond maxima min(12, 144) = 12 and min(144, 12) = 12.
    layer = decompose_layer(dense, TTConfig(rank=12, in_modes=(4, 4, 4), out_modes=(3, 3, 3)))
    assert layer.ranks == (12, 12)
    x = torch.randn(4, 64)
    assert _rel(layer(x), dense(x)) < 1e-4


def _svd_tail_error(matrix: torch.Tensor, rank: int) -> float:
    singular = torch.linalg.svdvals(matrix.double())
    return float(singular[rank:].pow(2).sum().sqrt() / singular.pow(2).sum().sqrt())


def test_svd_reduced_rank_error_equals_dropped_singular_values() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(40, 30)
    layer = decompose_layer(dense, SVDConfig(rank=7))
    expected = _svd_tail_error(dense.weight.detach(), 7)
    assert layer.rel_error == pytest.approx(expected, rel=1e-4)
    assert _rel(layer.dense_weight(), dense.weight) == pytest.approx(expected, rel=1e-4)
    # The layer computes exactly x W_7^T + b: its output error is the weight truncation's.
    x = torch.randn(16, 40)
    truncated = nn.functional.linear(x, layer.dense_weight(), dense.bias)
    assert _rel(layer(x), truncated) < 1e-5
    # Singular values are split as sqrt: both factors carry the same row/column norms.
    assert torch.allclose(layer.first.weight.norm(dim=1), layer.second.weight.norm(dim=0), rtol=1e-4)


def test_svd_conv_reduced_rank_error() -> None:
    conv = _conv(2, in_channels=8, out_channels=16, padding=1)
    layer = decompose_layer(conv, SVDConfig(rank=5))
    expected = _svd_tail_error(conv.weight.detach().reshape(16, -1), 5)
    assert layer.rel_error == pytest.approx(expected, rel=1e-4)
    x = torch.randn(2, 8, 9, 9)
    reference = nn.functional.conv2d(x, layer.dense_weight(), conv.bias, padding=1)
    assert _rel(layer(x), reference) < 1e-5


def test_tucker_reduced_rank_error_within_hosvd_bounds() -> None:
    conv = _conv(3, in_channels=12, out_channels=16, padding=1)
    layer = decompose_layer(conv, TuckerConfig(rank=(6, 5)))
    weight = conv.weight.detach()
    tail_out = _svd_tail_error(weight.reshape(16, -1), 6)
    tail_in = _svd_tail_error(weight.transpose(0, 1).reshape(12, -1), 5)
    # HOSVD: max(mode errors) <= error <= sqrt(sum of mode errors^2).
    assert max(tail_out, tail_in) - 1e-6 <= layer.rel_error <= math.hypot(tail_out, tail_in) + 1e-6
    assert layer.rel_error == pytest.approx(_rel(layer.dense_weight(), weight), rel=1e-5)
    x = torch.randn(2, 12, 8, 8)
    reference = nn.functional.conv2d(x, layer.dense_weight(), conv.bias, padding=1)
    assert _rel(layer(x), reference) < 1e-5


def test_tucker_hooi_improves_on_hosvd() -> None:
    conv = _conv(4, in_channels=12, out_channels=16)
    hosvd = decompose_layer(conv, TuckerConfig(rank=(5, 4)))
    hooi = decompose_layer(conv, TuckerConfig(rank=(5, 4), n_iter_max=10))
    assert hooi.rel_error <= hosvd.rel_error + 1e-6
    assert hooi.rel_error < 1.0


def test_tt_conv_reduced_rank_error_within_tt_svd_bound() -> None:
    conv = _conv(5, in_channels=16, out_channels=16, padding=1)
    layer = decompose_layer(conv, TTConfig(rank=(4, 6), in_modes=(4, 4), out_modes=(4, 4)))
    assert isinstance(layer, TTConv2d) and layer.ranks == (4, 6)
    assert layer.rel_error == pytest.approx(_rel(layer.dense_weight(), conv.weight), rel=1e-5)
    assert 0.0 < layer.rel_error < 1.0
    x = torch.randn(2, 16, 8, 8)
    reference = nn.functional.conv2d(x, layer.dense_weight(), conv.bias, padding=1)
    assert _rel(layer(x), reference) < 1e-5


def test_cp_reduced_rank_error_matches_reconstruction() -> None:
    conv = _conv(6, in_channels=16, out_channels=16, padding=1)
    layer = decompose_layer(conv, CPConfig(rank=10))
    assert 0.0 < layer.rel_error < 1.0
    assert layer.rel_error == pytest.approx(_rel(layer.dense_weight(), conv.weight), rel=1e-4)
    x = torch.randn(2, 16, 8, 8)
    reference = nn.functional.conv2d(x, layer.dense_weight(), conv.bias, padding=1)
    assert _rel(layer(x), reference) < 1e-5


def test_cp_degenerate_fit_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = _conv(7, in_channels=8, out_channels=8)

    def diverging_als(core, factors, n_iter, proximal, tol):
        return [torch.full_like(f, float("nan")) for f in factors], math.nan, n_iter

    monkeypatch.setattr(_linalg, "_als", diverging_als)
    with pytest.warns(RuntimeWarning, match="degenerate"):
        layer = decompose_layer(conv, CPConfig(rank=6))
    # Fallback is the per-tap SVD initialisation: finite and better than zero.
    assert all(bool(torch.isfinite(f).all()) for f in layer.factors())
    assert layer.rel_error < 1.0
    assert layer.rel_error == pytest.approx(_rel(layer.dense_weight(), conv.weight), rel=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts_match_formulas(bias: bool) -> None:
    conv = _conv(in_channels=16, out_channels=32, kernel_size=3, bias=bias)
    linear = nn.Linear(64, 48, bias=bias)
    b_conv, b_lin = (32, 48) if bias else (0, 0)
    cases = [
        (conv, SVDConfig(rank=5), 5 * (16 * 9 + 32) + b_conv),
        (conv, TuckerConfig(rank=(8, 4)), 16 * 4 + 4 * 8 * 9 + 8 * 32 + b_conv),
        (conv, CPConfig(rank=7), 7 * (16 + 3 + 3 + 32) + b_conv),
        # TT-conv modes (4, 4) x (8, 4): dims (9, 32, 16), ranks (3, 5).
        (conv, TTConfig(rank=(3, 5), in_modes=(4, 4), out_modes=(8, 4)), 9 * 3 + 3 * 32 * 5 + 5 * 16 + b_conv),
        (linear, SVDConfig(rank=6), 6 * (64 + 48) + b_lin),
        # TT-matrix modes (8, 8) x (8, 6): dims (64, 48), rank (5,).
        (linear, TTConfig(rank=(5,), in_modes=(8, 8), out_modes=(8, 6)), 64 * 5 + 5 * 48 + b_lin),
    ]
    for layer, config, expected in cases:
        factorized = decompose_layer(layer, config)
        assert _params(factorized) == expected, (config, factorized)
        assert factorized_param_count(layer, config.method, factorized.ranks, config) == expected


@pytest.mark.parametrize(
    ("dense", "config"),
    [
        (nn.Linear(20, 12), SVDConfig(rank=4)),
        (nn.Linear(16, 12), TTConfig(rank=3)),
        (nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), SVDConfig(rank=4)),
        (nn.Conv2d(6, 8, 3, padding="same", padding_mode="reflect"), TuckerConfig(rank=(4, 3))),
        (nn.Conv2d(6, 8, (3, 5), dilation=2), CPConfig(rank=5)),
        (nn.Conv2d(8, 8, 3, padding=1), TTConfig(rank=(3, 4))),
    ],
)
def test_spec_round_trip_and_to_dense(dense: nn.Module, config) -> None:
    layer = decompose_layer(dense, config)
    spec = json.loads(json.dumps(layer.spec()))
    clone = FactorizedLayer.from_spec(spec)
    assert type(clone) is type(layer) and clone.ranks == layer.ranks and math.isnan(clone.rel_error)
    clone.load_state_dict(layer.state_dict())
    if isinstance(dense, nn.Linear):
        x = torch.randn(2, dense.in_features)
    else:
        x = torch.randn(2, dense.in_channels, 12, 12)
    assert torch.equal(clone(x), layer(x))
    merged = layer.to_dense()
    assert type(merged) is type(dense)
    assert _rel(merged(x), layer(x)) < 1e-5
    assert (merged.bias is None) == (dense.bias is None)


@pytest.mark.parametrize(
    "config",
    [SVDConfig(rank=3), TuckerConfig(rank=(3, 2)), CPConfig(rank=3), TTConfig(rank=(3, 2))],
    ids=lambda c: c.method,
)
def test_iterative_decomposition_of_a_factorized_layer(config) -> None:
    conv = _conv(8, in_channels=8, out_channels=8, padding=1)
    first = decompose_layer(conv, type(config)(rank=0.6) if config.method != "tt" else TTConfig(rank=(6, 4)))
    second = decompose_layer(first, config)
    assert type(second) is type(first)
    assert sum(second.ranks) < sum(first.ranks)
    assert _params(second) < _params(first)
    # The second step approximates the first layer's weight; the result stays finite and sensible.
    assert second.rel_error == pytest.approx(_rel(second.dense_weight(), first.dense_weight()), rel=1e-4)
    assert second.rel_error < 1.0


def test_iterative_svd_equals_direct_truncation() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(32, 32)
    direct = decompose_layer(dense, SVDConfig(rank=6))
    twice = decompose_layer(decompose_layer(dense, SVDConfig(rank=16)), SVDConfig(rank=6))
    x = torch.randn(8, 32)
    assert _rel(twice(x), direct(x)) < 1e-4


def test_float_rank_keeps_that_fraction_of_parameters() -> None:
    conv = _conv(in_channels=32, out_channels=64, kernel_size=3, bias=False)
    for config in (SVDConfig(rank=0.25), TuckerConfig(rank=0.25), CPConfig(rank=0.25), TTConfig(rank=0.25)):
        ranks = resolve_ranks(conv, config)
        kept = factorized_param_count(conv, config.method, ranks) / _params(conv)
        assert kept == pytest.approx(0.25, rel=0.1), (config.method, ranks, kept)


def test_energy_rank_is_smallest_rank_reaching_the_threshold() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(30, 20)
    squared = torch.linalg.svdvals(dense.weight.detach().double()).pow(2)
    cumulative = torch.cumsum(squared, 0) / squared.sum()
    expected = int((cumulative < 0.8).sum()) + 1
    assert resolve_ranks(dense, SVDConfig(energy=0.8)) == (expected,)
    assert decompose_layer(dense, SVDConfig(energy=0.8)).ranks == (expected,)
    assert resolve_ranks(dense, SVDConfig(energy=1.0)) == (20,)


def test_int_rank_is_capped_per_mode() -> None:
    conv = nn.Conv2d(3, 16, 3)
    assert resolve_ranks(conv, TuckerConfig(rank=8)) == (8, 3)
    assert resolve_ranks(conv, TTConfig(rank=8)) == (8, 4)  # modes (3, 1) x (4, 4): dims (9, 12, 4)
    assert resolve_ranks(conv, SVDConfig(rank=16)) == (16,)


def test_auto_tt_modes() -> None:
    assert factorize(512, 3) == (8, 8, 8)
    assert factorize(256, 3) == (8, 8, 4)
    assert factorize(10, 2) == (5, 2)
    layer = decompose_layer(nn.Conv2d(64, 128, 3, bias=False), TTConfig(rank=0.3))
    assert layer.in_modes == (4, 4, 4) and layer.out_modes == (8, 4, 4)


def test_layers_are_plain_modules() -> None:
    conv = _conv(in_channels=8, out_channels=8, padding=1)
    for config, expected in (
        (SVDConfig(rank=4), SVDConv2d),
        (TuckerConfig(rank=(4, 4)), TuckerConv2d),
        (CPConfig(rank=4), CPConv2d),
    ):
        layer = decompose_layer(conv, config)
        assert isinstance(layer, expected)
        children = list(layer.children())
        assert children and all(isinstance(child, nn.Conv2d) for child in children)
