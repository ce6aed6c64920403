"""Benchmark: every model a Lightning user brings, through every transformation of the library.

One model per torchvision classification family (ResNet, Wide ResNet, ResNeXt, MobileNet V2/V3, EfficientNet B0 and
V2-S, RegNet, DenseNet, ShuffleNetV2, SqueezeNet, MNASNet, GoogLeNet, VGG, AlexNet, ConvNeXt, ViT, Swin, MaxViT), with
10 classes, small inputs (32x32 where the architecture allows it) and random weights, plus a small
``nn.TransformerEncoder`` and an ``nn.LSTM`` text classifier (:mod:`tetra_lightning.models`), at batch 2. Each goes
through:

* ``svd``, ``tucker``, ``cp``, ``tt``: what ``TensorCompressionCallback(method=m, target_ratio=4)`` does at its
  stage: split fused attention/recurrent modules (:func:`~tetra_lightning.decompose.unfuse_`), allocate ranks
  across all layers for a whole model 4x smaller (:func:`~tetra_lightning.decompose.allocation.allocate_ranks`),
  factorize (:func:`~tetra_lightning.decompose.compress_`);
* ``auto``: the same with ``method="auto"`` over SVD, Tucker, CP and TT (every layer fitted with each, the lowest
  measured error kept);
* ``prune``: :func:`~tetra_lightning.prune.prune_` at 30% of the channels;
* ``int8``: :func:`~tetra_lightning.quantize.quantize_int8` (PT2E static int8, calibrated on the example).

Every (model, operation) runs in its own process, one at a time, with a time limit: the row records whether it
ran, the parameter ratio (int8: the bytes ratio), whether the output shape is kept, the seconds, the peak RSS of
the process (imports and the model included) and the layers left alone with their reasons. ``share`` is the
fraction of the model's parameters held by Linear/Conv/attention/RNN weights; the issue's target asks >= 3x
wherever it is >= 0.75.

Run ``python benchmarks/zoo.py`` (full, about an hour on two shared cores; writes ``benchmarks/results/zoo.json``
and ``zoo.md``) or ``--models resnet18 vit_b_16 --ops svd prune`` for a subset (prints only unless ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPS = ("svd", "tucker", "cp", "tt", "auto", "prune", "int8")
TARGET_RATIO = 4.0
PRUNING_RATIO = 0.3
BATCH = 2
TOKENS = 16


def _vision(factory: str, size: int = 32, **kwargs: Any) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        import torchvision

        model = getattr(torchvision.models, factory)(num_classes=10, **kwargs)
        return model, torch.randn(BATCH, 3, size, size)

    return build


def _text(factory: str) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        from tetra_lightning import models

        model = getattr(models, factory)(num_classes=10)
        return model, torch.randint(0, 1000, (BATCH, TOKENS))

    return build


#: model name -> builder of (model, example input). Inputs are the smallest each architecture accepts here.
MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "resnet18": _vision("resnet18"),
    "wide_resnet50_2": _vision("wide_resnet50_2"),
    "resnext50_32x4d": _vision("resnext50_32x4d"),
    "mobilenet_v2": _vision("mobilenet_v2"),
    "mobilenet_v3_small": _vision("mobilenet_v3_small"),
    "efficientnet_b0": _vision("efficientnet_b0"),
    "efficientnet_v2_s": _vision("efficientnet_v2_s"),
    "regnet_y_400mf": _vision("regnet_y_400mf"),
    "densenet121": _vision("densenet121"),
    "shufflenet_v2_x0_5": _vision("shufflenet_v2_x0_5"),
    "squeezenet1_0": _vision("squeezenet1_0", size=64),
    "mnasnet0_5": _vision("mnasnet0_5"),
    "googlenet": _vision("googlenet", aux_logits=False, init_weights=True),
    "vgg11": _vision("vgg11"),
    "alexnet": _vision("alexnet", size=64),
    "convnext_tiny": _vision("convnext_tiny"),
    "vit_b_16": _vision("vit_b_16", image_size=32),
    "swin_t": _vision("swin_t"),
    "maxvit_t": _vision("maxvit_t", size=224),  # partition size 7 at every stage needs 224x224
    "text_transformer": _text("TransformerTextClassifier"),
    "text_lstm": _text("LSTMTextClassifier"),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def weight_share(model: nn.Module) -> float:
    """Fraction of the parameters held by Linear/Conv/attention/RNN weights (biases and norms excluded)."""
    held = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            held += module.weight.numel()
        elif isinstance(module, nn.MultiheadAttention):
            held += sum(p.numel() for n, p in module.named_parameters(recurse=False) if "weight" in n)
        elif isinstance(module, nn.RNNBase):
            held += sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight"))
    return held / max(count(model), 1)


def _reasons(reasons: list[str]) -> dict[str, int]:
    summary: dict[str, int] = {}
    for reason in reasons:
        key = reason.split(":")[0][:90]
        summary[key] = summary.get(key, 0) + 1
    return dict(sorted(summary.items(), key=lambda item: -item[1]))


def run_compress(model: nn.Module, example: torch.Tensor, method: str) -> dict[str, Any]:
    from tetra_lightning.decompose import compress_, unfuse_
    from tetra_lightning.decompose.allocation import allocate_ranks, choose_method

    dense = count(model)
    history = unfuse_(model)
    plan = allocate_ranks(model, dense / TARGET_RATIO, method)
    modules = dict(model.named_modules())
    configs: dict[str, Any] = {}
    for name, option in plan.choices.items():
        if method == "auto":
            config, _ = choose_method(modules[name], option.params, ("svd", "tucker", "cp", "tt"))
            if config is not None:
                configs[name] = config
        else:
            configs[name] = option.config()
    history += compress_(model, configs) if configs else []
    skipped = [entry["skipped"] for entry in history if "skipped" in entry] + list(plan.skipped.values())
    methods: dict[str, int] = {}
    for entry in history:
        if "skipped" not in entry and "kind" not in entry:
            methods[entry["method"]] = methods.get(entry["method"], 0) + 1
    notes = [entry["note"] for entry in history if "note" in entry]
    return {
        "params_after": count(model),
        "ratio": dense / count(model),
        "layers": sum(methods.values()),
        "methods": methods,
        "split": [entry["kind"] for entry in history if entry.get("kind") and "skipped" not in entry],
        "skipped": _reasons(skipped),
        "weight_read_directly": len(notes),
        "reachable": plan.reachable,
    }


def run_prune(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    from tetra_lightning.prune import prune_

    dense = count(model)
    entry = prune_(model, example, pruning_ratio=PRUNING_RATIO)[0]
    return {
        "params_after": count(model),
        "ratio": dense / count(model),
        "layers": len({name for name, _, _ in entry["ops"]}),
        "skipped": _reasons(list(entry["unpruned"].values())),
    }


def run_int8(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    from tetra_lightning.quantize import quantize_int8

    dense_bytes = state_bytes(model)
    quantized = quantize_int8(model.eval(), example)
    return {"quantized": quantized, "bytes_ratio": dense_bytes / max(state_bytes(quantized), 1)}


def run_one(name: str, op: str) -> dict[str, Any]:
    """Builds ``name`` and applies ``op`` in this process; returns the row (never raises)."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, example = MODELS[name]()
    model.eval()  # the operations restore this mode; batch-norm statistics stay fixed
    with torch.no_grad():
        reference = model(example)
    row: dict[str, Any] = {
        "model": name,
        "op": op,
        "params_before": count(model),
        "share": round(weight_share(model), 4),
        "input": list(example.shape),
    }
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == "prune":
                row.update(run_prune(model, example))
            elif op == "int8":
                result = run_int8(model, example)
                model = result.pop("quantized")
                row.update(result)
            else:
                row.update(run_compress(model, example, op))
        row["seconds"] = round(time.perf_counter() - start, 2)
        with torch.no_grad():
            output = model(example)  # eval mode already (an exported int8 module refuses .eval())
        row["shape_kept"] = tuple(output.shape) == tuple(reference.shape)
        row["finite"] = bool(torch.isfinite(output).all())
        row["ran"] = True
    except Exception as error:  # noqa: BLE001 - a failing operation is a result of the benchmark
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["ran"] = False
        row["error"] = f"{type(error).__name__}: {error}"[:400]
        row["traceback"] = traceback.format_exc()[-1500:]
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for key in ("ratio", "bytes_ratio"):
        if key in row:
            row[key] = round(row[key], 3)
    return row


