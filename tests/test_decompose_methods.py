"""The factorization table: one handler per config class, found from a config, its class or its method name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tetra_lightning.decompose import CPConfig, SVDConfig, TTConfig, TuckerConfig, decompose_layer
from tetra_lightning.decompose.configs import CONFIG_CLASSES
from tetra_lightning.decompose.methods import factorization, layer_shape


@pytest.mark.parametrize("config", [SVDConfig(rank=6), TuckerConfig(rank=(6, 4)), CPConfig(rank=6), TTConfig(rank=3)])
def test_every_config_class_has_its_factorization(config) -> None:
    handler = factorization(config)
    assert handler is factorization(type(config)) is factorization(config.method)
    assert handler.config_class is type(config)
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    layer = decompose_layer(conv, config)
    # the handler's exact count is what the built layer has
    assert handler.param_count(layer_shape(conv), layer.ranks, config) == sum(p.numel() for p in layer.parameters())
    assert type(layer) is type(handler.build(conv, layer.ranks, config))


def test_the_table_covers_every_method_name() -> None:
    assert {factorization(name).config_class for name in CONFIG_CLASSES} == set(CONFIG_CLASSES.values())


def test_unknown_methods() -> None:
    with pytest.raises(ValueError, match=r"`method` must be one of \('svd', 'tucker', 'cp', 'tt'\), got 'qr'"):
        factorization("qr")
    with pytest.raises(TypeError, match=r"`method` must be a method name .* got 3"):
        factorization(3)  # type: ignore[arg-type]
