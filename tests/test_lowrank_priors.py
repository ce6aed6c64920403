from __future__ import annotations

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import (
    CPConv2d,
    FactorizedLayer,
    SVDConv2d,
    SVDLinear,
    TTConv2d,
    TTLinear,
    restore_structure,
)
from tetra_lightning.lowrank import (
    GammaGaussianPrior,
    SVDTrainingRegularizer,
    TTEmbedding,
    bond_groups,
    component_scales,
    lowrank_penalty,
    shrink_,
    shrink_layer,
)

THRESHOLD = 1e-2


def _fit_low_rank(weight: float, prior=None, steps: int = 300) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """Regression on data from a rank-3 map with an over-parameterised rank-16 SVDLinear."""
    torch.manual_seed(0)
    n, d_in, d_out = 512, 32, 24
    true_map = torch.randn(d_out, 3) @ torch.randn(3, d_in) / d_in**0.5
    x = torch.randn(n, d_in)
    y = x @ true_map.T + 0.01 * torch.randn(n, d_out)
    model = nn.Sequential(SVDLinear(d_in, d_out, rank=16, bias=False))
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    prior = prior or GammaGaussianPrior(a=1.0, b=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) + lowrank_penalty(model, prior, weight=weight)
        loss.backward()
        optimizer.step()
    return model, x, y


@pytest.fixture(scope="module")
def fitted_with_prior():
    return _fit_low_rank(weight=1 / 512)


def test_gamma_prior_recovers_true_rank(fitted_with_prior):
    model, _, _ = fitted_with_prior
    scales = component_scales(model[0])[0].detach()
    relative = scales / scales.max()
    assert int((relative > THRESHOLD).sum()) == 3
    # The removed components are not just small, they are pulled to (numerical) zero.
    assert float(relative.sort(descending=True).values[3]) < 1e-3


def test_without_prior_components_stay_alive():
    model, _, _ = _fit_low_rank(weight=0.0, steps=150)
    scales = component_scales(model[0])[0].detach()
    assert int((scales / scales.max() > THRESHOLD).sum()) > 3


def test_shrink_removes_components_and_keeps_outputs(fitted_with_prior):
    model, x, y = fitted_with_prior
    model = nn.Sequential(FactorizedLayer.from_spec(model[0].spec()))
    model[0].load_state_dict(fitted_with_prior[0][0].state_dict())
    before = model(x).detach()
    history = shrink_(model, THRESHOLD)
    assert [entry["ranks"] for entry in history] == [[3]]
    assert history[0]["ranks_before"] == [16] and history[0]["params_after"] == 3 * (32 + 24)
    after = model(x).detach()
    assert model[0].ranks == (3,)
    assert float((after - before).abs().max()) < 1e-3 * float(before.abs().max())
    assert float(nn.functional.mse_loss(after, y)) < 0.01 * float(y.var())  # the prior only slightly shrinks s_1..3
    fresh = restore_structure(nn.Sequential(nn.Linear(32, 24, bias=False)), history)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


def test_component_scales_are_singular_values_after_svd():
    layer = SVDLinear.from_dense(nn.Linear(12, 10), rank=10)
    singular = torch.linalg.svdvals(layer.dense_weight().detach())
    scales = component_scales(layer)[0].detach().sort(descending=True).values
    assert torch.allclose(scales, singular, atol=1e-5)


def test_svd_training_regularizer_orthogonality_and_sparsity():
    torch.manual_seed(0)
    exact = SVDLinear.from_dense(nn.Linear(16, 12), rank=8)
    assert float(SVDTrainingRegularizer(sparsity=0.0, orthogonality=1.0).negative_log_prior(exact).detach()) < 1e-8
    l1 = SVDTrainingRegularizer(sparsity=1.0, orthogonality=0.0).negative_log_prior(exact).detach()
    assert float(l1) == pytest.approx(float(torch.linalg.svdvals(exact.dense_weight().detach())[:8].sum()), rel=1e-4)
    layer = SVDLinear(16, 12, rank=8)
    regularizer = SVDTrainingRegularizer(sparsity=0.0, orthogonality=1.0)
    start = float(regularizer.negative_log_prior(layer).detach())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        regularizer.negative_log_prior(layer).backward()
        optimizer.step()
    assert start > 1.0 and float(regularizer.negative_log_prior(layer).detach()) < 0.05 * start


