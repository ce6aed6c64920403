"""compress_ / restore_structure / recompose_ on tiny real models: ratios, history replay, recompose."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from tests.helpers.models import tiny_mlp, tiny_resnet
from tetra_lightning.decompose import (
    CPConfig,
    FactorizedLayer,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    TuckerConv2d,
    compress_,
    recompose_,
    restore_structure,
)

torch.set_num_threads(1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _replaced(history: list[dict]) -> list[dict]:
    return [entry for entry in history if "skipped" not in entry]


@pytest.mark.parametrize(
    "config",
    [TuckerConfig(rank=0.2), SVDConfig(rank=0.2), CPConfig(rank=0.2), TTConfig(rank=0.2)],
    ids=lambda c: c.method,
)
def test_compress_hits_requested_fraction(config) -> None:
    model = tiny_resnet()
    dense_params = sum(p.numel() for p in model.parameters())
    history = compress_(model, config)
    replaced = _replaced(history)
    before = sum(entry["params_before"] for entry in replaced)
    after = sum(entry["params_after"] for entry in replaced)
    assert after / before == pytest.approx(0.2, rel=0.1)
    # The model really shrank by exactly the recorded amount.
    assert sum(p.numel() for p in model.parameters()) == dense_params - before + after
    assert all(isinstance(model.get_submodule(entry["name"]), FactorizedLayer) for entry in replaced)
    # Convs and the Linear head are all replaced (Tucker and CP factorize linear layers as low-rank products).
    assert len(replaced) == 10
    json.dumps(history)


@pytest.mark.parametrize(
    "config",
    [TuckerConfig(rank=0.3), SVDConfig(rank=0.3), CPConfig(rank=0.3), TTConfig(rank=0.3)],
    ids=lambda c: c.method,
)
def test_history_json_restore_load_gives_identical_outputs(config) -> None:
    model = tiny_resnet()
    history = json.loads(json.dumps(compress_(model, config)))
    fresh = restore_structure(tiny_resnet(seed=1), history)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh(x), model(x))
    assert fresh.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "config", [TuckerConfig(rank=0.3), CPConfig(rank=0.3), TTConfig(rank=0.3)], ids=lambda c: c.method
)
def test_recompose_matches_factorized_model_and_replays(config) -> None:
    model = tiny_resnet()
    compress_history = compress_(model, config)
    x = torch.randn(2, 3, 16, 16)
    factorized_out = model(x)
    recompose_history = recompose_(model)
    assert not any(isinstance(m, FactorizedLayer) for m in model.modules())
    assert _rel(model(x), factorized_out) < 1e-4
    assert [entry["method"] for entry in recompose_history] == ["dense"] * len(_replaced(compress_history))
    for merged, factorized in zip(recompose_history, _replaced(compress_history), strict=True):
        assert merged["name"] == factorized["name"] and merged["from"] == config.method
        assert (merged["params_before"], merged["params_after"]) == (factorized["params_after"], factorized["params_before"])
    # The full history (compress then recompose) replays on a fresh dense model.
    full = json.loads(json.dumps(compress_history + recompose_history))
    fresh = restore_structure(tiny_resnet(seed=2), full)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


def test_mlp_svd_and_tt() -> None:
    for config in (SVDConfig(rank=0.25), TTConfig(rank=0.25)):
        model = tiny_mlp()
        x = torch.randn(4, 32)
        dense_out = model(x)
        history = compress_(model, config)
        assert [entry["name"] for entry in _replaced(history)] == ["net.0", "net.2", "net.4"]
        assert _rel(model(x), dense_out) < 1.0
        fresh = restore_structure(tiny_mlp(seed=5), json.loads(json.dumps(history)))
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x), model(x))


def test_iterative_compression_through_a_mapping() -> None:
    model = tiny_resnet()
    history = compress_(model, TuckerConfig(rank=0.5))
    name = "layers.2.conv2"
    first_ranks = model.get_submodule(name).ranks
    second = compress_(model, {name: TuckerConfig(rank=0.5)})
    assert len(second) == 1 and second[0]["name"] == name
    layer = model.get_submodule(name)
    assert isinstance(layer, TuckerConv2d)
    assert layer.ranks[0] < first_ranks[0] and layer.ranks[1] < first_ranks[1]
    # A float rank on a factorized layer is a fraction of its current parameters.
    assert second[0]["params_after"] / second[0]["params_before"] == pytest.approx(0.5, rel=0.15)
    fresh = restore_structure(tiny_resnet(), json.loads(json.dumps(history + second)))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(fresh(x), model(x))


def test_mapping_only_touches_named_modules_and_filter_fn() -> None:
    model = tiny_resnet()
    history = compress_(model, {"conv1": SVDConfig(rank=2), "fc": SVDConfig(rank=4)})
    assert [entry["name"] for entry in history] == ["conv1", "fc"]
    assert [entry["ranks"] for entry in history] == [[2], [4]]
    assert isinstance(model.layers[0].conv1, nn.Conv2d)

    model = tiny_resnet()
    history = compress_(model, TuckerConfig(rank=0.3), filter_fn=lambda module, name: name.startswith("layers.1"))
    assert {entry["name"] for entry in history} == {"layers.1.conv1", "layers.1.conv2", "layers.1.downsample.0"}


def test_skips_are_recorded() -> None:
    def make() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(4, 8, 3, groups=2),
            nn.Conv2d(8, 8, 3, groups=8),
            nn.Conv2d(8, 8, 3),
            nn.Flatten(),
            nn.Linear(8, 4),
            nn.Linear(4, 4),
        )

    history = compress_(make(), TTConfig(rank=0.25))
    by_name = {entry["name"]: entry for entry in history}
    assert "has no grouped form (groups=2)" in by_name["0"]["skipped"]
    assert "skipped" not in by_name["2"]
    # Tucker factorizes grouped convs per group and linear layers; a depthwise conv cannot save parameters.
    history = compress_(make(), TuckerConfig(rank=0.25))
    by_name = {entry["name"]: entry for entry in history}
    assert "skipped" not in by_name["0"] and by_name["0"]["spec"]["groups"] == 2
    assert by_name["1"]["skipped"].startswith("no parameter reduction")
    assert "skipped" not in by_name["4"] and by_name["4"]["spec"]["class"] == "TuckerLinear"
    json.dumps(history)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = compress_(nn.Sequential(nn.Linear(4, 4)), SVDConfig(rank=4))
    assert history[0]["skipped"].startswith("no parameter reduction: 36 factorized >= 20")

    with pytest.warns(UserWarning, match="above the full rank"):
        history = compress_(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 3)), SVDConfig(rank=8))
    assert [("skipped" in entry) for entry in history] == [False, True]


def test_multihead_attention_is_split_then_factorized() -> None:
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2), "proj": nn.Linear(16, 16)})
    history = compress_(model, SVDConfig(rank=0.25))
    assert [entry["name"] for entry in history] == [
        "attn", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "proj"
    ]
    assert history[0]["kind"] == "attention" and isinstance(model["attn"].q_proj, FactorizedLayer)


def test_training_mode_and_requires_grad_are_kept() -> None:
    model = tiny_mlp().train()
    model.net[0].requires_grad_(False)
    compress_(model, SVDConfig(rank=0.25))
    assert model.net[0].training and model.net[2].training
    assert not any(p.requires_grad for p in model.net[0].parameters())
    assert all(p.requires_grad for p in model.net[2].parameters())
