from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tetra_lightning.report import (
    ModelReport,
    compare,
    count_bytes,
    count_macs,
    count_parameters,
    measure_latency,
    model_report,
)


def _tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_count_parameters_linear_and_trainable_only() -> None:
    layer = nn.Linear(10, 5)
    assert count_parameters(layer) == 55
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 55
    assert count_parameters(layer, trainable_only=True) == 50


def test_shared_parameters_count_once() -> None:
    shared = nn.Linear(10, 5)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(5, 10), shared)
    assert count_parameters(model) == 55 + 60
    assert count_bytes(model)[0] == (55 + 60) * 4


def test_bytes_by_dtype_float16_and_buffers() -> None:
    assert count_bytes(nn.Linear(10, 5).to(torch.float16)) == (110, {"float16": 110})
    # BatchNorm2d(4): weight+bias+running_mean+running_var = 16 float32, num_batches_tracked = 1 int64.
    total, by_dtype = count_bytes(nn.BatchNorm2d(4))
    assert by_dtype == {"float32": 64, "int64": 8}
    assert total == 72
    mixed = nn.Sequential(nn.Linear(10, 5).to(torch.float16), nn.Linear(5, 2))
    report = model_report(mixed[1], torch.randn(1, 5), latency=False, print_table=False)
    assert report.bytes == 12 * 4
    total, by_dtype = count_bytes(mixed)
    assert by_dtype == {"float16": 110, "float32": 48}
    assert total == 158


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_linear_macs_are_in_times_out_times_batch(batch: int) -> None:
    assert count_macs(nn.Linear(10, 5), torch.randn(batch, 10)) == 10 * 5 * batch
    assert count_macs(nn.Linear(10, 5, bias=False), torch.randn(batch, 10)) == 10 * 5 * batch


@pytest.mark.parametrize(
    ("conv", "hw_in", "hw_out"),
    [
        (nn.Conv2d(3, 8, 3, padding=1), 16, 16),
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), 16, 8),
        (nn.Conv2d(8, 16, 1), 5, 5),
        (nn.Conv2d(8, 8, 3, padding=1, groups=4), 6, 6),
    ],
)
def test_conv2d_macs_formula(conv: nn.Conv2d, hw_in: int, hw_out: int) -> None:
    batch = 2
    x = torch.randn(batch, conv.in_channels, hw_in, hw_in)
    kh, kw = conv.kernel_size
    expected = conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * hw_out * hw_out * batch
    assert count_macs(conv, x) == expected


def test_model_report_on_tiny_cnn() -> None:
    model = _tiny_cnn()
    model.train()
    report = model_report(model, torch.randn(4, 3, 10, 10), repeats=3, warmup=1, print_table=False)
    assert isinstance(report, ModelReport)
    assert report.params == 8 * 3 * 9 + 16 + (8 * 4 + 4)
    assert report.trainable_params == report.params
    assert report.bytes_by_dtype == {"float32": (report.params + 16) * 4, "int64": 8}
    assert report.bytes == (report.params + 16) * 4 + 8
    assert report.macs == 8 * 3 * 9 * 10 * 10 * 4 + 8 * 4 * 4
    assert report.macs_per_sample == report.macs / 4
    assert report.batch_size == 4
    assert report.device == "cpu"
    assert report.latency_ms is not None and report.latency_ms > 0
    assert report.latency_repeats == 3
    # measuring must not leave the model in eval mode
    assert model.training and all(m.training for m in model.modules())


def test_eval_flags_of_submodules_are_restored() -> None:
    model = _tiny_cnn()
    model.train()
    model[1].eval()  # a frozen BatchNorm stays frozen
    count_macs(model, torch.randn(1, 3, 4, 4))
    assert model.training and not model[1].training


def test_tuple_and_dict_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoInputs()
    by_tuple = model_report(model, (torch.randn(5, 4), torch.randn(5, 6)), latency=False, print_table=False)
    by_dict = model_report(model, {"x": torch.randn(5, 4), "y": torch.randn(5, 6)}, latency=False,
                           print_table=False)
    assert by_tuple.macs == by_dict.macs == 5 * (4 * 3 + 6 * 3)
    assert by_tuple.batch_size == by_dict.batch_size == 5
    assert by_tuple.latency_ms is None and by_tuple.latency_repeats == 0


def test_to_dict_is_json_safe_and_str_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    report = model_report(nn.Linear(10, 5), torch.randn(2, 10), repeats=2, warmup=0, print_table=True)
    printed = capsys.readouterr().out
    assert "55" in printed and "MACs" in printed and "latency" in printed
    data = json.loads(json.dumps(report.to_dict()))
    assert data["params"] == 55
    assert data["bytes"] == 220
    assert data["bytes_by_dtype"] == {"float32": 220}
    assert data["macs"] == 100
    assert data["batch_size"] == 2
    assert str(report).splitlines()[0].startswith("ModelReport")


def test_compare_ratios_on_real_models() -> None:
    x = torch.randn(8, 100)
    dense = nn.Linear(100, 100, bias=False)
    low_rank = nn.Sequential(nn.Linear(100, 10, bias=False), nn.Linear(10, 100, bias=False))
    before = model_report(dense, x, latency=False, print_table=False)
    after = model_report(low_rank, x, latency=False, print_table=False)
    ratios = compare(before, after)
    assert ratios["params_ratio"] == pytest.approx(10_000 / 2_000)
    assert ratios["bytes_ratio"] == pytest.approx(5.0)
    assert ratios["macs_ratio"] == pytest.approx((100 * 100 * 8) / (2 * 100 * 10 * 8))
    assert ratios["latency_speedup"] is None  # latency was not measured


def test_compare_latency_and_zero_denominators() -> None:
    a = ModelReport(params=100, trainable_params=100, bytes=400, macs=1000, latency_ms=3.0)
    b = ModelReport(params=20, trainable_params=20, bytes=80, macs=0, latency_ms=1.5)
    assert compare(a, b) == {"params_ratio": 5.0, "bytes_ratio": 5.0, "macs_ratio": None, "latency_speedup": 2.0}
    assert compare(b, a)["params_ratio"] == pytest.approx(0.2)


@pytest.mark.parametrize(("kwargs", "match"), [({"repeats": 0}, "`repeats` must be"), ({"warmup": -1}, "`warmup`")])
def test_latency_argument_errors(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_report_on_cuda() -> None:
    model = _tiny_cnn().cuda()
    report = model_report(model, torch.randn(2, 3, 8, 8), repeats=3, warmup=1, print_table=False)
    assert report.device.startswith("cuda")
    assert report.macs == 8 * 3 * 9 * 64 * 2 + 8 * 4 * 2
    assert report.latency_ms is not None and report.latency_ms > 0
