"""Bad inputs raise clear errors; configs round-trip through plain dicts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import (
    CPConfig,
    FactorizedLayer,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    compress_,
    config_from_dict,
    decompose_layer,
    resolve_ranks,
    restore_structure,
)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": -3}, ValueError, r"`rank` must be a positive int or a float in \(0, 1\], got -3"),
        ({"rank": 0}, ValueError, r"`rank` must be a positive int .* got 0\. Pass e\.g\. `rank=0\.25`"),
        ({"rank": 1.5}, ValueError, r"fraction of the layer's parameters .* in \(0, 1\], got 1\.5"),
        ({"rank": 0.0}, ValueError, r"in \(0, 1\], got 0\.0"),
        ({"rank": (4, -1)}, ValueError, r"`rank` entries must be positive ints, got \(4, -1\)"),
        ({"rank": True}, TypeError, r"got the bool True"),
        ({"rank": "big"}, TypeError, r"`rank` must be an int, a tuple of ints or a float"),
        ({"energy": 0.0}, ValueError, r"`energy` must be a float in \(0, 1\] .* got 0\.0\. Pass e\.g\. `energy=0\.9`"),
        ({"energy": 1.5}, ValueError, r"`energy` must be a float in \(0, 1\].*got 1\.5"),
        ({"rank": 4, "energy": 0.9}, ValueError, r"either `rank` or `energy`, not both"),
    ],
)
def test_bad_rank_specs(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SVDConfig(**kwargs)


def test_bad_method_options() -> None:
    with pytest.raises(ValueError, match=r"`n_iter_max` must be an int >= 1, got 0"):
        CPConfig(n_iter_max=0)
    with pytest.raises(ValueError, match=r"`l2_reg` must be a float in \[0, 1\), got -1"):
        CPConfig(l2_reg=-1)
    with pytest.raises(ValueError, match=r"`init` must be one of"):
        CPConfig(init="random")
    with pytest.raises(ValueError, match=r"`n_iter_max` must be an int >= 0 \(HOOI iterations\), got -2"):
        TuckerConfig(n_iter_max=-2)
    with pytest.raises(ValueError, match=r"`in_modes` and `out_modes` must be given together"):
        TTConfig(in_modes=(4, 4))
    with pytest.raises(ValueError, match=r"`in_modes` must be a tuple of at least two positive ints"):
        TTConfig(in_modes=(0, 4), out_modes=(4, 4))


def test_config_from_dict_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown decomposition method 'qr'.*allowed: \['cp', 'svd', 'tt', 'tucker'\]"):
        config_from_dict({"method": "qr", "rank": 4})
    with pytest.raises(ValueError, match=r"Unknown decomposition method None"):
        config_from_dict({"rank": 4})
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['rnk'\] for method 'svd'"):
        config_from_dict({"method": "svd", "rnk": 4})
    with pytest.raises(TypeError, match=r"`data` must be a mapping"):
        config_from_dict([("method", "svd")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [
        SVDConfig(),
        SVDConfig(energy=0.9),
        TuckerConfig(rank=(8, 4), n_iter_max=3),
        CPConfig(rank=12, n_iter_max=20, l2_reg=1e-2, tol=0.0, init="svd"),
        TTConfig(rank=(3, 4), in_modes=(4, 4), out_modes=(2, 8)),
    ],
    ids=lambda c: c.method,
)
def test_config_dict_round_trip(config) -> None:
    data = json.loads(json.dumps(config.to_dict()))
    assert data["method"] == config.method
    assert config_from_dict(data) == config


def test_default_rank_is_a_quarter() -> None:
    assert TuckerConfig().rank == 0.25
    assert TuckerConfig(energy=0.5).rank is None


def test_unsupported_layers() -> None:
    with pytest.raises(TypeError, match=r"`layer` must be an nn\.Linear, an nn\.Conv2d or a FactorizedLayer, got LSTM"):
        decompose_layer(nn.LSTM(4, 4), SVDConfig())
    with pytest.raises(TypeError, match=r"`config` must be a DecompositionConfig"):
        decompose_layer(nn.Linear(8, 8), {"method": "svd"})  # type: ignore[arg-type]


def test_tt_on_a_grouped_conv_is_rejected() -> None:
    # Tucker and CP apply to nn.Linear and to grouped convs now (tests/test_zoo_layers.py); TT has no grouped form.
    with pytest.raises(TypeError, match=r"method 'tt' has no grouped form \(groups=4\).*Use one of those"):
        decompose_layer(nn.Conv2d(8, 8, 3, groups=4), TTConfig())


@pytest.mark.parametrize(
    ("layer", "config", "match"),
    [
        (nn.Linear(16, 8), SVDConfig(rank=9), r"`rank`=9 is invalid for Linear with method 'svd': it is above the full rank 8"),
        (nn.Conv2d(4, 8, 3), TuckerConfig(rank=(9, 4)), r"ranks \(9, 4\) exceed the full ranks \(8, 4\)"),
        (nn.Conv2d(4, 8, 3), TuckerConfig(rank=(4, 4, 4)), r"3 ranks given but this factorization has 2 modes"),
        (nn.Conv2d(2, 2, 3), CPConfig(rank=13), r"above the full rank 12"),
        (nn.Linear(16, 16), TTConfig(rank=(20,), in_modes=(4, 4), out_modes=(4, 4)), r"exceed the full ranks \(16,\)"),
    ],
)
def test_rank_above_full(layer: nn.Module, config, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decompose_layer(layer, config)


def test_tt_modes_must_fit_the_layer() -> None:
    with pytest.raises(ValueError, match=r"TTConfig\(in_modes=\(4, 4\), out_modes=\(4, 4\)\) does not fit a layer with 32 inputs"):
        decompose_layer(nn.Linear(32, 16), TTConfig(rank=2, in_modes=(4, 4), out_modes=(4, 4)))


def test_direct_construction_rank_errors() -> None:
    from tetra_lightning.decompose import SVDLinear

    with pytest.raises(ValueError, match=r"`rank`=\(12,\) is invalid for SVDLinear.*full rank \(8,\)"):
        SVDLinear.from_dense(nn.Linear(16, 8), rank=12)


def test_compress_and_restore_errors() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"`config` names module 'encoder', which is not a submodule"):
        compress_(model, {"encoder": SVDConfig()})
    with pytest.raises(ValueError, match=r"module '2': `rank`=5 is invalid"):
        compress_(model, {"2": SVDConfig(rank=5)})
    with pytest.raises(TypeError, match=r"`config` must be a DecompositionConfig or a mapping"):
        compress_(model, "svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`history\[0\]` names module 'decoder', which the model does not have"):
        restore_structure(model, [{"name": "decoder", "spec": {"class": "SVDLinear"}}])
    with pytest.raises(ValueError, match=r"`history\[0\]` lacks 'name' or 'spec'"):
        restore_structure(model, [{"name": "0"}])
    with pytest.raises(ValueError, match=r"Unknown factorized layer class 'QRLinear'"):
        FactorizedLayer.from_spec({"class": "QRLinear"})


def test_energy_resolves_for_every_method() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    for config in (SVDConfig(energy=0.9), TuckerConfig(energy=0.9), CPConfig(energy=0.9), TTConfig(energy=0.9)):
        low = resolve_ranks(conv, type(config)(energy=0.5))
        high = resolve_ranks(conv, config)
        assert all(a <= b for a, b in zip(low, high, strict=True)) and sum(low) < sum(high)
