"""ResNet-18 on CIFAR-10: TensorCompressionCallback (~4.5x, ~15x) against dense, pruning, small dense and tltorch.

Every run trains the same CIFAR-style ResNet-18 from the same seed for the same number of epochs. Compressed runs
train dense until ``--start-epoch``, are rewritten at the start of that epoch, then fine-tune for the remaining
epochs under the same LR schedule. Run kinds (``--runs``, comma-separated):

- ``dense``: the uncompressed network;
- ``callback_<ratio>`` (or ``c<ratio>``): :class:`~tetra_lightning.callbacks.TensorCompressionCallback` at that
  whole-model parameter ratio, with the fine-tuning options below;
- ``pruning_<ratio>``: :class:`~tetra_lightning.callbacks.PruningCallback` (torch-pruning, L1 channel importance)
  to the parameter count the ``callback_<ratio>`` run reached (or ``<ratio>``), same epoch, same fine-tuning;
- ``small_dense_<ratio>``: a dense ResNet-18 narrow enough to have that many fewer parameters (the width is found
  by bisection), trained from scratch for all epochs with the dense schedule;
- ``small_dense_kd_<ratio>``: the same small network, distilled for all its epochs from the dense run's final
  network (``--kd-alpha``, 1 when 0, and ``--kd-temperature``; needs ``--reuse-dense`` and the dense run first): the
  baseline for runs fine-tuned with ``--kd-teacher final``, which learn from that network too;
- ``tltorch_tucker[_<ratio>]`` / ``tltorch_cp[_<ratio>]``: every conv but the 3-channel stem replaced by
  tensorly-torch ``FactorizedConv.from_conv(conv, rank=<fraction>, factorization=..., implementation="factorized")``
  with one rank fraction for all layers, found so that the whole model is as much smaller as the matching
  callback run (default ratio ``--baseline-ratio``), same epoch, same fine-tuning.

Fine-tuning after the rewrite (``callback_*``, and ``pruning_*`` / ``tltorch_*`` unless
``--no-finetune-baselines``): ``--kd-alpha`` adds knowledge distillation from the network as it was at the rewrite
(:class:`~tetra_lightning.callbacks.DistillationCallback`), ``--rewarm-epochs`` ramps the LR up again after every
rewrite (:class:`~tetra_lightning.callbacks.LRRewarmCallback`), ``--steps`` reaches the ratio in stages (MUSCO),
``--allocation fisher`` spends the rank budget where squared gradients say the loss is sensitive.

Measured per run: test accuracy (percent), parameters, bytes, MACs per image (``tetra_lightning.report``), ratios
against the dense model, training time per epoch before and after the rewrite (for runs resumed from the shared
dense prefix, "before" is the dense run's), the training throughput of the final network alone (timed steps on
random data, without the distillation teacher: the speed-up of Elhoushi et al.), CPU latency and, with CUDA, GPU
latency. Results go to ``<out-dir>/<protocol file>`` (``runs`` is a list of ``{"run": ..., "test_acc": percent,
"params_ratio": dense / run params, ...}``), rewritten after every run, and a markdown table is printed.

Before the runs the script prints its plan: the estimated time of every run from a short calibration (a few timed
training steps of each distinct network width; compressed and pruned epochs are estimated from the dense epoch
and the target ratio, plus a dense forward pass per step for the distillation teacher), re-estimated from the
measured dense epoch once the dense run is done. With ``--budget-s`` a run whose estimate does not fit in what
is left is skipped (recorded as ``"status": "skipped"``), so a run killed at its time limit leaves every
finished run in the JSON.

Protocols (from the repository root, with the package importable, e.g. ``PYTHONPATH=.``)::

    # --cpu-full: the full-data CPU protocol (benchmarks/results/resnet18_cifar10_cpu_full.json). All 50000
    # training and 10000 test images (../shared/data/cifar10/cifar10_jpeg_packed.npz, decoded once and cached in
    # ~/.cache/tetra_lightning), quarter-width ResNet-18 (--width 0.25: 16/32/64/128 channels, 0.70M params),
    # 15 epochs for every run, batch 256, SGD-Nesterov peak LR 0.2 after a 1-epoch warm-up, cosine to 0, label
    # smoothing 0.1, random crops and flips, 2 threads, NCHW; rewrite at the start of epoch 5 (10 epochs of
    # fine-tuning); the dense prefix (epochs 0-4) is trained once by the dense run and the compressed, pruned and
    # tltorch runs resume from it and distill from the dense run's final network (--kd-teacher final); the callback
    # and pruning runs reach their ratio in two stages, at the start of epochs 5 and 6 (--steps 2). Runs, most
    # important first: dense, callback_15, callback_4.5, pruning_15, small_dense_15, tltorch_tucker_15,
    # pruning_4.5, small_dense_4.5, then the small networks distilled from the same teacher, small_dense_kd_15 and
    # small_dense_kd_4.5. Measured on the idle 2-core development CPU (2026-12-06, ~62 s per dense epoch, rev
    # d0e0722): dense 16 min, callback_15 17 min and callback_4.5 16 min (with the teacher's forward pass),
    # pruning_15 6 min, small_dense_15 4 min, tltorch_tucker_15 14 min, pruning_4.5 7 min, small_dense_4.5 7 min,
    # small_dense_kd_15 8 min, small_dense_kd_4.5 11 min: 105 min in all; --budget-s 7800 (2 h 10 min) skips the
    # last ones when the machine is slower than that. Run it on an idle machine:
    python benchmarks/resnet18_cifar10.py --cpu-full
    # the same code path on 512 training / 500 test images, 3 epochs (two stages), every run kind: a few minutes
    python benchmarks/resnet18_cifar10.py --cpu-full --smoke --out-dir /tmp/smoke

    # --quick: the earlier CPU protocol, quarter-width ResNet-18 on the 5000-image subset, 10 epochs (rewrite at the
    # start of epoch 3), batch 128, all 1000 test images (resnet18_cifar10_quick.json)
    python benchmarks/resnet18_cifar10.py --quick
    # an ablation, resuming from the same dense state
    python benchmarks/resnet18_cifar10.py --quick --runs c15 --kd-alpha 1 --out-dir /tmp/kd

GPU protocol (``--gpu-full``: full-width ResNet-18, 11.17M parameters, all of CIFAR-10, 24 epochs, rewrite at the
start of epoch 8, batch 512, peak LR 0.4 after 2 warm-up epochs, cosine, bf16-mixed, channels_last, data resident
on the GPU; the callback runs use the fine-tuning options of the CPU protocol, distilling from the dense run's final
network, which the dense run leaves in ``.cache/dense`` beside its epoch-8 state), as two device commands of at most
~6 minutes each on one H200. Only the checkout travels to the device machine: copy the packed file into the
git-ignored ``data/`` folder first (``mkdir -p data && cp ../shared/data/cifar10/cifar10_jpeg_packed.npz data/``)
and download the wheels the machine lacks into the git-ignored ``.whl/`` (tensorly 0.10.0, tensorly-torch 0.5.0,
torch-pruning 1.6.1; ``pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl
tensorly==0.10.0 tensorly-torch==0.5.0 torch-pruning==1.6.1``), then name both in ``carry`` (``["data", ".whl"]``,
~63 MB with the checkout). The first command trains dense and saves its epoch-8 state in ``.cache/dense`` (an
ignored folder that stays on the machine while it is warm), the second resumes from it and reads the ratios the
first reached from ``$OUT``... which is emptied between commands, so the first command's JSON is also copied to
``.cache/``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 || exit; \
    python3 benchmarks/resnet18_cifar10.py --gpu-full --runs dense,callback_15,callback_4.5 --budget-s 330 \
        --out-dir $OUT && cp $OUT/resnet18_cifar10.json .cache/

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 || exit; \
    python3 benchmarks/resnet18_cifar10.py --gpu-full --runs pruning_15,tltorch_tucker_15,small_dense_15 \
        --budget-s 330 --out-dir $OUT --append .cache/resnet18_cifar10.json

(``timeout_s`` 420 for each; then copy ``$OUT/resnet18_cifar10.json`` to ``benchmarks/results/``). Estimate, not a
measurement: an H200 runs the full-width network at bf16 in ~3-5 s per epoch over 50000 images (small 4x4..32x32
maps, kernel launches), so the first command is ~10 s to import and decode + 24 dense epochs (~100 s) + 16
fine-tuning epochs of each callback run with the teacher's forward pass (~2 x 80 s) + two rewrites (the "auto"
method fits CP per layer: ~20-60 s each) + tests and latencies (~10 s per run): ~5-6 minutes; the second ~4
minutes. The budget guard skips what would not fit and each finished run is already in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from tetra_lightning.data import CIFAR10Arrays, CIFAR10DataModule, InMemoryBatchLoader, load_cifar10
from tetra_lightning.report import count_parameters, measure_latency, model_report

REPO = Path(__file__).resolve().parents[1]
QUICK_EPOCHS, QUICK_START = 10, 3
_RATIO = r"\d+(?:\.\d+)?"
RUN_PATTERN = re.compile(
    rf"^(?:(?P<dense>dense)|(?:c|callback_)(?P<c>{_RATIO})|(?:p|pruning_)(?P<p>{_RATIO})|small_dense(?P<kd>_kd)?_(?P<s>{_RATIO})"
    rf"|tltorch_(?P<fact>tucker|cp)_?(?P<t>{_RATIO})?)$"
)
RUN_HELP = "dense, callback_<ratio> (c<ratio>), pruning_<ratio>, small_dense_<ratio>, small_dense_kd_<ratio>, " \
           "tltorch_tucker[_<ratio>], " \
           "tltorch_cp[_<ratio>]"
CPU_FULL_RUNS = ("dense,callback_15,callback_4.5,pruning_15,small_dense_15,tltorch_tucker_15,pruning_4.5,"
                 "small_dense_4.5,small_dense_kd_15,small_dense_kd_4.5")
#: How --cpu-full and --gpu-full fine-tune after a rewrite: two stages, distillation from the dense run's final
#: network, half an epoch of LR re-warming after each stage.
FULL_FINETUNE: dict[str, Any] = {"kd_alpha": 1.0, "kd_teacher": "final", "rewarm_epochs": 0.5, "steps": 2}
#: Preset values; each applies only where the option was left at its default.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"width": 0.25, "threads": 2, "epochs": QUICK_EPOCHS, "start_epoch": QUICK_START, "batch_size": 128,
              "lr": 0.2, "warmup_epochs": 0.5, "cpu_latency_threads": 1, "val_every": 0, "tltorch_iters": 10,
              "latency_repeats": 3, "cpu_latency_repeats": 3, "cpu_latency_batches": "1,8", "cpu": True,
              "reuse_dense": True, "runs": "dense,c4.5,c15,tltorch_tucker,tltorch_cp"},
    "cpu_full": {"width": 0.25, "threads": 2, "epochs": 15, "start_epoch": 5, "batch_size": 256, "lr": 0.2,
                 "warmup_epochs": 1.0, "cpu_latency_threads": 1, "val_every": 0, "tltorch_iters": 10,
                 "latency_repeats": 3, "cpu_latency_repeats": 5, "cpu_latency_batches": "1,64", "cpu": True,
                 "reuse_dense": True, "channels_last": False, "runs": CPU_FULL_RUNS, "budget_s": 7800.0,
                 **FULL_FINETUNE},
    "gpu_full": {"epochs": 24, "start_epoch": 8, "reuse_dense": True, "dense_cache": ".cache/dense", **FULL_FINETUNE},
    # --cpu-full --smoke: every run kind through the same code on a few hundred images
    "smoke": {"epochs": 3, "start_epoch": 1, "batch_size": 64, "lr": 0.05, "limit_train_images": 512, "limit_test_images": 500,
              "tltorch_iters": 3, "latency_repeats": 1, "cpu_latency_repeats": 1, "cpu_latency_batches": "1",
              "throughput_steps": 2, "calibration_steps": 1, "budget_s": None,
              "runs": "dense,callback_15,callback_4.5,pruning_15,small_dense_15,tltorch_tucker_15,small_dense_kd_15"},
}


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=str, default=None,
                      help="cifar10_jpeg_packed.npz, cifar10_subset_uint8.npz or a folder holding one "
                           "(default: data/cifar10_jpeg_packed.npz when it exists, else $TETRA_DATA_DIR/cifar10 or "
                           "../shared/data/cifar10)")
    data.add_argument("--cifar-root", type=str, default=None,
                      help="torchvision root with cifar-10-batches-py (instead of --data)")
    data.add_argument("--cache-dir", type=str, default=None, help="cache for decoded JPEGs")
    data.add_argument("--limit-train-images", type=int, default=None,
                      help="train on a seeded random subset of this many training images (default: all)")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--runs", type=str, default="dense,c4.5,c15,tltorch_tucker,tltorch_cp",
                      help=f"comma-separated: {RUN_HELP}")
    runs.add_argument("--baseline-ratio", type=float, default=15.0,
                      help="ratio of tltorch runs without a number; the achieved ratio of the run "
                           "callback_<baseline-ratio> is used instead when it is in the results")
    runs.add_argument("--method", type=str, default="auto", help="TensorCompressionCallback method")
    runs.add_argument("--allocation", choices=("greedy", "capped", "fisher", "fisher_capped"), default="greedy",
                      help="TensorCompressionCallback rank allocation strategy")
    runs.add_argument("--max-rel-error", type=float, default=0.8, help="error cap of the capped allocations")
    runs.add_argument("--min-rank", type=int, default=8, help="minimum rank of the capped allocations")
    runs.add_argument("--steps", type=int, default=1, help="compression (and pruning) stages")
    runs.add_argument("--epochs-between-steps", type=int, default=1)
    runs.add_argument("--tltorch-iters", type=int, default=100,
                      help="n_iter_max of tensorly's tucker/parafac in the baseline")
    tune = parser.add_argument_group("fine-tuning after the rewrite")
    tune.add_argument("--kd-alpha", type=float, default=0.0,
                      help="weight of the distillation term from the network at the rewrite (0: off)")
    tune.add_argument("--kd-temperature", type=float, default=4.0)
    tune.add_argument("--kd-epochs", type=int, default=0,
                      help="distill only for this many epochs after the rewrite (0: until the end)")
    tune.add_argument("--kd-teacher", choices=("rewrite", "final"), default="rewrite",
                      help="rewrite: the network as it was at the rewrite (DistillationCallback's default); final: "
                           "the dense run's fully trained network (needs --reuse-dense and the dense run first)")
    tune.add_argument("--rewarm-epochs", type=float, default=0.0,
                      help="LR warm-up after every rewrite, in epochs (0: off)")
    tune.add_argument("--rewarm-start", type=float, default=0.1, help="LR fraction at the first step of a re-warm")
    tune.add_argument("--finetune-baselines", action=argparse.BooleanOptionalAction, default=True,
                      help="give the pruning and tltorch runs the same distillation and re-warming")
    train = parser.add_argument_group("training")
    train.add_argument("--width", type=float, default=1.0,
                       help="channel multiplier of the ResNet-18 (1: the 11.17M-parameter model; 0.25: 16/32/64/128)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    train.add_argument("--epochs", type=int, default=24)
    train.add_argument("--start-epoch", type=int, default=None, help="rewrite epoch (default: epochs // 3)")
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=0.4, help="peak learning rate")
    train.add_argument("--warmup-epochs", type=float, default=2.0)
    train.add_argument("--schedule", choices=("cosine", "onecycle"), default="cosine",
                       help="cosine: linear warm-up then cosine to 0; onecycle: linear up then linear down")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch (default: all)")
    train.add_argument("--val-every", type=int, default=1,
                       help="validate on the test set every N epochs (0: only the final test)")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels_last memory format (--cpu-full turns it off: NCHW is the safe choice there)")
    train.add_argument("--compile", action="store_true", help="torch.compile the network")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=None,
                       help="train on the CPU even when CUDA is available (--cpu-full and --quick set it; --no-cpu "
                            "runs their protocol on the GPU)")
    train.add_argument("--reuse-dense", action=argparse.BooleanOptionalAction, default=None,
                       help="the dense run saves its state at --start-epoch (and the squared gradients of the epoch "
                            "before, for the fisher allocations); the other runs resume from it instead of "
                            "re-training the identical first epochs (default: on with the protocol presets)")
    train.add_argument("--dense-cache", type=str, default=None,
                       help="folder of the --reuse-dense snapshots (default: <tmp>/tetra_resnet18_cifar10)")
    measure = parser.add_argument_group("measurement")
    measure.add_argument("--latency-repeats", type=int, default=20, help="timed passes per GPU latency")
    measure.add_argument("--cpu-latency-repeats", type=int, default=10, help="timed passes per CPU latency")
    measure.add_argument("--cpu-latency-batches", type=str, default="1,64")
    measure.add_argument("--cpu-latency-threads", type=int, default=0,
                         help="torch threads while timing on the CPU (0: torch's default)")
    measure.add_argument("--gpu-latency-batches", type=str, default="1,256")
    measure.add_argument("--throughput-steps", type=int, default=10,
                         help="timed training steps of each final network alone (0: skip)")
    measure.add_argument("--calibration-steps", type=int, default=3,
                         help="timed training steps per distinct width for the time plan (0: no calibration)")
    measure.add_argument("--limit-test-images", type=int, default=None,
                         help="evaluate the final test accuracy on a seeded random subset of N test images")
    measure.add_argument("--budget-s", type=float, default=None,
                         help="skip a run when the time spent plus its estimated time would exceed this")
    out = parser.add_argument_group("output")
    out.add_argument("--out-dir", type=str, default=str(REPO / "benchmarks" / "results"))
    out.add_argument("--append", nargs="?", const="", default=None, metavar="JSON",
                     help="keep the runs of an earlier results file (default: the output file); re-run ones "
                          "are replaced, and the baselines match the ratios that callback runs reached there")
    protocol = parser.add_argument_group("protocols")
    protocol.add_argument("--quick", action="store_true",
                          help="CPU protocol: quarter-width ResNet-18 on the 5000-image subset, all 1000 test images")
    protocol.add_argument("--cpu-full", action="store_true",
                          help="CPU protocol: quarter-width ResNet-18 on all 50000 / 10000 images, 15 epochs")
    protocol.add_argument("--gpu-full", action="store_true",
                          help="GPU protocol: full-width ResNet-18 on all of CIFAR-10, 24 epochs, rewrite at 8")
    protocol.add_argument("--smoke", action="store_true",
                          help="with --cpu-full: every run kind on 512 training / 500 test images for 3 epochs")
    args = parser.parse_args(argv)

    chosen = [name for name in ("quick", "cpu_full", "gpu_full") if getattr(args, name)]
    if len(chosen) > 1:
        parser.error(f"choose one protocol, got {', '.join('--' + c.replace('_', '-') for c in chosen)}")
    if args.smoke and not args.cpu_full:
        parser.error("--smoke is the smoke test of --cpu-full: pass --cpu-full --smoke")
    args.protocol = chosen[0] if chosen else "custom"
    presets = ([PRESETS["smoke"]] if args.smoke else []) + ([PRESETS[chosen[0]]] if chosen else [])
    preset_keys: set[str] = set()
    for preset in presets:  # the smoke values first: they win over the protocol's
        for key, value in preset.items():
            if key not in preset_keys and getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
                preset_keys.add(key)
    if args.reuse_dense is None:
        args.reuse_dense = False
    if args.cpu is None:
        args.cpu = False
    if args.start_epoch is None:
        args.start_epoch = max(1, args.epochs // 3)
    if not 0 < args.start_epoch < args.epochs:
        parser.error(f"--start-epoch must be in [1, --epochs), got {args.start_epoch} with --epochs {args.epochs}")
    last_stage = args.start_epoch + (args.steps - 1) * args.epochs_between_steps
    if last_stage >= args.epochs:
        parser.error(f"the last compression stage (epoch {last_stage}) must come before --epochs {args.epochs}")
    if (args.kd_alpha < 0 or args.kd_temperature <= 0 or args.kd_epochs < 0 or args.rewarm_epochs < 0
            or not 0 <= args.rewarm_start < 1):
        parser.error("--kd-alpha, --kd-epochs and --rewarm-epochs must be >= 0, --kd-temperature > 0, "
                     "--rewarm-start in [0, 1)")
    for option in ("cpu_latency_batches", "gpu_latency_batches"):
        try:
            setattr(args, option, [int(b) for b in getattr(args, option).split(",") if b.strip()])
        except ValueError:
            parser.error(f"--{option.replace('_', '-')} must be comma-separated ints, got {getattr(args, option)!r}")
    for name in args.runs.split(","):
        if not RUN_PATTERN.match(name.strip()):
            parser.error(f"unknown run {name!r}: use {RUN_HELP}")
    distilled = [n for n in args.runs.split(",") if n.strip().startswith("small_dense_kd_")]
    if (distilled or (args.kd_teacher == "final" and args.kd_alpha > 0)) and not args.reuse_dense:
        parser.error(f"{'run ' + distilled[0] if distilled else '--kd-teacher final'} distills from the dense run's "
                     "final network, which only --reuse-dense keeps: add --reuse-dense (and the dense run first)")
    return args


def output_name(args: argparse.Namespace) -> str:
    """The results file of the protocol."""
    return {
        "quick": "resnet18_cifar10_quick.json",
        "cpu_full": "resnet18_cifar10_cpu_full_smoke.json" if args.smoke else "resnet18_cifar10_cpu_full.json",
    }.get(args.protocol, "resnet18_cifar10.json")


def default_data_path(quick: bool) -> Path:
    local = REPO / "data" / "cifar10_jpeg_packed.npz"  # the device machine's copy (carried, git-ignored)
    if not quick and local.is_file():
        return local
    env = os.environ.get("TETRA_DATA_DIR")
    folder = Path(env) / "cifar10" if env else REPO.parent / "shared" / "data" / "cifar10"
    return folder / ("cifar10_subset_uint8.npz" if quick else "cifar10_jpeg_packed.npz")


@dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str  # "dense" | "tetra" | "pruning" | "small_dense" | "tltorch"
    ratio: float | None = None
    factorization: str | None = None
    target: float | None = None  # the ratio asked for in the run's name
    distilled: bool = False  # small_dense_kd_*: distilled from the dense run's final network from the first epoch


def canonical_name(name: str, args: argparse.Namespace) -> str:
    """The run's name in the results: ``c15`` -> ``callback_15``, ``tltorch_tucker`` -> ``tltorch_tucker_15``."""
    match = RUN_PATTERN.match(name)
    assert match is not None  # validated in parse_args
    if match.group("dense"):
        return "dense"
    for group, prefix in (("c", "callback"), ("p", "pruning"), ("s", "small_dense_kd" if match.group("kd") else
                                                                    "small_dense")):
        if match.group(group):
            return f"{prefix}_{_fmt_ratio(float(match.group(group)))}"
    ratio = float(match.group("t")) if match.group("t") else args.baseline_ratio
    return f"tltorch_{match.group('fact')}_{_fmt_ratio(ratio)}"


