"""Tiny real models for tests: a CIFAR-style ResNet with BasicBlocks and a small MLP.

Both are deterministic given ``seed``, small enough to decompose and run in milliseconds on one CPU core, and
built only from standard layers (``nn.Conv2d`` with and without bias, ``nn.BatchNorm2d``, ``nn.Linear``), so
every factorization, pruning and quantization path sees the layer types it meets in real networks: 3x3 convs
with stride 1 and 2, 1x1 downsample convs, a residual stream and a classifier head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """ResNet BasicBlock: ``conv3x3 -> BN -> ReLU -> conv3x3 -> BN`` plus a (1x1 conv + BN) shortcut if needed.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv and of the shortcut.

    Example:
        >>> import torch
        >>> block = BasicBlock(8, 16, stride=2)
        >>> block(torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class TinyResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, one stage of BasicBlocks per width, global pooling, linear head.

    With the defaults (widths 16/32/64, one block per stage) it has 7 3x3 convs, 2 1x1 downsample convs and
    one Linear, about 78k parameters, and maps ``(B, 3, H, W)`` images to ``(B, num_classes)`` logits.

    Args:
        num_classes: size of the output.
        widths: channels of each stage; stages after the first halve the resolution.
        blocks_per_stage: BasicBlocks per stage.
        seed: seed of the weight initialisation (BN statistics are randomised too, so eval-mode outputs
            exercise non-trivial BN layers).

    Example:
        >>> import torch
        >>> model = TinyResNet().eval()
        >>> model(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        torch.random.set_rng_state(generator_state)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class TinyMLP(nn.Module):
    """Two hidden layers with ReLU: ``in_features -> hidden -> hidden -> num_classes`` (biases everywhere).

    Args:
        in_features: input size.
        hidden: hidden width.
        num_classes: output size.
        seed: seed of the weight initialisation.

    Example:
        >>> import torch
        >>> TinyMLP()(torch.randn(4, 32)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int = 32, hidden: int = 64, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        torch.random.set_rng_state(generator_state)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def tiny_resnet(num_classes: int = 10, seed: int = 0) -> TinyResNet:
    """The default :class:`TinyResNet` in eval mode (deterministic outputs, BN uses running statistics)."""
    return TinyResNet(num_classes=num_classes, seed=seed).eval()


def tiny_mlp(seed: int = 0) -> TinyMLP:
    """The default :class:`TinyMLP` in eval mode."""
    return TinyMLP(seed=seed).eval()
