from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.boring import BoringConvNet
from tetra_lightning.quantize import export_model, quantize_, quantize_int8
from tetra_lightning.report import count_bytes


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def test_int8_ptq_is_close_four_times_smaller_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BoringConvNet(width=32).eval()
    x = torch.randn(16, 3, 8, 8)
    quantized = quantize_(model, x[:2], mode="int8", calibration=[(x, None)])
    reference = model(x)
    assert float((quantized(x) - reference).abs().max()) < 0.05 * float(reference.abs().max())
    weights = [t for t in quantized.state_dict().values() if t.dim() >= 2]
    assert weights and all(t.dtype == torch.int8 for t in weights)  # float copies removed
    assert 3.5 <= count_bytes(model)[0] / count_bytes(quantized)[0] <= 4.1
    assert 3.0 <= _state_bytes(model) / _state_bytes(quantized) <= 4.1

    path = export_model(quantized, x[:2], tmp_path / "int8.pt2")
    reloaded = torch.export.load(path).module()
    assert torch.equal(reloaded(x), quantized(x))
    assert reloaded(x[:5]).shape == (5, 4)  # dynamic batch


@pytest.mark.parametrize(("mode", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_casts_weights_and_keeps_float32_io(mode: str, dtype: torch.dtype) -> None:
    model = BoringConvNet().eval()
    x = torch.randn(4, 3, 8, 8)
    reference = model(x)
    half = quantize_(model, x, mode=mode)
    out = half(x)
    assert out.dtype == torch.float32 and half.head.weight.dtype == dtype
    assert torch.allclose(out, reference, atol=0.05)


def test_int8_weight_only_for_linear(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8)).eval()
    x = torch.randn(4, 64)
    reference = model(x)
    quantize_(model, x, mode="int8_weight_only")
    assert "Int8" in type(model[0].weight).__name__
    assert torch.allclose(model(x), reference, atol=0.02)


def test_unknown_mode() -> None:
    with pytest.raises(
        ValueError, match=r"`mode` must be one of 'int8', 'int8_weight_only', 'fp16', 'bf16', got 'int4'"
    ):
        quantize_(BoringConvNet(), torch.randn(1, 3, 8, 8), mode="int4")


def test_int8_is_a_new_module_and_the_old_mode_warns() -> None:
    torch.manual_seed(0)
    model = BoringConvNet().eval()
    x = torch.randn(8, 3, 8, 8)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    quantized = quantize_int8(model, x, calibration=[x])
    assert quantized is not model and type(model.head).__name__ == "Linear"
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # untouched
    with pytest.warns(DeprecationWarning, match=r"call quantize_int8\(model, example_inputs, calibration\)"):
        old = quantize_(model, x, mode="int8", calibration=[x])
    assert torch.equal(old(x), quantized(x))  # the old call still gives the same int8 model


@pytest.mark.parametrize("mode", ["int8_weight_only", "fp16", "bf16"])
def test_quantize_changes_the_model_in_place(mode: str) -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).train()
    x = torch.randn(4, 64)
    reference = model.eval()(x)
    model.train()
    assert quantize_(model, x, mode=mode) is model and not model.training
    assert torch.allclose(model(x), reference, atol=0.05)
    assert model[0].weight.dtype != torch.float32 or "Int8" in type(model[0].weight).__name__