def parse_run(name: str, args: argparse.Namespace, results: dict[str, Any]) -> RunSpec:
    match = RUN_PATTERN.match(name)
    assert match is not None  # validated in parse_args
    canonical = canonical_name(name, args)
    if match.group("dense"):
        return RunSpec(canonical, "dense")
    if match.group("c"):
        return RunSpec(canonical, "tetra", ratio=float(match.group("c")), target=float(match.group("c")))
    target = float(match.group("p") or match.group("s") or match.group("t") or args.baseline_ratio)
    # the baselines match the whole-model compression the callback actually reached at that target, when known
    matching = results["runs"].get(f"callback_{_fmt_ratio(target)}", {})
    ratio = float(matching["params_ratio"]) if matching.get("params_ratio") else target
    if match.group("p"):
        return RunSpec(canonical, "pruning", ratio=ratio, target=target)
    if match.group("s"):
        return RunSpec(canonical, "small_dense", ratio=ratio, target=target, distilled=bool(match.group("kd")))
    return RunSpec(canonical, "tltorch", ratio=ratio, factorization=match.group("fact"), target=target)


def _fmt_ratio(value: float) -> str:
    return f"{value:g}"


@functools.cache
def small_dense_width(ratio: float, width: float) -> float:
    """The width whose ResNet-18 has the parameter count closest to ``dense(width) / ratio`` (bisection)."""
    from tetra_lightning.models import cifar_resnet18

    def params(w: float) -> int:
        return count_parameters(cifar_resnet18(num_classes=10, width=w))

    target = params(width) / ratio
    low, high = 1.0 / 64, width
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if params(mid) <= target else (low, mid)
    return min((low, high), key=lambda w: abs(params(w) - target))