def run_isolated(name: str, op: str, timeout: float) -> dict[str, Any]:
    """``run_one`` in a fresh process (peak RSS per operation, a hung operation cannot stop the benchmark)."""
    command = [sys.executable, __file__, "--one", name, op]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "op": op, "ran": False, "error": f"timeout after {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 1)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": name, "op": op, "ran": False, "error": f"process exited with {done.returncode}: "
                f"{done.stderr.strip()[-300:]}", "seconds": round(time.perf_counter() - start, 1)}
    return json.loads(lines[-1])


def _cell(row: dict[str, Any]) -> str:
    if row.get("not_run"):
        return "NOT RUN"
    if not row.get("ran"):
        return "FAIL" if "timeout" not in row.get("error", "") else "TIMEOUT"
    ratio = row.get("ratio", row.get("bytes_ratio"))
    mark = "" if row.get("shape_kept") else " (shape!)"
    return f"{ratio:.2f}x {row['seconds']:.0f}s {row['peak_rss_mb'] / 1024:.1f}G{mark}"


def markdown(rows: list[dict[str, Any]], ops: tuple[str, ...]) -> str:
    models = list(dict.fromkeys(row["model"] for row in rows))
    by_key = {(row["model"], row["op"]): row for row in rows}
    merged = any(row.get("invocation", 0) for row in rows)
    lines = [
        "| model | params | share | " + " | ".join(ops) + " |",
        "|---|---:|---:|" + "---|" * len(ops),
    ]
    for model in models:
        first = next(row for row in rows if row["model"] == model)
        params = first.get("params_before")
        cells = [_cell(by_key[(model, op)]) if (model, op) in by_key else "" for op in ops]
        if merged:  # which invocation measured the cell (the header lists them)
            cells = [cell + (f" [{by_key[(model, op)].get('invocation', 0)}]" if cell else "")
                     for cell, op in zip(cells, ops, strict=True)]
        params_text = f"{params / 1e6:.2f}M" if params else "?"
        share = first.get("share")
        lines.append(f"| {model} | {params_text} | {share if share is not None else '?'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The misses against the issue's targets, one line each."""
    misses = []
    for row in rows:
        label = f"{row['model']}/{row['op']}"
        if not row.get("ran"):
            misses.append(f"{label}: did not run ({row.get('error', '')[:160]})")
            continue
        if not row.get("shape_kept"):
            misses.append(f"{label}: output shape changed")
        if row.get("seconds", 0) > 120:
            misses.append(f"{label}: {row['seconds']:.0f} s > 120 s")
        if row.get("peak_rss_mb", 0) > 4096:
            misses.append(f"{label}: peak RSS {row['peak_rss_mb']:.0f} MB > 4096 MB")
        if row["op"] in ("svd", "tucker", "cp", "tt", "auto") and row.get("share", 0) >= 0.75 and row["ratio"] < 3:
            misses.append(f"{label}: {row['ratio']:.2f}x < 3x with {row['share']:.0%} of the parameters in weights")
    return misses


def _not_run(name: str, op: str, budget: float) -> dict[str, Any]:
    return {"model": name, "op": op, "ran": False, "not_run": True,
            "error": f"not run: the benchmark's --budget-s {budget:.0f} s was spent before this operation"}


def load_earlier(out: Path) -> dict[str, Any]:
    """An earlier results file as ``{"invocations": [meta, ...], "rows": [...]}``, every row naming the invocation
    (index) that measured it; a file written without ``--merge`` is one invocation."""
    data = json.loads(out.read_text())
    meta = data["meta"]
    invocations = meta["invocations"] if "invocations" in meta else [meta]
    rows = [dict(row, invocation=row.get("invocation", 0)) for row in data["rows"]]
    return {"invocations": invocations, "rows": rows}


def merge_rows(earlier: dict[str, Any], rows: list[dict[str, Any]], invocation: int) -> list[dict[str, Any]]:
    """The earlier rows with the cells measured now (``rows``, tagged ``invocation``) in their place, in the
    order of ``MODELS`` and ``OPS``; a cell not run now (time budget) keeps its earlier measurement."""
    cells = {(row["model"], row["op"]): row for row in earlier["rows"]}
    for row in rows:
        if row.get("not_run") and (row["model"], row["op"]) in cells:
            continue
        cells[(row["model"], row["op"])] = dict(row, invocation=invocation)
    order = {name: i for i, name in enumerate(MODELS)}
    return sorted(cells.values(), key=lambda row: (order.get(row["model"], len(order)), OPS.index(row["op"])))


def write_merged(out: Path, earlier: dict[str, Any], rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Writes the merge of ``earlier`` and this invocation's ``rows`` (see :func:`merge_rows`)."""
    invocations = [*earlier["invocations"], meta]
    merged = merge_rows(earlier, rows, len(invocations) - 1)
    # every model's first row carries its size and weight share (a merged row of an op that failed may not)
    for model in {row["model"] for row in merged}:
        first = next(row for row in merged if row["model"] == model)
        if first.get("params_before") is None:
            known = next((row for row in merged if row["model"] == model and row.get("params_before")), None)
            if known is not None:
                first.update(params_before=known["params_before"], share=known.get("share"))
    combined = {
        "command": " ; ".join(f"[{i}] {inv['command']}" for i, inv in enumerate(invocations)),
        "python": meta["python"], "torch": meta["torch"], "cpu_count": meta["cpu_count"],
        "load_average": [inv.get("load_average") for inv in invocations],
        "wall_s": sum(inv.get("wall_s", 0.0) for inv in invocations),
    }
    write(out, merged, OPS, combined)
    data = json.loads(out.read_text())
    data["meta"] = dict(combined, invocations=invocations)
    out.write_text(json.dumps(data, indent=1))


def write(out: Path, rows: list[dict[str, Any]], ops: tuple[str, ...], meta: dict[str, Any]) -> None:
    """Writes the JSON and the markdown table of the rows so far (a stopped run keeps what it measured)."""
    misses = targets([row for row in rows if not row.get("not_run")])
    kept = [{key: value for key, value in row.items() if key != "traceback" or not row.get("ran")} for row in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": kept, "misses": misses}, indent=1))
    not_run = [f"{row['model']}/{row['op']}" for row in rows if row.get("not_run")]
    out.with_suffix(".md").write_text(
        "# Model zoo (benchmarks/zoo.py)\n\n"
        f"Ran: `{meta['command']}` ({meta['python']}, torch {meta['torch']}, {meta['cpu_count']} CPUs shared, load "
        f"average {meta['load_average']} at the start, {meta['wall_s']:.0f} s in all).\n\n"
        "Cell: params ratio (int8: bytes ratio), seconds, peak RSS of the process; NOT RUN: the run's time budget "
        "was spent first.\n\n" + markdown(rows, ops) + "\n\n## Misses against the targets\n\n"
        + ("\n".join(f"- {line}" for line in misses) or "none") + "\n"
        + (f"\n## Not run (time budget)\n\n{', '.join(not_run)}\n" if not_run else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before an operation is stopped")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall seconds for the whole run; operations not started by then are recorded as not run")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/zoo.json on a full run)")
    parser.add_argument("--merge", action="store_true",
                        help="update --out (default results/zoo.json): the cells measured now replace the same "
                             "(model, op) cells, the others are kept with the invocation that measured them")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "OP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)), flush=True)
        return
    full = args.models == list(MODELS) and args.ops == list(OPS)
    out = args.out or (RESULTS / "zoo.json" if full or args.merge else None)
    earlier = load_earlier(out) if args.merge and out is not None and out.exists() else None
    meta: dict[str, Any] = {
        "command": "python " + " ".join(["benchmarks/zoo.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "threads": 2,
        "batch": BATCH,
        "target_ratio": TARGET_RATIO,
        "pruning_ratio": PRUNING_RATIO,
        "timeout_s": args.timeout,
        "budget_s": args.budget_s,
    }
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name in args.models:
        for op in args.ops:
            spent = time.perf_counter() - start
            if args.budget_s is not None and spent >= args.budget_s:
                row = _not_run(name, op, args.budget_s)
            else:
                timeout = args.timeout if args.budget_s is None else min(args.timeout, args.budget_s - spent + 1)
                row = run_isolated(name, op, timeout)
            rows.append(row)
            status = _cell(row) if row.get("ran") else f"FAIL {row.get('error', '')[:120]}"
            print(f"{name:<20} {op:<7} {status}", flush=True)
            if out is not None:
                meta["wall_s"] = round(time.perf_counter() - start, 1)
                if earlier is None:
                    write(out, rows, tuple(args.ops), meta)
                else:
                    write_merged(out, earlier, rows, meta)
    if earlier is not None:
        rows = merge_rows(earlier, rows, len(earlier["invocations"]))
    table = markdown(rows, tuple(args.ops) if earlier is None else OPS)
    misses = targets([row for row in rows if not row.get("not_run")])
    print("\n" + table + "\n")
    print("Misses against the targets:" if misses else "No miss against the targets.")
    for line in misses:
        print("  " + line)
    if out is not None:
        print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
