"""The demo's report as text: the stage table, the markdown file and the accuracy-vs-size plot."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["format_params", "format_table", "json_default", "markdown_report", "plot_accuracy_vs_size"]


def format_table(stages: Sequence[Mapping[str, Any]]) -> str:
    """The stage table as aligned text: accuracy, parameters, bytes, MACs and latency, with ratios to the first row.

    Args:
        stages: rows with ``stage``, ``epoch``, ``test_acc``, ``params``, ``bytes``, ``macs`` and ``latency_ms``.

    Returns:
        The table, one line per stage under a header.

    Example:
        >>> rows = [dict(stage="dense", epoch=4, test_acc=0.98, params=1000, bytes=4000, macs=8000, latency_ms=0.5),
        ...         dict(stage="int8", epoch=12, test_acc=0.97, params=1000, bytes=1000, macs=8000, latency_ms=1.0)]
        >>> print(format_table(rows).splitlines()[-1])
        int8            12     97.00%       1,000   1.0x      1,000   4.0x       8,000   1.0x      1.000   0.50x
    """
    compiled = any("latency_compiled_ms" in row for row in stages)
    header = (f"{'stage':<12}{'epoch':>6}{'test acc':>11}{'params':>12}{'x':>7}{'bytes':>11}{'x':>7}"
              f"{'MACs':>12}{'x':>7}{'CPU ms b1':>11}{'x':>8}" + (f"{'compiled ms':>13}" if compiled else ""))
    lines = [header, "-" * len(header)]
    dense = stages[0]
    for row in stages:
        def x(key: str, row: Mapping[str, Any] = row) -> str:
            return f"{dense[key] / row[key]:.1f}x" if row.get(key) else "-"

        latency = row.get("latency_ms")
        speed = f"{dense['latency_ms'] / latency:.2f}x" if latency and dense.get("latency_ms") else "-"
        lines.append(
            f"{row['stage']:<12}{row['epoch']:>6}{100 * row['test_acc']:>10.2f}%{row['params']:>12,}{x('params'):>7}"
            f"{row['bytes']:>11,}{x('bytes'):>7}{row['macs']:>12,}{x('macs'):>7}"
            f"{latency if latency is not None else math.nan:>11.3f}{speed:>8}"
            + (f"{_or_nan(row.get('latency_compiled_ms')):>13.3f}" if compiled else "")
        )
    return "\n".join(lines)


def plot_accuracy_vs_size(
    stages: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "accuracy vs size"
) -> Path:
    """Writes a PNG of test accuracy against model size (bytes, log scale), one labelled point per stage.

    Args:
        stages: rows with ``stage``, ``test_acc`` and ``bytes`` (the first row is the reference of the labels).
        path: the PNG to write (parents are created).
        title: the figure title.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> rows = [dict(stage="dense", test_acc=0.98, bytes=40000), dict(stage="int8", test_acc=0.97, bytes=9000)]
        >>> png = plot_accuracy_vs_size(rows, Path(tempfile.mkdtemp()) / "plot.png")
        >>> png.stat().st_size > 1000
        True
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5), constrained_layout=True)
    axes = figure.subplots()
    sizes = [row["bytes"] / 1024 for row in stages]
    accuracies = [100 * row["test_acc"] for row in stages]
    axes.plot(sizes, accuracies, "-", color="0.7", zorder=1)
    axes.scatter(sizes, accuracies, s=60, c=[f"C{i}" for i in range(len(stages))], zorder=2)
    for index, (row, size, accuracy) in enumerate(zip(stages, sizes, accuracies, strict=True)):
        smaller = stages[0]["bytes"] / row["bytes"]
        label = f"{row['stage']}" + (f" (epoch {row['epoch']})" if "epoch" in row else "")
        label += f"\n{accuracy:.1f}%, {size:,.0f} KiB" + (f" ({smaller:.1f}x smaller)" if index else "")
        # alternate above and below the points, so neighbouring labels do not overlap
        axes.annotate(label, (size, accuracy), textcoords="offset points", xytext=(-20, 12 if index % 2 else -30),
                      fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("model size (KiB, parameters + buffers)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    low, high = min(accuracies), max(accuracies)
    margin = max(1.5, 0.35 * (high - low))
    axes.set_ylim(max(0.0, low - margin), min(100.5, high + margin) if high < 100 else 100.8)
    axes.set_xlim(min(sizes) / 1.8, max(sizes) * 2.2)
    figure.savefig(path, dpi=110)
    return path


def markdown_report(report: Mapping[str, Any]) -> str:
    recipe = report["settings"]["recipe"]
    tuning = report["tuning"]
    stages = report["stages"]
    compiled = any("latency_compiled_ms" in row for row in stages)
    lines = [
        f"# tetra-lightning demo: {report['data']}{' (quick)' if report['quick'] else ''}",
        "",
        f"Tuned {tuning['n_trials']} trials with TetraOpt; best validation accuracy {tuning['best_value']:.4f} with "
        f"{format_params(tuning['best_params'])}. The best config trained {recipe['epochs']} epochs in one "
        f"`Trainer.fit`: factorized {recipe['target_ratio']:g}x at the start of epoch {recipe['compress_epoch']}, "
        f"{100 * recipe['pruning_ratio']:.0f}% of the channels pruned at the start of epoch "
        f"{recipe['prune_epoch']}, int8 (PT2E) at the end. `epoch` is when the stage was captured: dense and "
        "compressed just before the next rewrite (so dense had fewer epochs of training than the later stages), "
        "pruned and int8 at the end. Accuracy is on the held-out test split; latency is the median CPU forward at "
        "batch 1 on 1 thread (eager: int8 runs q/dq pairs around float kernels until torch.compile lowers them).",
        "",
        "| stage | epoch | test acc | params | x | bytes | x | MACs | x | CPU ms b1 | x |"
        + (" compiled ms b1 |" if compiled else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if compiled else ""),
    ]
    dense = stages[0]
    for row in stages:
        def x(key: str, row: Mapping[str, Any] = row) -> str:
            return f"{dense[key] / row[key]:.2f}x" if row.get(key) and dense.get(key) else "–"

        line = (
            f"| {row['stage']} | {row['epoch']} | {100 * row['test_acc']:.2f}% | {row['params']:,} | {x('params')} | "
            f"{row['bytes']:,} | {x('bytes')} | {row['macs']:,} | {x('macs')} | {_or_nan(row['latency_ms']):.3f} | "
            f"{x('latency_ms')} |"
        )
        if compiled:
            line += f" {_or_nan(row.get('latency_compiled_ms')):.3f} |"
        lines.append(line)
    seconds = report["seconds"]
    lines += ["", "Wall time: " + ", ".join(f"{key} {value:.0f} s" for key, value in seconds.items()), ""]
    return "\n".join(lines)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def json_default(value: Any) -> Any:
    if isinstance(value, (Tensor,)):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