# ------------------------------------------------------------------------------------------------ model


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Classifier(pl.LightningModule):
    """Cross-entropy training of ``net`` with SGD (Nesterov) and a per-step LR schedule on the global step.

    The schedule reads ``trainer.global_step`` rather than counting its own steps, so optimizers rebuilt after
    a structural rewrite continue the same schedule whichever way the rebuild treats scheduler state.
    """

    def __init__(self, net: nn.Module, args: argparse.Namespace, steps_per_epoch: int) -> None:
        super().__init__()
        self.net = net
        self.args = args
        self.total_steps = args.epochs * steps_per_epoch
        self.warmup_steps = max(1, round(args.warmup_epochs * steps_per_epoch))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self._compiled: Any = None
        self._loss_sum = torch.zeros(())
        self._loss_count = 0
        self.val_correct = torch.zeros((), dtype=torch.int64)
        self.val_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.args.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self.net)
            return self._compiled(x)
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.criterion(self(x), y)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach().float()
        self._loss_count += 1
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0

    def epoch_train_loss(self) -> float:
        return float(self._loss_sum) / max(1, self._loss_count)

    def on_validation_epoch_start(self) -> None:
        self.val_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.val_seen = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_correct += (self(x).argmax(1) == y).sum()
        self.val_seen += len(y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.args.lr, momentum=self.args.momentum,
                                    nesterov=True, weight_decay=self.args.weight_decay)
        total, warmup, schedule, trainer = self.total_steps, self.warmup_steps, self.args.schedule, self.trainer

        def factor(_: int) -> float:
            return lr_factor(trainer.global_step, total, warmup, schedule)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ------------------------------------------------------------------------------------------------ callbacks


