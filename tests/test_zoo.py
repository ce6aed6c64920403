"""A representative subset of the model zoo (``benchmarks/zoo.py``) at small sizes: one model of each family
(torchvision's ResNet, MobileNetV3, ShuffleNetV2, SqueezeNet, ConvNeXt, ViT and Swin with 10 classes and random
weights, a ``nn.TransformerEncoder`` and an ``nn.LSTM`` text classifier). Every compression at ~4x, ``prune_`` at
30% of the channels and int8 run and keep the output shape; the 4x compressions reach at least 3x wherever the
Linear/Conv/attention/RNN weights hold 75% of the parameters; every history replays on a fresh model."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tetra_lightning.checkpoint import replay_history
from tetra_lightning.decompose import compress_, unfuse_
from tetra_lightning.decompose.allocation import allocate_ranks, choose_method
from tetra_lightning.models import LSTMTextClassifier, TransformerTextClassifier
from tetra_lightning.prune import prune_

METHODS = ("svd", "tucker", "cp", "tt", "auto")


def _resnet() -> nn.Module:
    from torchvision.models import ResNet
    from torchvision.models.resnet import BasicBlock

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


def _mobilenet() -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(num_classes=10, width_mult=0.25)


def _shufflenet() -> nn.Module:
    from torchvision.models import ShuffleNetV2

    return ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 256], num_classes=10)


def _squeezenet() -> nn.Module:
    from torchvision.models import SqueezeNet

    return SqueezeNet("1_1", num_classes=10)


def _convnext() -> nn.Module:
    from torchvision.models import ConvNeXt
    from torchvision.models.convnext import CNBlockConfig

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def _swin() -> nn.Module:
    from torchvision.models import SwinTransformer

    return SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=10)


IMAGES_32 = torch.randn(2, 3, 32, 32)
IMAGES_16 = torch.randn(2, 3, 16, 16)
TOKENS = torch.randint(0, 100, (2, 12))
ZOO: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "resnet": (_resnet, IMAGES_32),
    "mobilenet_v3": (_mobilenet, IMAGES_32),
    "shufflenet_v2": (_shufflenet, IMAGES_16),
    "squeezenet": (_squeezenet, IMAGES_32),
    "convnext": (_convnext, IMAGES_32),
    "vit": (_vit, IMAGES_16),
    "swin": (_swin, IMAGES_16),
    "text_transformer": (
        lambda: TransformerTextClassifier(vocab_size=100, d_model=32, dim_feedforward=128), TOKENS
    ),
    "text_lstm": (lambda: LSTMTextClassifier(vocab_size=100, embedding_dim=32, hidden_size=64), TOKENS),
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_share(model: nn.Module) -> float:
    """Fraction of the parameters in Linear/Conv/attention/RNN weights (the issue's ">= 3x" applies from 0.75)."""
    held = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            held += module.weight.numel()
        elif isinstance(module, nn.MultiheadAttention):
            held += sum(p.numel() for n, p in module.named_parameters(recurse=False) if "weight" in n)
        elif isinstance(module, nn.RNNBase):
            held += sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight"))
    return held / _params(model)


def compress_four_times(model: nn.Module, method: str) -> list[dict[str, Any]]:
    """What TensorCompressionCallback(method=..., target_ratio=4) does at its stage (benchmarks/zoo.py too)."""
    dense = _params(model)
    history = unfuse_(model)
    plan = allocate_ranks(model, dense / 4, method)
    modules = dict(model.named_modules())
    configs = {}
    for name, option in plan.choices.items():
        if method == "auto":
            config, _ = choose_method(modules[name], option.params, ("svd", "tucker", "cp", "tt"))
        else:
            config = option.config()
        if config is not None:
            configs[name] = config
    return history + (compress_(model, configs) if configs else [])


def _build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    make, x = ZOO[name]
    torch.manual_seed(seed)
    return make().eval(), x


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ZOO))
def test_compression_at_four_times_keeps_the_output_and_replays(name: str, method: str) -> None:
    reference, x = _build(name)
    with torch.no_grad():
        shape = reference(x).shape
    model, _ = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = compress_four_times(model, method)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape and torch.isfinite(out).all()
    ratio = _params(reference) / _params(model)
    assert ratio <= 5.0  # a whole model 4x smaller; whole-number ranks overshoot a little (TT on small layers most)
    # The embeddings of the text models are not Linear/Conv/attention/RNN weights: those sit under 75%.
    assert ratio >= (3.0 if weight_share(reference) >= 0.75 else 2.0), ratio
    assert any(entry.get("method") == method or method == "auto" for entry in history if "spec" in entry)
    # The history (split attention/recurrent modules included) rebuilds the structure on a fresh model.
    fresh, _ = _build(name, seed=1)
    replay_history(fresh, json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), out)


#: Channel groups torch-pruning cannot follow keep their channels (listed with the reason in "unpruned"): the
#: channel shuffles of ShuffleNetV2 (the blocks' last convs), and Swin's MLP outputs, which reach the attention
#: projection its forward reads as a weight (F.linear(x, proj.weight)) and relative-position reshapes.
PARTLY_PRUNED = {"shufflenet_v2": 1.3, "swin": 1.15}


@pytest.mark.parametrize("name", list(ZOO))
def test_prune_thirty_percent_keeps_the_output_and_replays(name: str) -> None:
    reference, x = _build(name)
    with torch.no_grad():
        shape = reference(x).shape
    model, _ = _build(name)
    history = prune_(model, x, pruning_ratio=0.3)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == shape and torch.isfinite(out).all()
    # 30% of the channels of coupled layers: about half of their parameters (0.7 x 0.7) where nothing blocks it.
    ratio = _params(reference) / _params(model)
    assert ratio >= PARTLY_PRUNED.get(name, 1.8), ratio
    assert bool(history[0]["unpruned"]) == (name in PARTLY_PRUNED)
    fresh, _ = _build(name, seed=1)
    replay_history(fresh, json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), out)


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


# int8 (PT2E export, several seconds a model) on a conv classifier, an attention model and an LSTM; the other
# families run in benchmarks/zoo.py. PT2E's static int8 quantizes the Linear/Conv modules it sees: the ViT keeps
# the weights nn.MultiheadAttention uses functionally (in_proj_weight, out_proj.weight) and its position embedding
# in float, and the LSTM model its LSTM (no int8 LSTM kernels).
@pytest.mark.parametrize(("name", "min_bytes_ratio"), [("squeezenet", 3.0), ("vit", 1.4), ("text_lstm", 1.0)])
def test_int8_runs_and_keeps_the_output_shape(name: str, min_bytes_ratio: float) -> None:
    from tetra_lightning.quantize import quantize_int8

    model, x = _build(name)
    with torch.no_grad():
        reference = model(x)
    quantized = quantize_int8(model, x)
    with torch.no_grad():
        out = quantized(x)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert _state_bytes(model) / _state_bytes(quantized) >= min_bytes_ratio
