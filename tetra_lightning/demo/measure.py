"""Measuring the demo's stages on the held-out test split: accuracy, sizes, MACs and latency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn

from tetra_lightning.demo.recipe import Recipe
from tetra_lightning.report import measure_latency, model_report

__all__ = ["measure_stages", "stage_ratios", "tuning_summary"]


def measure_stages(
    networks: Mapping[str, nn.Module],
    epochs: Mapping[str, int],
    datamodule: LightningDataModule,
    input_shape: tuple[int, ...],
    recipe: Recipe,
    compile_latency: bool = False,
) -> list[dict[str, Any]]:
    datamodule.trainer = None  # evaluate on the CPU, whatever device trained
    loader = datamodule.test_dataloader()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    for name, network in networks.items():
        network = network.cpu() if name != "int8" else network
        accuracy = _accuracy(network, loader, recipe.test_stride)
        # One thread: on a small shared CPU, multi-threaded timings of a tiny model measure the scheduler.
        torch.set_num_threads(1)
        try:
            measured = model_report(network, example, repeats=recipe.latency_repeats, print_table=False)
            compiled = _compiled_latency(network, example, recipe.latency_repeats) if compile_latency else None
        finally:
            torch.set_num_threads(threads)
        row = {"stage": name, "epoch": int(epochs[name]), "test_acc": accuracy, **measured.to_dict()}
        if compile_latency:
            row["latency_compiled_ms"] = compiled
        if name == "int8":
            # The converted graph stores the weights as int8 buffers: count the float source's parameters; its MACs
            # are those of the float-equivalent convolutions (run by int8 kernels once lowered).
            row["params"] = row["trainable_params"] = rows[-1]["params"]
            row["note"] = "params of the float source; eager runs q/dq around float kernels (int8 needs torch.compile)"
        rows.append(row)
    return rows


def _compiled_latency(network: nn.Module, example: Tensor, repeats: int) -> float | None:
    from torch._inductor import config as inductor_config

    torch._dynamo.reset()
    previous = inductor_config.freezing
    inductor_config.freezing = True  # folds the weights; lowers PT2E q/dq pairs to int8 oneDNN kernels on x86
    try:
        compiled = torch.compile(network, dynamic=False)
        with torch.inference_mode():
            compiled(example)  # compile outside the timed passes
        return measure_latency(compiled, example, repeats=repeats, warmup=2)
    except Exception as error:  # noqa: BLE001 - an optional column; the eager number stays
        print(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); no compiled latency")
        return None
    finally:
        inductor_config.freezing = previous
        torch._dynamo.reset()


def _accuracy(network: nn.Module, loader: Any, stride: int = 1) -> float:
    correct = total = seen = 0
    network.eval()
    with torch.no_grad():
        for x, y in loader:
            # every `stride`-th image of the whole split, wherever the batch boundaries fall
            keep = torch.arange(seen, seen + y.shape[0]) % stride == 0
            seen += y.shape[0]
            if keep.any():
                x, y = x.cpu()[keep], y.cpu()[keep]
                correct += int((network(x).argmax(1) == y).sum())
                total += int(y.numel())
    return correct / max(total, 1)


def stage_ratios(dense: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        return float(dense[key]) / float(row[key]) if dense.get(key) and row.get(key) else None

    return {
        "params_ratio": ratio("params"),
        "bytes_ratio": ratio("bytes"),
        "macs_ratio": ratio("macs"),
        "latency_speedup": ratio("latency_ms"),
        "accuracy_change_points": 100.0 * (row["test_acc"] - dense["test_acc"]),
    }


def tuning_summary(result: Any) -> dict[str, Any]:
    frame = result.trials
    keep = [c for c in frame.columns if c in ("number", "state", "value") or c.startswith("params_")]
    trials = frame[keep].copy()
    if "duration" in frame.columns:
        trials["duration_s"] = frame["duration"].dt.total_seconds()
    trials = trials.astype(object).where(trials.notna(), None)
    return {
        "best_params": dict(result.best_params),
        "best_value": float(result.best_value),
        "n_trials": len(frame),
        "n_complete": int(result.n_complete),
        "trials": trials.to_dict(orient="records"),
    }