class EpochRecorder:
    """Per-epoch wall time, train loss, validation accuracy and parameter count, printed as it goes.

    ``start`` must be the first callback and ``after_rewrite`` the last one, so the time between them at an
    epoch start is what the structural callbacks spent there.
    """

    def __init__(self, run: str, epochs: int, sync: bool) -> None:
        self.run = run
        self.epochs = epochs
        self.sync = sync
        self.rows: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._t_rewritten = 0.0
        self._t_train_end: float | None = None
        recorder = self

        class Start(Callback):
            def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                recorder._t0 = recorder._now()
                recorder._t_train_end = None

            def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                if trainer.state.fn == "fit" and recorder._t_train_end is None:
                    recorder._t_train_end = recorder._now()

            def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                recorder._end_epoch(trainer, pl_module)

        class AfterRewrite(Callback):
            def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                recorder._t_rewritten = recorder._now()

        self.start = Start()
        self.after_rewrite = AfterRewrite()

    def _now(self) -> float:
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _end_epoch(self, trainer: pl.Trainer, pl_module: Any) -> None:
        train_end = self._t_train_end if self._t_train_end is not None else self._now()
        row = {
            "epoch": trainer.current_epoch,
            "surgery_s": round(self._t_rewritten - self._t0, 4),
            "train_s": round(train_end - self._t_rewritten, 4),
            "train_loss": round(pl_module.epoch_train_loss(), 5),
            "params": count_parameters(pl_module.net),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if self._t_train_end is not None and pl_module.val_seen:
            row["val_acc"] = round(float(pl_module.val_correct) / pl_module.val_seen, 5)
            row["val_s"] = round(self._now() - self._t_train_end, 4)
        self.rows.append(row)
        val = f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else ""
        surgery = f" rewrite {row['surgery_s']:.1f}s" if row["surgery_s"] > 0.05 else ""
        print(f"[{self.run}] epoch {row['epoch'] + 1}/{self.epochs} loss {row['train_loss']:.4f}{val} "
              f"train {row['train_s']:.2f}s{surgery} params {row['params'] / 1e6:.3f}M lr {row['lr']:.4f}",
              flush=True)


class ChannelsLast(Callback):
    """Keep the network in channels_last after a rewrite (new factor layers start NCHW-contiguous).

    ``Module.to(memory_format=...)`` assigns ``param.data``, so optimizer references stay valid.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)


def dense_snapshot_path(args: argparse.Namespace, arrays: CIFAR10Arrays, cuda: bool) -> Path:
    """Where the dense state at ``--start-epoch`` lives, keyed by everything that shapes the first epochs."""
    import hashlib
    import tempfile

    keys = ("width", "seed", "epochs", "start_epoch", "batch_size", "lr", "warmup_epochs", "schedule", "momentum",
            "weight_decay", "label_smoothing", "limit_train_batches", "channels_last", "compile")
    state = {key: getattr(args, key) for key in keys}
    state.update(source=str(arrays.source), train=int(arrays.x_train.shape[0]), cuda=cuda)
    digest = hashlib.sha1(json.dumps(state, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(args.dense_cache) if args.dense_cache else Path(tempfile.gettempdir()) / "tetra_resnet18_cifar10"
    return folder / f"dense_e{args.start_epoch}_{digest}.ckpt"


def final_dense_path(snapshot: Path) -> Path:
    """Where the dense run keeps its final network weights (beside its snapshot at the rewrite)."""
    return snapshot.with_suffix(".final.pt")


class DenseSnapshot(Callback):
    """``--reuse-dense``: saves the dense run at the end of epoch ``start_epoch - 1`` (a Lightning checkpoint the
    other runs resume from) and the squared gradients of that epoch's steps (what ``allocation="fisher"`` of the
    callback would have accumulated itself)."""

    def __init__(self, start_epoch: int, path: Path) -> None:
        self.start_epoch = start_epoch
        self.path = path
        self.grad_sq: dict[str, torch.Tensor] = {}
        self.batches = 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 != self.start_epoch:
            return
        from tetra_lightning.decompose.allocation import compressible_layers

        with torch.no_grad():
            for name, layer in compressible_layers(pl_module, None, 1024)[0].items():
                total = sum(p.grad.detach().float().pow(2).sum() for p in layer.parameters() if p.grad is not None)
                self.grad_sq[name] = self.grad_sq.get(name, 0) + total
        self.batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 != self.start_epoch:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path)
        torch.save({"grad_sq": {k: float(v) for k, v in self.grad_sq.items()}, "batches": self.batches},
                   self.path.with_suffix(".grad.pt"))
        print(f"[dense] saved the state at epoch {self.start_epoch} to {self.path}", flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the fully trained dense network, for --kd-teacher final
        torch.save({k: v.detach().cpu() for k, v in pl_module.net.state_dict().items()}, final_dense_path(self.path))


class TltorchFactorize(Callback):
    """Baseline: replace every conv but the stem by a tensorly-torch ``FactorizedConv`` at ``start_epoch``.

    ``rewarm``: an :class:`~tetra_lightning.callbacks.LRRewarmCallback` to start after the rewrite (which records
    no structural history, so the callback would not notice it).

    One rank fraction is used for all layers (tltorch's ``rank=<float>``), found by bisection so that the whole
    network is ``target_ratio`` times smaller in parameters. Tucker keeps the two spatial modes at full rank
    (``fixed_rank_modes=(2, 3)``, i.e. Tucker-2); without it a float rank collapses the 3x3 modes to rank 1.
    """

    def __init__(self, factorization: str, target_ratio: float, start_epoch: int, n_iter_max: int,
                 rewarm: Any = None) -> None:
        self.factorization = factorization
        self.rewarm = rewarm  # an LRRewarmCallback: this rewrite records no history, so it is started by hand
        self.target_ratio = target_ratio
        self.start_epoch = start_epoch
        self.n_iter_max = n_iter_max
        self.info: dict[str, Any] = {}

    def _build(self, conv: nn.Conv2d, fraction: float, decompose: bool) -> nn.Module:
        import tltorch  # noqa: PLC0415 - sets TensorLy's backend globally at import: keep it inside the baseline

        kwargs: dict[str, Any] = {}
        if self.factorization == "tucker":
            kwargs["fixed_rank_modes"] = (2, 3)
        return tltorch.FactorizedConv.from_conv(
            conv, rank=fraction, factorization=self.factorization, implementation="factorized",
            decompose_weights=decompose, decomposition_kwargs={"n_iter_max": self.n_iter_max}, **kwargs,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.start_epoch or self.info:
            return
        from tetra_lightning.callbacks._surgery import rebuild_optimizers

        net = pl_module.net
        convs = {name: m for name, m in net.named_modules()
                 if isinstance(m, nn.Conv2d) and m.in_channels > 3 and m.groups == 1}
        dense_total = count_parameters(net)
        conv_total = sum(count_parameters(m) for m in convs.values())
        target_total = dense_total / self.target_ratio
        if target_total <= dense_total - conv_total:
            raise ValueError(f"target ratio {self.target_ratio} is unreachable by factorizing convs only")

        def within_target(fraction: float) -> bool:
            try:
                total = dense_total - conv_total + sum(
                    count_parameters(self._build(m, fraction, decompose=False)) for m in convs.values())
            except (ZeroDivisionError, ValueError):  # a rank rounded to 0: far below the target
                return True
            return total <= target_total

        # bisection on a log scale for the largest fraction whose model is within the target size
        low, high = 1e-3, 1.0
        for _ in range(30):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if within_target(mid) else (low, mid)
        fraction = low
        start = time.perf_counter()
        layers = []
        with torch.no_grad():
            for name, conv in convs.items():
                factorized = self._build(conv, fraction, decompose=True).to(conv.weight.device)
                reconstructed = factorized.weight.to_tensor().reshape(conv.weight.shape)
                rel_error = float((reconstructed - conv.weight).norm() / conv.weight.norm())
                parent_name, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent_name) if parent_name else net, child, factorized)
                layers.append({"name": name, "rank": _as_json(factorized.weight.rank),
                               "params_before": count_parameters(conv),
                               "params_after": count_parameters(factorized), "rel_error": round(rel_error, 5)})
        pl_module.to(pl_module.device)
        rebuild = rebuild_optimizers(trainer)
        if self.rewarm is not None:
            self.rewarm.start_warmup(trainer)
        self.info = {"factorization": self.factorization, "rank_fraction": fraction,
                     "target_ratio": self.target_ratio, "decompose_s": round(time.perf_counter() - start, 3),
                     "params_after": count_parameters(net),
                     "optimizer": {"removed": rebuild.removed, "added": rebuild.added, "carried": rebuild.carried},
                     "layers": layers}
        print(f"[tltorch_{self.factorization}] fraction {fraction:.5f}: {dense_total:,} -> "
              f"{self.info['params_after']:,} params ({dense_total / self.info['params_after']:.2f}x) in "
              f"{self.info['decompose_s']:.1f}s", flush=True)


def _as_json(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return int(value) if hasattr(value, "__int__") else value


# ------------------------------------------------------------------------------------------------ one run


def evaluate(net: nn.Module, datamodule: CIFAR10DataModule, device: torch.device,
             limit: int | None = None) -> tuple[float, int]:
    """Top-1 test accuracy of ``net`` (bf16 autocast on CUDA); ``limit`` picks a seeded random subset."""
    arrays = datamodule.arrays
    assert arrays is not None
    x_test, y_test = arrays.x_test, arrays.y_test
    if limit is not None and limit < len(y_test):
        # the test files are sorted by class: a prefix would hold one or two classes only
        keep = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))[:limit]
        x_test, y_test = x_test[keep], y_test[keep]
    loader = InMemoryBatchLoader(x_test.to(device), y_test.to(device), datamodule.eval_batch_size,
                                 transform=datamodule.normalize_batch)
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for x, y in loader:
            if datamodule.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += (net(x).argmax(1) == y).sum()
    net.train(was_training)
    return float(correct) / max(1, len(y_test)), len(y_test)


def train_throughput(net: nn.Module, args: argparse.Namespace, device: torch.device, steps: int,
                     warmup: int = 2) -> float:
    """Training images per second of ``net`` alone: timed SGD steps on random data (a copy; ``net`` is untouched)."""
    model = copy.deepcopy(net).to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=args.momentum, nesterov=True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return steps * args.batch_size / max(elapsed, 1e-9)


def measure(net: nn.Module, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    cpu_net = copy.deepcopy(net).float().cpu().eval()
    report = model_report(cpu_net, torch.randn(1, 3, 32, 32), latency=False, print_table=False)
    cpu_latency = {}
    threads = torch.get_num_threads()
    if args.cpu_latency_threads:
        # with a busy, shared CPU, several OpenMP threads wait on each other in scheduler quanta
        torch.set_num_threads(args.cpu_latency_threads)
    try:
        for batch in args.cpu_latency_batches:
            x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
            cpu_latency[f"b{batch}"] = round(measure_latency(cpu_net, x, repeats=args.cpu_latency_repeats,
                                                             warmup=2 if batch == 1 else 1), 4)
        latency_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "params": report.params, "bytes": report.bytes, "macs_per_image": report.macs,
        "cpu_latency_threads": latency_threads, "cpu_latency_ms": cpu_latency,
    }
    del cpu_net
    if cuda:
        gpu_net = copy.deepcopy(net).cuda().eval()
        try:
            gpu_net = gpu_net.to(torch.bfloat16)
            dtype = torch.bfloat16
            measure_latency(gpu_net, torch.randn(2, 3, 32, 32, device="cuda", dtype=dtype), repeats=1, warmup=0)
        except Exception:  # noqa: BLE001 - a layer without bf16 kernels: time it in fp32
            gpu_net, dtype = copy.deepcopy(net).cuda().float().eval(), torch.float32
        latency = {}
        for batch in args.gpu_latency_batches:
            x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
            latency[f"b{batch}"] = round(measure_latency(gpu_net, x, repeats=args.latency_repeats, warmup=10), 4)
        out["gpu_latency_ms"] = latency
        out["gpu_latency_dtype"] = str(dtype).removeprefix("torch.")
        del gpu_net
        torch.cuda.empty_cache()
    return out


def finetune_options(spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning a run gets after its rewrite (none for dense and small dense runs); a distilled small dense
    run learns from the dense run's final network for all its epochs."""
    if spec.distilled:
        return {"kd_alpha": args.kd_alpha or 1.0, "kd_temperature": args.kd_temperature, "kd_epochs": 0,
                "kd_teacher": "final", "kd_start_epoch": 0, "rewarm_epochs": 0.0}
    if spec.kind in ("dense", "small_dense") or (spec.kind != "tetra" and not args.finetune_baselines):
        return {"kd_alpha": 0.0, "rewarm_epochs": 0.0}
    return {"kd_alpha": args.kd_alpha, "kd_temperature": args.kd_temperature, "kd_epochs": args.kd_epochs,
            "kd_teacher": args.kd_teacher, "rewarm_epochs": args.rewarm_epochs, "rewarm_start": args.rewarm_start}


def run_one(spec: RunSpec, args: argparse.Namespace, arrays: CIFAR10Arrays, dense_ref: dict[str, Any]) -> dict[str, Any]:
    from tetra_lightning.callbacks import DistillationCallback, LRRewarmCallback
    from tetra_lightning.models import cifar_resnet18

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    pl.seed_everything(args.seed, verbose=False)
    width = small_dense_width(spec.ratio, args.width) if spec.kind == "small_dense" else args.width
    net = cifar_resnet18(num_classes=10, width=width)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    datamodule = CIFAR10DataModule(arrays, batch_size=args.batch_size, eval_batch_size=1024,
                                   channels_last=args.channels_last, seed=args.seed)
    steps_per_epoch = arrays.x_train.shape[0] // args.batch_size
    if args.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, args.limit_train_batches)
    module = Classifier(net, args, steps_per_epoch)

    recorder = EpochRecorder(spec.name, args.epochs, sync=cuda)
    structural: list[Callback] = []
    finetune = finetune_options(spec, args)
    rewarm = None
    if finetune["rewarm_epochs"] > 0:
        rewarm = LRRewarmCallback(steps=max(1, round(finetune["rewarm_epochs"] * steps_per_epoch)),
                                  start_factor=finetune["rewarm_start"])
    snapshot = dense_snapshot_path(args, arrays, cuda) if args.reuse_dense else None
    resumable = spec.kind in ("tetra", "pruning", "tltorch")
    resume = snapshot if snapshot is not None and resumable and snapshot.is_file() else None
    example = torch.randn(1, 3, 32, 32)
    if spec.kind == "tetra":
        from tetra_lightning.callbacks import TensorCompressionCallback

        structural.append(TensorCompressionCallback(
            method=args.method, target_ratio=spec.ratio, start_epoch=args.start_epoch, steps=args.steps,
            epochs_between_steps=args.epochs_between_steps, verbose=False, allocation=args.allocation,
            max_rel_error=args.max_rel_error, min_rank=args.min_rank, example_input=example,
        ))
        if resume is not None and args.allocation.startswith("fisher"):
            grads = torch.load(resume.with_suffix(".grad.pt"), weights_only=True)
            structural[0]._grad_sq = {k: torch.tensor(v) for k, v in grads["grad_sq"].items()}
            structural[0]._grad_batches = grads["batches"]
    elif spec.kind == "pruning":
        from tetra_lightning.callbacks import PruningCallback

        structural.append(PruningCallback(
            target_params_ratio=spec.ratio, start_epoch=args.start_epoch, steps=args.steps,
            epochs_between_steps=args.epochs_between_steps, importance="l1", max_pruning_ratio=0.95,
            example_input=example, verbose=False,
        ))
    elif spec.kind == "tltorch":
        structural.append(TltorchFactorize(spec.factorization, spec.ratio, args.start_epoch, args.tltorch_iters,
                                           rewarm=rewarm))
    distillation = None
    if finetune["kd_alpha"] > 0:
        kd_start = finetune.get("kd_start_epoch", args.start_epoch)
        stop = kd_start + finetune["kd_epochs"] if finetune["kd_epochs"] else None
        teacher = None
        if finetune["kd_teacher"] == "final":
            final = final_dense_path(snapshot) if snapshot is not None else None
            if final is None or not final.is_file():
                raise FileNotFoundError(f"{spec.name} distills from the dense run's final weights ({final}), which "
                                        "are not there yet: run dense first in this or an earlier invocation with "
                                        "the same training options and --reuse-dense")
            teacher = cifar_resnet18(num_classes=10, width=args.width)
            teacher.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
            if args.channels_last:
                teacher = teacher.to(memory_format=torch.channels_last)
        distillation = DistillationCallback(alpha=finetune["kd_alpha"], temperature=finetune["kd_temperature"],
                                            start_epoch=kd_start, stop_epoch=stop, teacher=teacher,
                                            verbose=False)
    callbacks = [recorder.start, *structural]
    if args.channels_last:
        callbacks.append(ChannelsLast())
    callbacks += [c for c in (distillation, rewarm) if c is not None]
    callbacks.append(recorder.after_rewrite)
    if snapshot is not None and spec.kind == "dense":
        callbacks.append(DenseSnapshot(args.start_epoch, snapshot))

    validate = args.val_every > 0
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="gpu" if cuda else "cpu", devices=1,
        precision="bf16-mixed" if cuda else "32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, benchmark=cuda,
        limit_train_batches=args.limit_train_batches or 1.0, limit_val_batches=1.0 if validate else 0,
        check_val_every_n_epoch=max(1, args.val_every), callbacks=callbacks,
    )
    start = time.perf_counter()
    if resume is not None:
        print(f"[{spec.name}] resuming from the dense state at epoch {args.start_epoch}: {resume}", flush=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    fit_s = time.perf_counter() - start
    test_acc, test_images = evaluate(module.net, datamodule, device, args.limit_test_images)
    print(f"[{spec.name}] test accuracy {100 * test_acc:.2f}% after {fit_s:.1f}s of training", flush=True)

    result: dict[str, Any] = {"run": spec.name, "status": "ok", "kind": spec.kind, "target_ratio": spec.target,
                              "test_acc": round(100 * test_acc, 3), "test_images": test_images,
                              "fit_s": round(fit_s, 2), "width": round(width, 5), "finetune": finetune,
                              "steps": args.steps if spec.kind in ("tetra", "pruning") else None}
    result.update(measure(module.net, args, cuda))
    for key in ("params", "bytes"):
        result[f"{key}_ratio"] = round(dense_ref[key] / result[key], 4)
    result["macs_ratio"] = round(dense_ref["macs_per_image"] / result["macs_per_image"], 4)
    if args.throughput_steps:
        result["train_images_per_s"] = round(train_throughput(module.net, args, device, args.throughput_steps), 1)
    rows = recorder.rows
    rewrite = args.start_epoch if resumable else None
    # epoch 0 carries one-off costs (cuDNN autotuning, allocator warm-up): use it only when it is all there is
    before_epochs = args.start_epoch if resumable else args.epochs
    before = [r["train_s"] for r in rows if 0 < r["epoch"] < before_epochs] or [
        r["train_s"] for r in rows if r["epoch"] == 0]
    # the rewrite epoch's first steps warm new kernels up: use it only when it is the only epoch after the rewrite
    after = ([r["train_s"] for r in rows if r["epoch"] > args.start_epoch]
             or [r["train_s"] for r in rows if r["epoch"] == args.start_epoch]) if resumable else []
    result["epoch_time_before_s"] = round(statistics.median(before), 3) if before else None
    result["epoch_time_after_s"] = round(statistics.median(after), 3) if after else None
    result["first_epoch_s"] = rows[0]["train_s"] if rows else None
    result["rewrite_epoch"] = rewrite
    result["rewrite_s"] = next((r["surgery_s"] for r in rows if r["epoch"] == rewrite), None)
    result["resumed_from_dense"] = str(resume) if resume is not None else None
    if distillation is not None and distillation.teacher is not None:
        teacher_net = getattr(distillation.teacher, "net", distillation.teacher)  # a snapshot is the Classifier
        teacher_acc, _ = evaluate(teacher_net, datamodule, device, args.limit_test_images)
        result["teacher_test_acc"] = round(100 * teacher_acc, 3)
        result["distilled_steps"] = distillation.steps_distilled
    if rewarm is not None:
        result["rewarm_steps"] = rewarm.steps
        result["rewarms"] = rewarm.rewarms
    result["epochs"] = rows
    if spec.kind in ("tetra", "pruning"):
        callback = structural[0]
        result["callback_summary"] = _jsonable(getattr(callback, "summary", None))
        result["layer_table"] = _jsonable(getattr(callback, "layer_table", None) or [])
    elif spec.kind == "tltorch":
        result["tltorch"] = structural[0].info
    del trainer, module, distillation
    if cuda:
        torch.cuda.empty_cache()
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# ------------------------------------------------------------------------------------------------ time plan


@dataclass
class TimePlan:
    """Estimated seconds per run: calibrated training-step times, scaled per run kind.

    A compressed, pruned or factorized network's epoch is estimated as the dense epoch times ``ratio ** -0.3``
    (callback, tltorch: measured MACs fall slower than parameters) or ``ratio ** -0.6`` (pruning: channel pruning
    cuts MACs about as much as parameters), plus a third of a dense epoch (one forward pass) per distilled epoch; a small dense network's epoch is calibrated on its own. Rough by design: it decides what fits in
    ``--budget-s``, and is re-estimated from the measured dense epoch once the dense run is done.
    """

    dense_epoch_s: float
    width_epoch_s: dict[float, float]
    eval_s: float
    measured: bool = False

    def epoch_s(self, spec: RunSpec, args: argparse.Namespace) -> float:
        if spec.kind == "dense":
            return self.dense_epoch_s
        if spec.kind == "small_dense":
            # the nearest calibrated width, scaled by the width squared (the ratio may have moved to the one the
            # matching callback run reached since the calibration)
            width = small_dense_width(spec.ratio, args.width)
            nearest = min(self.width_epoch_s, key=lambda w: abs(w - width))
            return self.width_epoch_s[nearest] * (width / nearest) ** 2
        exponent = 0.6 if spec.kind == "pruning" else 0.3
        epoch = self.dense_epoch_s * (spec.ratio or 1.0) ** -exponent
        return epoch

    def teacher_s(self, spec: RunSpec, args: argparse.Namespace) -> float:
        """The distillation teacher's forward passes (a third of a dense epoch each distilled epoch)."""
        options = finetune_options(spec, args)
        if options["kd_alpha"] <= 0:
            return 0.0
        epochs = args.epochs - options.get("kd_start_epoch", args.start_epoch)
        return min(epochs, options.get("kd_epochs") or epochs) * self.dense_epoch_s / 3

    def run_s(self, spec: RunSpec, args: argparse.Namespace, prefix_shared: bool) -> float:
        """Estimated seconds of ``spec``; ``prefix_shared``: it resumes from the dense state at the rewrite."""
        if spec.kind in ("dense", "small_dense"):
            return args.epochs * self.epoch_s(spec, args) + self.teacher_s(spec, args) + self.eval_s
        prefix = 0.0 if prefix_shared else args.start_epoch * self.dense_epoch_s
        fine_tune = (args.epochs - args.start_epoch) * self.epoch_s(spec, args) + self.teacher_s(spec, args)
        return prefix + fine_tune + self.eval_s


def calibrate(args: argparse.Namespace, specs: list[RunSpec], train_images: int, test_images: int) -> TimePlan:
    """Times ``--calibration-steps`` training steps of the dense network and of each small dense width."""
    from tetra_lightning.models import cifar_resnet18

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    steps_per_epoch = train_images // args.batch_size
    if args.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, args.limit_train_batches)
    widths = [args.width] + sorted({small_dense_width(s.ratio, args.width) for s in specs if s.kind == "small_dense"})
    width_epoch_s: dict[float, float] = {}
    for width in widths:
        if args.calibration_steps:
            net = cifar_resnet18(num_classes=10, width=width)
            images_per_s = train_throughput(net, args, device, args.calibration_steps, warmup=1)
        else:
            images_per_s = 380.0 * (0.25 / width) ** 2  # the idle 2-core development CPU, quarter width
        width_epoch_s[width] = steps_per_epoch * args.batch_size / images_per_s
    dense_epoch_s = width_epoch_s[args.width]
    eval_s = dense_epoch_s * test_images / max(1, 3 * train_images) + 5.0  # forward passes only, + measuring
    return TimePlan(dense_epoch_s, width_epoch_s, eval_s)


