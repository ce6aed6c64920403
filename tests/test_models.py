from __future__ import annotations

import pytest
import torch
from torch import nn

from tetra_lightning.models import cifar_resnet18


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_is_the_torchvision_resnet18_with_a_cifar_stem() -> None:
    from torchvision.models import resnet18

    model = cifar_resnet18()
    assert _count(model) == 11_173_962
    reference = resnet18(num_classes=10)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes.pop("conv1.weight") == (64, 3, 3, 3)
    expected = {n: p.shape for n, p in reference.named_parameters() if n != "conv1.weight"}
    assert shapes == expected
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.stride == (1, 1)


@pytest.mark.parametrize(("width", "channels"), [(0.25, (16, 32, 64, 128)), (0.5, (32, 64, 128, 256))])
def test_width_scales_every_stage(width: float, channels: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = cifar_resnet18(num_classes=7, width=width).eval()
    assert model.conv1.out_channels == channels[0]
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    for stage, width_out in zip(stages, channels, strict=True):
        for block in stage:
            assert block.conv1.out_channels == block.conv2.out_channels == width_out
            assert block.bn2.num_features == width_out
    assert model.layer2[0].downsample[0].in_channels == channels[0]
    assert model.fc.in_features == channels[3] and model.fc.out_features == 7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # Conv parameters scale with width^2: a quarter-width model is ~16x smaller.
    assert _count(model) < _count(cifar_resnet18(num_classes=7)) * width**2 * 1.05


def test_bad_width() -> None:
    with pytest.raises(ValueError, match="`width` must be a number > 0"):
        cifar_resnet18(width=0)
    with pytest.raises(ValueError, match="leaves a stage without channels"):
        cifar_resnet18(width=0.001)