def test_shrink_tt_linear_bond_exactly():
    torch.manual_seed(0)
    layer = TTLinear(64, 32, (4, 4, 4), (4, 4, 2), rank=(6, 5))
    with torch.no_grad():
        layer.cores[0][..., 4:] = 0.0  # bond 0: keep 4 of 6
        layer.cores[2][1] = 0.0  # bond 1: slice 1 dead on the right side
    new = shrink_layer(layer, 1e-6)
    assert new is not None and new.ranks == (4, 4)
    assert torch.allclose(new.dense_weight(), layer.dense_weight(), atol=1e-6)
    x = torch.randn(5, 64)
    assert torch.allclose(new(x), layer(x), atol=1e-5)
    assert shrink_layer(new, 1e-6) is None


def test_shrink_tt_conv_spatial_bond_and_embedding():
    torch.manual_seed(0)
    conv = TTConv2d(8, 8, 3, (4, 2), (4, 2), rank=(6, 4), padding=1)
    with torch.no_grad():
        conv.spatial.weight[2:4] = 0.0
        conv.cores[0][..., 3] = 0.0
    new = shrink_layer(conv, 1e-6)
    assert new is not None and new.ranks == (4, 3)
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(new(x), conv(x), atol=1e-5)

    emb = TTEmbedding(100, 16, voc_modes=(10, 10), emb_modes=(4, 4), rank=8)
    with torch.no_grad():
        emb.cores[1][5:] = 0.0
    small = shrink_layer(emb, 1e-6)
    assert small is not None and small.ranks == (5,)
    indices = torch.arange(100)
    assert torch.allclose(small(indices), emb(indices), atol=1e-6)


def test_prior_gradient_shrinks_small_components_more():
    layer = SVDLinear(8, 8, rank=2, bias=False)
    with torch.no_grad():
        layer.first.weight.copy_(torch.tensor([[1.0] * 8, [0.01] * 8]))
        layer.second.weight.copy_(torch.tensor([[1.0, 0.01]] * 8))
    GammaGaussianPrior(a=1.0, b=1e-3).negative_log_prior(layer).backward()
    grad, weight = layer.first.weight.grad, layer.first.weight
    # Relative pull grad/w is ~(2a + D)/(2b + ||w||^2): hundreds of times stronger on the small component.
    assert float(grad[1, 0] / weight[1, 0]) > 100 * float(grad[0, 0] / weight[0, 0])


def test_hoyer_measure_is_scale_invariant_and_sparsifies_the_spectrum():
    """Behind BatchNorm the weight's scale is free: Hoyer sees only the spectrum's shape, and lowers it by
    moving energy into few components (so a relative threshold then removes the rest)."""
    torch.manual_seed(0)
    layer = SVDLinear.from_dense(nn.Linear(16, 12), rank=8)
    hoyer = SVDTrainingRegularizer(sparsity=1.0, orthogonality=0.0, measure="hoyer")
    value = float(hoyer.negative_log_prior(layer).detach())
    s = torch.linalg.svdvals(layer.dense_weight().detach())[:8]
    assert value == pytest.approx(float(s.sum() / s.norm()), rel=1e-4)
    assert 1.0 <= value <= 8**0.5
    with torch.no_grad():
        layer.second.weight.mul_(3.0)
    assert float(hoyer.negative_log_prior(layer).detach()) == pytest.approx(value, rel=1e-5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        hoyer.negative_log_prior(layer).backward()
        optimizer.step()
    scales = component_scales(layer)[0].detach()
    assert float(hoyer.negative_log_prior(layer).detach()) < 0.8 * value
    assert int((scales > 0.1 * scales.max()).sum()) < 8


def test_errors():
    with pytest.raises(ValueError, match="`measure` of SVDTrainingRegularizer must be 'l1' or 'hoyer'"):
        SVDTrainingRegularizer(measure="l2")
    with pytest.raises(ValueError, match="`a` of GammaGaussianPrior must be a float > 0"):
        GammaGaussianPrior(a=0.0)
    with pytest.raises(ValueError, match="`sparsity` of SVDTrainingRegularizer"):
        SVDTrainingRegularizer(sparsity=-1.0)
    with pytest.raises(ValueError, match=r"`threshold` must be a float in \[0, 1\)"):
        shrink_(nn.Sequential(SVDLinear(4, 4, rank=2)), threshold=1.5)
    with pytest.raises(ValueError, match="`min_rank` must be an int >= 1"):
        shrink_(nn.Sequential(SVDLinear(4, 4, rank=2)), min_rank=0)
    with pytest.raises(TypeError, match="must be an SVD or TT factorized layer"):
        bond_groups(CPConv2d(4, 4, 3, rank=2))
    with pytest.raises(ValueError, match="`weight` must be a finite float >= 0"):
        lowrank_penalty(nn.Sequential(SVDConv2d(4, 4, 3, rank=2)), GammaGaussianPrior(), weight=-1.0)