def print_plan(plan: TimePlan, specs: list[RunSpec], args: argparse.Namespace, snapshot_exists: bool) -> float:
    """Prints the estimated minutes of every run (and the total); returns the total in seconds."""
    total = 0.0
    source = "measured dense epoch" if plan.measured else f"{args.calibration_steps} calibration steps"
    print(f"time plan (from {source}: dense epoch ~{plan.dense_epoch_s:.1f}s):", flush=True)
    dense_seen = False
    for spec in specs:
        estimate = plan.run_s(spec, args, args.reuse_dense and (snapshot_exists or dense_seen))
        dense_seen = dense_seen or spec.kind == "dense"
        total += estimate
        ratio = f"ratio {spec.ratio:.2f}" if spec.ratio else ""
        print(f"  {spec.name:<22} {spec.kind:<12} {ratio:<12} ~{estimate / 60:6.1f} min", flush=True)
    budget = f" (budget {args.budget_s / 60:.1f} min)" if args.budget_s else ""
    print(f"  {'total':<22} {'':<12} {'':<12} ~{total / 60:6.1f} min{budget}", flush=True)
    return total


# ------------------------------------------------------------------------------------------------ output


def markdown_table(results: dict[str, Any]) -> str:
    runs = results["runs"]
    dense_acc = runs.get("dense", {}).get("test_acc")
    args = results.get("args", {})
    cpu_batches = " / ".join(f"b{b}" for b in args.get("cpu_latency_batches", [1, 64]))
    gpu_batches = " / ".join(f"b{b}" for b in args.get("gpu_latency_batches", [1, 256]))
    header = ("| run | test acc | Δ vs dense | params | params × | MB | MMACs/img | MACs × | epoch s before→after "
              f"| train img/s | CPU ms {cpu_batches} | GPU ms {gpu_batches} |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in runs.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {str(r.get('error', ''))[:60]} |" + " |" * 10)
            continue
        delta = f"{r['test_acc'] - dense_acc:+.2f} pt" if dense_acc is not None else "–"
        cpu_text = " / ".join(f"{v:.1f}" for v in r.get("cpu_latency_ms", {}).values()) or "–"
        gpu_text = " / ".join(f"{v:.2f}" for v in (r.get("gpu_latency_ms") or {}).values()) or "–"
        epoch = f"{_num(r.get('epoch_time_before_s'))}→{_num(r.get('epoch_time_after_s'))}"
        throughput = r.get("train_images_per_s")
        lines.append(
            f"| {name} | {r['test_acc']:.2f}% | {delta} | {r['params'] / 1e6:.3f}M | {r['params_ratio']:.2f}x | "
            f"{r['bytes'] / 2**20:.2f} | {r['macs_per_image'] / 1e6:.1f} | {r['macs_ratio']:.2f}x | {epoch} | "
            f"{'–' if throughput is None else f'{throughput:.0f}'} | {cpu_text} | {gpu_text} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def save(results: dict[str, Any], path: Path) -> None:
    """Writes the results with ``runs`` as a list of ``{"run": name, ...}`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**results, "runs": [{"run": name, **{k: v for k, v in run.items() if k != "run"}}
                                    for name, run in results["runs"].items()]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, path)


def load_runs(path: Path) -> dict[str, Any]:
    """The runs of an earlier results file, by name (files with ``runs`` as a list or, older ones, a dict)."""
    runs = json.loads(path.read_text()).get("runs", {})
    if isinstance(runs, list):
        return {run["run"]: run for run in runs}
    return dict(runs)


def environment(cuda: bool) -> dict[str, Any]:
    import lightning
    import tensorly

    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "lightning": lightning.__version__,
        "tensorly": tensorly.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
    }


def subset(arrays: CIFAR10Arrays, train: int | None, test: int | None, seed: int) -> CIFAR10Arrays:
    """Seeded random subsets of the training and test images (the files are sorted by class)."""
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    if train is not None and train < len(y_train):
        keep = torch.randperm(len(y_train), generator=generator)[:train]
        x_train, y_train = x_train[keep], y_train[keep]
    if test is not None and test < len(y_test):
        keep = torch.randperm(len(y_test), generator=generator)[:test]
        x_test, y_test = x_test[keep], y_test[keep]
    return CIFAR10Arrays(x_train, y_train, x_test, y_test, arrays.class_names,
                         f"{arrays.source} (subset {len(y_train)}/{len(y_test)})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_path = Path(args.out_dir) / output_name(args)

    t0 = time.perf_counter()
    if args.cifar_root:
        from tetra_lightning.data import load_cifar10_torchvision

        arrays = load_cifar10_torchvision(args.cifar_root)
    else:
        arrays = load_cifar10(args.data or default_data_path(args.protocol == "quick"), cache_dir=args.cache_dir)
    if args.limit_train_images or args.limit_test_images:
        arrays = subset(arrays, args.limit_train_images, args.limit_test_images, args.seed)
    load_s = time.perf_counter() - t0
    train_images, test_images = int(arrays.x_train.shape[0]), int(arrays.x_test.shape[0])
    print(f"data: {arrays.source}: {train_images} train / {test_images} test images loaded in {load_s:.1f}s",
          flush=True)

    results: dict[str, Any] = {"runs": {}}
    if args.append is not None:
        previous = Path(args.append) if args.append else out_path
        if previous.is_file():
            results["runs"] = load_runs(previous)
            print(f"kept runs {sorted(results['runs'])} from {previous}", flush=True)
    results.update({
        "benchmark": "resnet18_cifar10", "protocol": args.protocol + ("_smoke" if args.smoke else ""),
        "quick": args.quick, "environment": environment(cuda), "args": vars(args),
        "train_images": train_images, "test_images": test_images,
        "data": {"source": arrays.source, "train_images": train_images, "test_images": test_images,
                 "load_s": round(load_s, 2)},
    })
    from tetra_lightning.models import cifar_resnet18

    reference = cifar_resnet18(num_classes=10, width=args.width)
    ref_report = model_report(reference, torch.randn(1, 3, 32, 32), latency=False, print_table=False)
    dense_ref = {"params": ref_report.params, "bytes": ref_report.bytes, "macs_per_image": ref_report.macs}
    results["dense_reference"] = dense_ref
    print(f"dense ResNet-18 (width {args.width:g}): {dense_ref['params']:,} params, "
          f"{dense_ref['macs_per_image'] / 1e6:.1f} MMACs/image", flush=True)

    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    snapshot = dense_snapshot_path(args, arrays, cuda) if args.reuse_dense else None
    plan = calibrate(args, [parse_run(n, args, results) for n in names], train_images, test_images)
    results["plan_s"] = round(print_plan(plan, [parse_run(n, args, results) for n in names], args,
                                         snapshot is not None and snapshot.is_file()), 1)
    for name in names:
        spec = parse_run(name, args, results)
        elapsed = time.perf_counter() - t_start
        estimate = plan.run_s(spec, args, snapshot is not None and snapshot.is_file())
        if args.budget_s and elapsed + estimate > args.budget_s:
            print(f"[{spec.name}] skipped: {elapsed:.0f}s spent + ~{estimate:.0f}s estimated > budget "
                  f"{args.budget_s:.0f}s. Run it later with --runs {spec.name} --append", flush=True)
            results["runs"].setdefault(spec.name, {"status": "skipped", "error": "time budget",
                                                   "estimated_s": round(estimate, 1)})
            save(results, out_path)
            continue
        ratio_text = f", ratio {spec.ratio:.2f}" if spec.ratio else ""
        print(f"=== {spec.name} ({spec.kind}{ratio_text}; estimated {estimate / 60:.1f} min) ===", flush=True)
        t_run = time.perf_counter()
        try:
            results["runs"][spec.name] = run_one(spec, args, arrays, dense_ref)
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the other runs
            traceback.print_exc()
            results["runs"][spec.name] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                          "traceback": traceback.format_exc()}
        run_s = time.perf_counter() - t_run
        run = results["runs"][spec.name]
        run["run_s"] = round(run_s, 1)
        run["estimated_s"] = round(estimate, 1)
        dense_run = results["runs"].get("dense", {})
        if run.get("resumed_from_dense") and run.get("epoch_time_before_s") is None:
            run["epoch_time_before_s"] = dense_run.get("epoch_time_before_s")  # the epochs it shares with dense
        if spec.kind == "dense" and run.get("status") == "ok" and run.get("epoch_time_before_s"):
            # re-estimate what is left from the measured dense epoch (the calibration saw a few steps only)
            correction = run["epoch_time_before_s"] / plan.dense_epoch_s
            plan = TimePlan(run["epoch_time_before_s"], {w: s * correction for w, s in plan.width_epoch_s.items()},
                            plan.eval_s * correction, measured=True)
            rest = [parse_run(n, args, results) for n in names[names.index(name) + 1:]]
            if rest:
                print_plan(plan, rest, args, snapshot is not None and snapshot.is_file())
        results["total_s"] = round(time.perf_counter() - t_start, 1)
        save(results, out_path)
        print(f"[{spec.name}] done in {run_s:.1f}s (estimated {estimate:.0f}s); saved {out_path}", flush=True)

    table = markdown_table(results)
    results["markdown"] = table
    save(results, out_path)
    print("\n" + table, flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s; results in {out_path}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
