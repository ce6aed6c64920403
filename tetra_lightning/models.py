"""Reference models used by the benchmarks and examples."""

from __future__ import annotations

from torch import nn


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 adapted to 32x32 CIFAR images.

    The stem is a 3x3 stride-1 conv (padding 1) instead of the 7x7 stride-2 conv, and the max-pool is removed,
    as is usual for CIFAR; everything else is ``torchvision.models.resnet18(num_classes=num_classes)``
    (11.17M parameters for 10 classes).

    Args:
        num_classes: size of the classifier output.

    Returns:
        The model (randomly initialised, train mode).

    Example:
        >>> import torch
        >>> from tetra_lightning.models import cifar_resnet18
        >>> model = cifar_resnet18().eval()
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
        >>> sum(p.numel() for p in model.parameters())
        11173962
    """
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
