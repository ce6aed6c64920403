"""Reference models used by the demo, the benchmarks and the examples.

:func:`cifar_resnet18` is a plain ``nn.Module``; :class:`DigitsCNN` and :class:`CIFARResNet18` are small
LightningModules (cross-entropy, Nesterov SGD, cosine schedule) that the demo tunes and compresses and that the
examples train. :class:`TransformerTextClassifier` and :class:`LSTMTextClassifier` are the small text models of the
model-zoo benchmark (``benchmarks/zoo.py``): token ids in, class logits out, built only from standard layers
(``nn.Embedding``, ``nn.TransformerEncoder`` / ``nn.LSTM``, ``nn.Linear``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

__all__ = ["CIFARResNet18", "DigitsCNN", "LSTMTextClassifier", "TransformerTextClassifier", "cifar_resnet18"]


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


class _Classifier(LightningModule):
    """Cross-entropy training of ``self.net`` with SGD (Nesterov) and a cosine schedule over ``max_epochs``.

    Logs ``{train,val,test}_loss`` and ``{train,val,test}_acc`` per epoch. Subclasses build ``self.net`` (the one
    child with parameters, which :class:`~tetra_lightning.callbacks.QuantizationCallback` quantizes) and save
    ``lr`` and ``weight_decay`` as hyperparameters.
    """

    net: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", on_epoch=True, on_step=False)
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train", on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True,
            weight_decay=self.hparams.weight_decay,
        )
        max_epochs = self.trainer.max_epochs if self.trainer is not None and self.trainer.max_epochs else 10
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class DigitsCNN(_Classifier):
    """A small CNN for 8x8 digit images, trained with SGD and a cosine schedule.

    Args:
        width: channels of the first conv; later convs use 2x and 4x.
        lr: peak learning rate of SGD.
        num_classes: number of output classes.
        weight_decay: L2 penalty of SGD.

    Example:
        >>> model = DigitsCNN(width=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, lr: float = 0.05, num_classes: int = 10, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, num_classes),
        )


class CIFARResNet18(_Classifier):
    """The CIFAR-style ResNet-18 of :func:`tetra_lightning.models.cifar_resnet18`, optionally narrower.

    Args:
        width: channel multiplier (``0.25``: 16/32/64/128 channels, 0.70M parameters; ``1.0``: 11.17M).
        lr: peak learning rate of SGD.
        num_classes: number of output classes.
        weight_decay: L2 penalty of SGD.

    Example:
        >>> model = CIFARResNet18(width=0.0625)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: float = 0.25, lr: float = 0.1, num_classes: int = 10, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = cifar_resnet18(num_classes=num_classes, width=width)


class TransformerTextClassifier(nn.Module):
    """Token ids -> embedding + learned positions -> ``nn.TransformerEncoder`` -> mean over tokens -> ``nn.Linear``.

    The encoder layers are PyTorch's own (``nn.TransformerEncoderLayer``, batch first, pre-norm off), so their
    ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly, as it does in any user's model.

    Args:
        vocab_size: number of token ids.
        d_model: embedding and attention width.
        nhead: attention heads (must divide ``d_model``).
        num_layers: encoder layers.
        dim_feedforward: hidden width of each layer's MLP.
        num_classes: outputs of the classifier.
        max_len: longest sequence (size of the learned position table).
        dropout: dropout of the encoder layers.

    Example:
        >>> model = TransformerTextClassifier(vocab_size=100, d_model=32, nhead=4, num_layers=1).eval()
        >>> model(torch.randint(0, 100, (2, 12))).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        vocab_size: int = 1000,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 512,
        num_classes: int = 10,
        max_len: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embedding(tokens) + self.positions[:, : tokens.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


class LSTMTextClassifier(nn.Module):
    """Token ids -> embedding -> ``nn.LSTM`` (batch first) -> last layer's final hidden state -> ``nn.Linear``.

    Args:
        vocab_size: number of token ids.
        embedding_dim: width of the token embedding.
        hidden_size: hidden state of the LSTM.
        num_layers: stacked LSTM layers.
        num_classes: outputs of the classifier.
        bidirectional: run a second LSTM backwards (the classifier then reads both final states).

    Example:
        >>> model = LSTMTextClassifier(vocab_size=100, embedding_dim=16, hidden_size=32).eval()
        >>> model(torch.randint(0, 100, (2, 12))).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        vocab_size: int = 1000,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_classes: int = 10,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(
            embedding_dim, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=bidirectional
        )
        directions = 2 if bidirectional else 1
        self.head = nn.Linear(directions * hidden_size, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        directions = 2 if self.lstm.bidirectional else 1
        return self.head(torch.cat(list(hidden[-directions:]), dim=-1))
