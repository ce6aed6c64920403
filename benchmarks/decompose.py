"""Benchmark: decompose a CIFAR ResNet-18 with SVD, Tucker-2, CP and TT at ~4.5x and ~14.5x compression.

For every method and target ratio the per-layer parameter fraction is chosen (by bisection on exact
parameter counts, without decomposing) so that the whole model lands near the target; then the model is
decomposed with :func:`tetra_lightning.decompose.compress_` (timed) and its CPU latency at batch 1 and 64 is
measured against the dense model (``torch.set_num_threads(2)``, warm-up, median of repeats).

Run ``python benchmarks/decompose.py`` (full, a few minutes; writes ``benchmarks/results/decompose.json``) or
``--quick`` (smoke run, ~1 minute, prints only). Prints a table. Weights are random (torchvision init): decomposition
errors of trained networks are much lower, timings and parameter counts are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

# libgomp's default busy-wait makes 2-thread inference 50x slower when the cores are shared with other jobs
# (a descheduled worker stalls every parallel region); passive waiting keeps the timings meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tetra_lightning.decompose import (  # noqa: E402
    CPConfig,
    DecompositionConfig,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    compress_,
    factorized_param_count,
    resolve_ranks,
)
from tetra_lightning.models import cifar_resnet18  # noqa: E402

CONFIGS: dict[str, type[DecompositionConfig]] = {
    "svd": SVDConfig,
    "tucker": TuckerConfig,
    "cp": CPConfig,
    "tt": TTConfig,
}


def count_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def predicted_ratio(model: nn.Module, method: str, fraction: float) -> float:
    """Whole-model compression ratio ``compress_`` would reach, from exact counts (nothing is decomposed)."""
    config = CONFIGS[method](rank=fraction)
    total = count_params(model)
    saved = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if method in ("tucker", "cp") and isinstance(module, nn.Linear):
            continue
        before = count_params(module)
        try:
            after = factorized_param_count(module, method, resolve_ranks(module, config), config)
        except (TypeError, ValueError):
            continue
        saved += max(0, before - after)
    return total / (total - saved)


def fraction_for_ratio(model: nn.Module, method: str, target: float) -> float:
    """Per-layer fraction whose whole-model ratio is closest to ``target`` (bisection in log space)."""
    low, high = 1e-4, 1.0
    for _ in range(30):
        middle = (low * high) ** 0.5
        if predicted_ratio(model, method, middle) > target:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda f: abs(predicted_ratio(model, method, f) - target))


def latency_ms(model: nn.Module, batch: int, repeats: int, warmup: int, budget_s: float = 20.0) -> float:
    """Median forward latency in milliseconds on CPU for a ``(batch, 3, 32, 32)`` input.

    Stops early (after at least 3 timed runs) once ``budget_s`` seconds were spent, so that slow variants
    (TT-conv at batch 64) do not dominate the benchmark's run time.
    """
    inputs = torch.randn(batch, 3, 32, 32)
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - began < budget_s):
            start = time.perf_counter()
            model(inputs)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4.5x only, few repeats")
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--ratios", nargs="+", type=float, default=None, help="default 4.5 14.5 (quick: 4.5)")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument(
        "--decompose-threads",
        type=int,
        default=1,
        help="threads while decomposing (1: on a shared CPU more threads made ALS much slower)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default: benchmarks/results/decompose.json for a full run, nothing for --quick)",
    )
    args = parser.parse_args()
    ratios = args.ratios or ([4.5] if args.quick else [4.5, 14.5])
    repeats = {1: 10 if args.quick else 50, 64: 3 if args.quick else 10}
    warmup = {1: 3 if args.quick else 10, 64: 1 if args.quick else 2}

    torch.manual_seed(0)
    dense = cifar_resnet18().eval()
    dense_params = count_params(dense)
    load_before = load_average()

    torch.set_num_threads(args.latency_threads)
    dense_latency = {batch: latency_ms(dense, batch, repeats[batch], warmup[batch]) for batch in (1, 64)}
    rows: list[dict[str, Any]] = [
        {
            "method": "dense",
            "target_ratio": 1.0,
            "fraction": 1.0,
            "params": dense_params,
            "ratio": 1.0,
            "decompose_s": 0.0,
            "mean_rel_error": 0.0,
            "layers": 0,
            "latency_ms_b1": dense_latency[1],
            "latency_ms_b64": dense_latency[64],
        }
    ]
    for target in ratios:
        for method in args.methods:
            model = cifar_resnet18()
            model.load_state_dict(dense.state_dict())
            model.eval()
            fraction = fraction_for_ratio(model, method, target)
            torch.set_num_threads(args.decompose_threads)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                history = compress_(model, CONFIGS[method](rank=fraction))
                seconds = time.perf_counter() - start
            replaced = [entry for entry in history if "skipped" not in entry]
            torch.set_num_threads(args.latency_threads)
            params = count_params(model)
            row = {
                "method": method,
                "target_ratio": target,
                "fraction": round(fraction, 5),
                "params": params,
                "ratio": dense_params / params,
                "decompose_s": seconds,
                "mean_rel_error": sum(entry["rel_error"] for entry in replaced) / max(len(replaced), 1),
                "layers": len(replaced),
                "warnings": [str(warning.message)[:200] for warning in caught],
                "latency_ms_b1": latency_ms(model, 1, repeats[1], warmup[1]),
                "latency_ms_b64": latency_ms(model, 64, repeats[64], warmup[64]),
            }
            rows.append(row)
            print(
                f"{method:>6} target {target:>5.1f}x: ratio {row['ratio']:.2f}x in {seconds:.2f} s, "
                f"b1 {row['latency_ms_b1']:.1f} ms, b64 {row['latency_ms_b64']:.0f} ms",
                flush=True,
            )

    header = (
        f"{'method':>7} {'target':>7} {'ratio':>7} {'params':>10} {'decomp s':>9} {'rel err':>8} "
        f"{'b1 ms':>8} {'b1 vs dense':>11} {'b64 ms':>8} {'b64 vs dense':>12}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(
            f"{row['method']:>7} {row['target_ratio']:>6.1f}x {row['ratio']:>6.2f}x {row['params']:>10,d} "
            f"{row['decompose_s']:>9.2f} {row['mean_rel_error']:>8.3f} {row['latency_ms_b1']:>8.2f} "
            f"{row['latency_ms_b1'] / dense_latency[1]:>10.2f}x {row['latency_ms_b64']:>8.1f} "
            f"{row['latency_ms_b64'] / dense_latency[64]:>11.2f}x"
        )

    result = {
        "benchmark": "decompose",
        "model": "cifar_resnet18 (torchvision resnet18, 3x3 stem, no maxpool, 10 classes, random init)",
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "latency_threads": args.latency_threads,
            "decompose_threads": args.decompose_threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "note": "CPU shared with other jobs while measuring: absolute times are noisy, compare ratios.",
        },
        "latency": {
            "input": "(batch, 3, 32, 32) float32",
            "repeats": repeats,
            "warmup": warmup,
            "stat": "median (at least 3 runs, stops after 20 s)",
        },
        "rows": rows,
    }
    output = args.output or (None if args.quick else Path(__file__).parent / "results" / "decompose.json")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
