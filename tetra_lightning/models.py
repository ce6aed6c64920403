"""Reference models used by the benchmarks and examples."""

from __future__ import annotations

from torch import nn


def cifar_resnet18(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """torchvision ResNet-18 adapted to 32x32 CIFAR images, optionally narrower.

    The stem is a 3x3 stride-1 conv (padding 1) instead of the 7x7 stride-2 conv, and the max-pool is removed,
    as is usual for CIFAR; everything else is ``torchvision.models.resnet18(num_classes=num_classes)``
    (11.17M parameters for 10 classes).

    With ``width != 1`` every channel count is scaled: the stem and the four stages get
    ``round(64 * width)``, ``round(128 * width)``, ... channels (``width=0.25``: 16/32/64/128, 0.70M parameters,
    16x fewer MACs), for quick experiments on a CPU. The block structure is the same, so the same layers are
    compressible.

    Args:
        num_classes: size of the classifier output.
        width: channel multiplier, > 0 (1.0: exactly torchvision's ResNet-18).

    Returns:
        The model (randomly initialised, train mode).

    Raises:
        ValueError: for ``width <= 0`` or a width that leaves a stage without channels.

    Example:
        >>> import torch
        >>> from tetra_lightning.models import cifar_resnet18
        >>> model = cifar_resnet18().eval()
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
        >>> sum(p.numel() for p in model.parameters())
        11173962
        >>> small = cifar_resnet18(width=0.25)
        >>> [small.layer1[0].conv1.out_channels, small.layer4[0].conv1.out_channels, small.fc.in_features]
        [16, 128, 128]
    """
    from torchvision.models import resnet18

    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(
            f"`width` must be a number > 0, got {width!r}. Pass e.g. width=0.25 for 16/32/64/128 channels."
        )
    model = resnet18(num_classes=num_classes)
    if width != 1.0:
        channels = [round(c * width) for c in (64, 128, 256, 512)]
        if min(channels) < 1:
            raise ValueError(
                f"`width={width}` leaves a stage without channels ({channels}); use width >= 1/128."
            )
        _rescale(model, dict(zip((64, 128, 256, 512), channels, strict=True)))
    model.conv1 = nn.Conv2d(3, round(64 * width), kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _rescale(model: nn.Module, mapping: dict[int, int]) -> None:
    """Rebuilds every conv / batch norm / the classifier of a ResNet with channel counts mapped by ``mapping``."""
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                mapping.get(module.in_channels, module.in_channels),
                mapping[module.out_channels],
                kernel_size=module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                bias=module.bias is not None,
            )
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(mapping[module.num_features])
        elif isinstance(module, nn.Linear):
            new = nn.Linear(mapping[module.in_features], module.out_features)
        else:
            continue
        setattr(parent, child, new)
    # torchvision initialises convs with kaiming_normal_(fan_out) and batch norms with (1, 0); redo it.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
