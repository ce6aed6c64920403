"""One place that measures a model: parameters, bytes, MACs and latency.

The numbers are measured, never estimated: parameters and bytes are summed over the model's tensors, MACs come
from :class:`torch.utils.flop_counter.FlopCounterMode` (``MACs = FLOPs / 2``) on a real forward pass, and
latency is the median wall time of repeated forward passes on the model's own device.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from tetra_lightning.report import compare, count_parameters, model_report
    >>> dense = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> small = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> count_parameters(dense)
    4810
    >>> before = model_report(dense, torch.randn(4, 64), latency=False, print_table=False)
    >>> after = model_report(small, torch.randn(4, 64), latency=False, print_table=False)
    >>> before.macs, after.macs
    (18944, 6656)
    >>> round(compare(before, after)["params_ratio"], 3)
    2.755
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ModelReport",
    "compare",
    "count_bytes",
    "count_macs",
    "count_parameters",
    "measure_latency",
    "model_report",
    "tied_parameters",
]


@dataclass
class ModelReport:
    """What :func:`model_report` measured on one model for one example input.

    Attributes:
        params: number of parameters (each shared parameter counted once).
        trainable_params: number of parameters with ``requires_grad=True``.
        bytes: storage of parameters plus buffers, in bytes.
        bytes_by_dtype: ``bytes`` split by dtype name, e.g. ``{"float32": 220}``.
        macs: multiply-accumulates of one forward pass on the example input (whole batch); ``None`` when no
            example input was given.
        latency_ms: median forward time in milliseconds, or ``None`` when latency was not measured.
        latency_repeats: number of timed forward passes behind ``latency_ms`` (0 when not measured).
        device: device the model was measured on, e.g. ``"cpu"`` or ``"cuda:0"``.
        batch_size: leading dimension of the example input.
    """

    params: int
    trainable_params: int
    bytes: int
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    macs: int | None = 0
    latency_ms: float | None = None
    latency_repeats: int = 0
    device: str = "cpu"
    batch_size: int = 1

    @property
    def macs_per_sample(self) -> float | None:
        """MACs of one sample (``macs / batch_size``), ``None`` when MACs were not measured."""
        return None if self.macs is None else self.macs / max(self.batch_size, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict of every field.

        Returns:
            A new dict; ``bytes_by_dtype`` is copied.
        """
        out = asdict(self)
        out["bytes_by_dtype"] = dict(self.bytes_by_dtype)
        return out

    def __str__(self) -> str:
        rows = [
            ("params", f"{self.params:,}" + (f" ({self.trainable_params:,} trainable)"
                                             if self.trainable_params != self.params else "")),
            ("size", _human_bytes(self.bytes)),
        ]
        rows += [(f"  {dtype}", _human_bytes(n)) for dtype, n in sorted(self.bytes_by_dtype.items())]
        macs = "not measured" if self.macs is None else (
            f"{_human_count(self.macs)} (batch {self.batch_size}, {_human_count(self.macs / max(self.batch_size, 1))}"
            "/sample)"
        )
        rows += [
            ("MACs", macs),
            ("latency", "not measured" if self.latency_ms is None
             else f"{self.latency_ms:.3f} ms median of {self.latency_repeats} on {self.device}"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{'ModelReport':<{width}} | value", f"{'-' * width}-+-{'-' * 40}"]
        lines += [f"{name:<{width}} | {value}" for name, value in rows]
        return "\n".join(lines)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``; a parameter shared by several modules counts once.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.

    Returns:
        The number of scalar parameters.

    Example:
        >>> from torch import nn
        >>> count_parameters(nn.Linear(10, 5))
        55
        >>> layer = nn.Linear(10, 5)
        >>> layer.bias.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> count_parameters(layer, trainable_only=True)
        50
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of names under which distinct modules of ``model`` hold one and the same parameter (tied weights).

    A module registered under several names (an alias) is one module, so its parameters are not tied; a weight
    assigned to two modules (``decoder.weight = encoder.weight``, an output layer sharing the embedding's weight)
    is. Each tensor counts once in :func:`count_parameters`; a rewrite that replaces one of the modules alone
    would untie it.

    Args:
        model: any module.

    Returns:
        One list per shared parameter, its qualified names in ``named_modules`` order; empty when nothing is tied.

    Example:
        >>> from torch import nn
        >>> net = nn.ModuleDict({"enc": nn.Linear(4, 4), "dec": nn.Linear(4, 4)})
        >>> net["dec"].weight = net["enc"].weight
        >>> tied_parameters(net), count_parameters(net)
        ([['enc.weight', 'dec.weight']], 24)
    """
    holders: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(f"{module_name}.{name}" if module_name else name)
    return [names for names in holders.values() if len(names) > 1]


def count_bytes(model: nn.Module) -> tuple[int, dict[str, int]]:
    """Storage of the parameters and buffers of ``model``, in total and by dtype.

    Args:
        model: any module.

    Returns:
        ``(total_bytes, {dtype_name: bytes})``, e.g. ``(220, {"float32": 220})`` for ``nn.Linear(10, 5)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> count_bytes(nn.Linear(10, 5).to(torch.float16))
        (110, {'float16': 110})
    """
    by_dtype: dict[str, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    for tensor in tensors:
        name = str(tensor.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + tensor.numel() * tensor.element_size()
    return sum(by_dtype.values()), by_dtype


def count_macs(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``example_input``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention); element-wise
    ops, normalisation and activations are not counted. ``MACs = FLOPs // 2``. The model runs in eval mode under
    ``torch.no_grad()``; its training flag is restored afterwards.

    Args:
        model: the module to run.
        example_input: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs; tensors are moved
            to the model's device.

    Returns:
        MACs for the whole batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> count_macs(nn.Linear(10, 5), torch.randn(3, 10))  # in * out * batch
        150
    """
    device = _module_device(model)
    args, kwargs = _as_call(_to_device(example_input, device))
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


def measure_latency(model: nn.Module, example_input: Any, repeats: int = 20, warmup: int = 5) -> float:
    """Median wall time in milliseconds of a forward pass of ``model`` on its own device.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones in eval mode under ``torch.inference_mode()``;
    on CUDA every pass is bracketed by ``torch.cuda.synchronize`` so the time covers the kernels, not the launch.

    Args:
        model: the module to time (left on its device; the input is moved there).
        example_input: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
        repeats: number of timed passes, at least 1.
        warmup: number of untimed passes before timing, at least 0.

    Returns:
        The median time of one forward pass, in milliseconds.

    Raises:
        ValueError: if ``repeats < 1`` or ``warmup < 0``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> measure_latency(nn.Linear(10, 5), torch.randn(2, 10), repeats=3, warmup=1) > 0
        True
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an int >= 1, got {repeats!r}. Pass e.g. `repeats=20`.")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup` must be an int >= 0, got {warmup!r}. Pass e.g. `warmup=5`.")
    device = _module_device(model)
    args, kwargs = _as_call(_to_device(example_input, device))
    is_cuda = device.type == "cuda"
    times: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*args, **kwargs)
        for _ in range(repeats):
            if is_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(*args, **kwargs)
            if is_cuda:
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def model_report(
    model: nn.Module,
    example_input: Any = None,
    latency: bool = True,
    repeats: int = 20,
    warmup: int = 5,
    print_table: bool = True,
) -> ModelReport:
    """Measure parameters, bytes (by dtype), MACs and latency of ``model`` on ``example_input``.

    Args:
        model: the module to measure; it stays on its device and its training flag is restored.
        example_input: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs. Its first tensor's
            leading dimension is reported as the batch size. ``None``: only parameters and bytes are measured
            (``macs`` and ``latency_ms`` stay ``None``).
        latency: also time the forward pass (see :func:`measure_latency`).
        repeats: timed passes for the latency median.
        warmup: untimed passes before timing.
        print_table: print the report as a table.

    Returns:
        The :class:`ModelReport`.

    Raises:
        ValueError: if ``repeats``/``warmup`` are invalid (only checked when ``latency=True``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> report = model_report(nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 16, 16), print_table=False)
        >>> report.params, report.macs  # MACs = out * in * k * k * H * W * batch
        (224, 110592)
        >>> report.latency_ms > 0
        True
        >>> model_report(nn.Linear(4, 2), print_table=False).macs is None  # sizes only
        True
    """
    total_bytes, by_dtype = count_bytes(model)
    report = ModelReport(
        params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        bytes=total_bytes,
        bytes_by_dtype=by_dtype,
        macs=None if example_input is None else count_macs(model, example_input),
        device=str(_module_device(model)),
        batch_size=_batch_size(example_input),
    )
    if latency and example_input is not None:
        report.latency_ms = measure_latency(model, example_input, repeats=repeats, warmup=warmup)
        report.latency_repeats = repeats
    if print_table:
        print(report, flush=True)
    return report


def compare(before: ModelReport, after: ModelReport) -> dict[str, float | None]:
    """Ratios of two reports, oriented so that values above 1 mean ``after`` is smaller or faster.

    Args:
        before: report of the reference (e.g. dense) model.
        after: report of the changed (e.g. compressed) model.

    Returns:
        ``{"params_ratio": before.params / after.params, "bytes_ratio": ..., "macs_ratio": ...,
        "latency_speedup": before.latency_ms / after.latency_ms}``; a ratio is ``None`` when a side is missing
        or its denominator is 0.

    Example:
        >>> a = ModelReport(params=100, trainable_params=100, bytes=400, macs=1000, latency_ms=2.0)
        >>> b = ModelReport(params=25, trainable_params=25, bytes=100, macs=500, latency_ms=1.0)
        >>> compare(a, b)
        {'params_ratio': 4.0, 'bytes_ratio': 4.0, 'macs_ratio': 2.0, 'latency_speedup': 2.0}
    """
    return {
        "params_ratio": _ratio(before.params, after.params),
        "bytes_ratio": _ratio(before.bytes, after.bytes),
        "macs_ratio": _ratio(before.macs, after.macs),
        "latency_speedup": _ratio(before.latency_ms, after.latency_ms),
    }


# ------------------------------------------------------------------------------------------------ helpers


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def _module_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _as_call(example_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_input, Mapping):
        return (), dict(example_input)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    return (example_input,), {}


def _batch_size(example_input: Any) -> int:
    if isinstance(example_input, Tensor):
        return int(example_input.shape[0]) if example_input.dim() > 0 else 1
    if isinstance(example_input, Mapping):
        items: Sequence[Any] = list(example_input.values())
    elif isinstance(example_input, (tuple, list)):
        items = example_input
    else:
        return 1
    for item in items:
        if isinstance(item, Tensor):
            return _batch_size(item)
    return 1


class _eval_mode:
    """Put a module in eval mode and restore every submodule's own training flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(module, module.training) for module in self.model.modules()]
        try:
            self.model.eval()
        except NotImplementedError:
            # torch.export / PT2E graph modules refuse .eval(); they are already in inference form.
            self.flags = []
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _human_count(n: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.3f}{suffix}"
    return f"{n:.0f}"
