"""ResNet-18 on CIFAR-10: dense vs TensorCompressionCallback (~4.5x, ~15x) vs tensorly-torch factorization.

Every run trains the same CIFAR-style ResNet-18 from the same seed for the same number of epochs. Compressed runs
train dense until ``--start-epoch``, are rewritten at the start of that epoch, then fine-tune for the remaining
epochs under the same LR schedule. The baselines replace every conv (except the 3-channel stem) by tensorly-torch
``FactorizedConv.from_conv(conv, rank=<fraction>, factorization="tucker"|"cp", implementation="factorized")`` at
the same epoch, with one rank fraction for all layers chosen so that the whole model is as much smaller as the
matching callback run.

Measured per run: test accuracy, parameters, bytes, MACs per image (``tetra_lightning.report``), ratios against
the dense model, training time per epoch before and after the rewrite, CPU latency at batch 1 and 64 (fp32) and,
with CUDA, GPU latency at batch 1 and 256 (bf16 weights, channels_last). Results go to
``<out-dir>/resnet18_cifar10.json`` (``resnet18_cifar10_quick.json`` with ``--quick``), rewritten after each run,
and a markdown table is printed.

Usage (from the repository root, with the package importable, e.g. ``PYTHONPATH=.``)::

    # CPU protocol: quarter-width ResNet-18 (0.70M params, 35 MMACs/image; --width 0.25) on the 5000-image subset,
    # 10 epochs (rewrite at the start of epoch 3, so 7 epochs of fine-tuning), batch 128, all 1000 test images,
    # 2 torch threads; the compressed and tltorch runs resume from the dense run's state at epoch 3
    # (--reuse-dense: the first epochs are identical, so they are trained once).
    python benchmarks/resnet18_cifar10.py --quick
    # other allocation strategies, resuming from the same dense state
    python benchmarks/resnet18_cifar10.py --quick --runs c4.5,c15 --allocation capped --out-dir /tmp/capped

GPU protocol for the next session (two device commands of at most ~8 minutes each; every run trains 24 epochs,
rewrite at epoch 8; ``dense`` must come first in the first command, it saves the epoch-8 state the others resume
from, in ``.cache/dense`` so that the second command finds it while the machine is still warm; without it the
baselines simply train their first 8 epochs again, still inside the budget). Only the checkout travels to the
device machine: copy the packed file into the git-ignored ``data/`` folder first and name ``data`` (and the
``.whl`` folder with the tensorly, tensorly-torch and torch-pruning wheels the machine lacks) in ``carry``::

    PYTHONPATH=. python benchmarks/resnet18_cifar10.py --data data/cifar10_jpeg_packed.npz \
        --runs dense,c4.5,c15 --epochs 24 --start-epoch 8 --reuse-dense --dense-cache .cache/dense \
        --budget-s 450 --out-dir $OUT
    PYTHONPATH=. python benchmarks/resnet18_cifar10.py --data data/cifar10_jpeg_packed.npz \
        --runs tltorch_tucker,tltorch_cp --epochs 24 --start-epoch 8 --reuse-dense --dense-cache .cache/dense \
        --budget-s 450 --out-dir $OUT --append benchmarks/results/resnet18_cifar10.json

(then copy ``$OUT/resnet18_cifar10.json`` to ``benchmarks/results/``; the second command reads the ratios the first
reached from the ``--append`` file, so copy the first one's JSON there before running it).

Time budget on an H100 (bf16-mixed, channels_last, data resident on the GPU, batch 512), an estimate, not a
measurement: one epoch is 50k x 0.56 GMACs x 3 (forward + backward) ~ 167 TFLOP, a fraction of a second of
tensor-core peak, in practice ~3-5 s/epoch (small 4x4..32x32 maps, kernel launches). On the 2-core development CPU
the quarter-width model (16x fewer MACs, 10x fewer images, so ~1/160 of the work) took 15-20 s/epoch with 2 threads
when the machine was otherwise idle (up to 150 s when shared), i.e. a ~3 minute dense --quick run. First command: ~10 s decode + 24 dense
epochs + 2 x 16 fine-tuning epochs = 56 epochs (~225 s at 4 s) + two rewrites (``method="auto"`` fits CP per layer;
~100-150 s each on the CPU for the full-width model, less on the GPU) + final tests and latencies (~10 s per run):
~6-7 minutes. ``--budget-s`` skips a run that would not finish inside the budget (estimated from the previous run),
and the JSON is rewritten after every run, so a command killed at its time limit still leaves the finished runs.
"""

from __future__ import annotations

import argparse
import copy
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
RUN_PATTERN = re.compile(r"^(dense|c(?P<c>\d+(?:\.\d+)?)|tltorch_(?P<fact>tucker|cp)(?P<t>\d+(?:\.\d+)?)?)$")


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=str, default=None,
                      help="cifar10_jpeg_packed.npz, cifar10_subset_uint8.npz or a folder holding one "
                           "(default: $TETRA_DATA_DIR/cifar10 or ../shared/data/cifar10)")
    data.add_argument("--cifar-root", type=str, default=None,
                      help="torchvision root with cifar-10-batches-py (instead of --data)")
    data.add_argument("--cache-dir", type=str, default=None, help="cache for decoded JPEGs")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--runs", type=str, default="dense,c4.5,c15,tltorch_tucker,tltorch_cp",
                      help="comma-separated: dense, c<ratio> (TensorCompressionCallback), "
                           "tltorch_tucker[<ratio>], tltorch_cp[<ratio>]")
    runs.add_argument("--baseline-ratio", type=float, default=15.0,
                      help="ratio of tltorch runs without a number; the achieved ratio of the run "
                           "c<baseline-ratio> is used instead when it is in the results")
    runs.add_argument("--method", type=str, default="auto", help="TensorCompressionCallback method")
    runs.add_argument("--allocation", choices=("greedy", "capped", "fisher", "fisher_capped"), default="greedy",
                      help="TensorCompressionCallback rank allocation strategy")
    runs.add_argument("--max-rel-error", type=float, default=0.8, help="error cap of the capped allocations")
    runs.add_argument("--min-rank", type=int, default=8, help="minimum rank of the capped allocations")
    runs.add_argument("--steps", type=int, default=1, help="compression stages of the callback")
    runs.add_argument("--epochs-between-steps", type=int, default=1)
    runs.add_argument("--tltorch-iters", type=int, default=100,
                      help="n_iter_max of tensorly's tucker/parafac in the baseline")
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
    train.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    train.add_argument("--compile", action="store_true", help="torch.compile the network")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    train.add_argument("--reuse-dense", action=argparse.BooleanOptionalAction, default=None,
                       help="the dense run saves its state at --start-epoch (and the squared gradients of the epoch "
                            "before, for the fisher allocations); the other runs resume from it instead of "
                            "re-training the identical first epochs (default: on with --quick)")
    train.add_argument("--dense-cache", type=str, default=None,
                       help="folder of the --reuse-dense snapshots (default: <tmp>/tetra_resnet18_cifar10)")
    measure = parser.add_argument_group("measurement")
    measure.add_argument("--latency-repeats", type=int, default=20, help="timed passes per GPU latency")
    measure.add_argument("--cpu-latency-repeats", type=int, default=10, help="timed passes per CPU latency")
    measure.add_argument("--cpu-latency-batches", type=str, default="1,64")
    measure.add_argument("--cpu-latency-threads", type=int, default=0,
                         help="torch threads while timing on the CPU (0: torch's default)")
    measure.add_argument("--gpu-latency-batches", type=str, default="1,256")
    measure.add_argument("--limit-test-images", type=int, default=None,
                         help="evaluate the final test accuracy on the first N test images (default: all)")
    measure.add_argument("--budget-s", type=float, default=None,
                         help="skip a run when the time spent plus the previous run's time would exceed this")
    out = parser.add_argument_group("output")
    out.add_argument("--out-dir", type=str, default=str(REPO / "benchmarks" / "results"))
    out.add_argument("--append", nargs="?", const="", default=None, metavar="JSON",
                     help="keep the runs of an earlier results file (default: the output file); re-run ones "
                          "are replaced, and tltorch runs match the ratios that c<ratio> runs reached there")
    out.add_argument("--quick", action="store_true",
                     help="CPU protocol: quarter-width ResNet-18 on the 5000-image subset, all 1000 test images")
    args = parser.parse_args(argv)

    if args.quick:
        args.cpu = True
        quick_defaults = {"width": 0.25, "threads": 2, "epochs": QUICK_EPOCHS, "start_epoch": QUICK_START,
                          "batch_size": 128, "lr": 0.2, "warmup_epochs": 0.5, "cpu_latency_threads": 1,
                          "val_every": 0, "tltorch_iters": 10,
                          "latency_repeats": 3, "cpu_latency_repeats": 3, "cpu_latency_batches": "1,8"}
        for key, value in quick_defaults.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.reuse_dense is None:
        args.reuse_dense = args.quick
    if args.start_epoch is None:
        args.start_epoch = max(1, args.epochs // 3)
    if not 0 < args.start_epoch < args.epochs:
        parser.error(f"--start-epoch must be in [1, --epochs), got {args.start_epoch} with --epochs {args.epochs}")
    last_stage = args.start_epoch + (args.steps - 1) * args.epochs_between_steps
    if last_stage >= args.epochs:
        parser.error(f"the last compression stage (epoch {last_stage}) must come before --epochs {args.epochs}")
    for option in ("cpu_latency_batches", "gpu_latency_batches"):
        try:
            setattr(args, option, [int(b) for b in getattr(args, option).split(",") if b.strip()])
        except ValueError:
            parser.error(f"--{option.replace('_', '-')} must be comma-separated ints, got {getattr(args, option)!r}")
    for name in args.runs.split(","):
        if not RUN_PATTERN.match(name.strip()):
            parser.error(f"unknown run {name!r}: use dense, c<ratio>, tltorch_tucker[<ratio>], tltorch_cp[<ratio>]")
    return args


def default_data_path(quick: bool) -> Path:
    env = os.environ.get("TETRA_DATA_DIR")
    folder = Path(env) / "cifar10" if env else REPO.parent / "shared" / "data" / "cifar10"
    return folder / ("cifar10_subset_uint8.npz" if quick else "cifar10_jpeg_packed.npz")


@dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str  # "dense" | "tetra" | "tltorch"
    ratio: float | None = None
    factorization: str | None = None


def parse_run(name: str, args: argparse.Namespace, results: dict[str, Any]) -> RunSpec:
    match = RUN_PATTERN.match(name)
    assert match is not None  # validated in parse_args
    if name == "dense":
        return RunSpec(name, "dense")
    if match.group("c"):
        return RunSpec(name, "tetra", ratio=float(match.group("c")))
    ratio = float(match.group("t")) if match.group("t") else args.baseline_ratio
    # match the whole-model compression the callback actually reached at that target, when known
    matching = results["runs"].get(f"c{match.group('t') or _fmt_ratio(args.baseline_ratio)}", {})
    if matching.get("params_ratio"):
        ratio = float(matching["params_ratio"])
    return RunSpec(name, "tltorch", ratio=ratio, factorization=match.group("fact"))


def _fmt_ratio(value: float) -> str:
    return f"{value:g}"


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


class TltorchFactorize(Callback):
    """Baseline: replace every conv but the stem by a tensorly-torch ``FactorizedConv`` at ``start_epoch``.

    One rank fraction is used for all layers (tltorch's ``rank=<float>``), found by bisection so that the whole
    network is ``target_ratio`` times smaller in parameters. Tucker keeps the two spatial modes at full rank
    (``fixed_rank_modes=(2, 3)``, i.e. Tucker-2); without it a float rank collapses the 3x3 modes to rank 1.
    """

    def __init__(self, factorization: str, target_ratio: float, start_epoch: int, n_iter_max: int) -> None:
        self.factorization = factorization
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
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for x, y in loader:
            correct += (net(x).argmax(1) == y).sum()
    return float(correct) / max(1, len(y_test)), len(y_test)


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


def run_one(spec: RunSpec, args: argparse.Namespace, arrays: CIFAR10Arrays, dense_ref: dict[str, Any]) -> dict[str, Any]:
    from tetra_lightning.models import cifar_resnet18

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    pl.seed_everything(args.seed, verbose=False)
    net = cifar_resnet18(num_classes=10, width=args.width)
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
    snapshot = dense_snapshot_path(args, arrays, cuda) if args.reuse_dense else None
    resume = snapshot if snapshot is not None and spec.kind != "dense" and snapshot.is_file() else None
    if spec.kind == "tetra":
        from tetra_lightning.callbacks.compression import TensorCompressionCallback

        structural.append(TensorCompressionCallback(
            method=args.method, target_ratio=spec.ratio, start_epoch=args.start_epoch, steps=args.steps,
            epochs_between_steps=args.epochs_between_steps, verbose=False, allocation=args.allocation,
            max_rel_error=args.max_rel_error, min_rank=args.min_rank,
            example_input=torch.randn(1, 3, 32, 32),
        ))
        if resume is not None and args.allocation.startswith("fisher"):
            grads = torch.load(resume.with_suffix(".grad.pt"), weights_only=True)
            structural[0]._grad_sq = {k: torch.tensor(v) for k, v in grads["grad_sq"].items()}
            structural[0]._grad_batches = grads["batches"]
    elif spec.kind == "tltorch":
        structural.append(TltorchFactorize(spec.factorization, spec.ratio, args.start_epoch, args.tltorch_iters))
    callbacks = [recorder.start, *structural]
    if args.channels_last:
        callbacks.append(ChannelsLast())
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
    print(f"[{spec.name}] test accuracy {test_acc:.4f} after {fit_s:.1f}s of training", flush=True)

    result: dict[str, Any] = {"status": "ok", "kind": spec.kind, "target_ratio": spec.ratio,
                              "test_acc": round(test_acc, 5), "test_images": test_images,
                              "fit_s": round(fit_s, 2)}
    result.update(measure(module.net, args, cuda))
    for key in ("params", "bytes"):
        result[f"{key}_ratio"] = round(dense_ref[key] / result[key], 4)
    result["macs_ratio"] = round(dense_ref["macs_per_image"] / result["macs_per_image"], 4)
    rows = recorder.rows
    rewrite = args.start_epoch if spec.kind != "dense" else None
    # epoch 0 carries one-off costs (cuDNN autotuning, allocator warm-up): use it only when it is all there is
    before = [r["train_s"] for r in rows if 0 < r["epoch"] < args.start_epoch] or [
        r["train_s"] for r in rows if r["epoch"] == 0]
    after = [r["train_s"] for r in rows if r["epoch"] > args.start_epoch]
    result["epoch_time_before_s"] = round(statistics.median(before), 3) if before else None
    result["epoch_time_after_s"] = round(statistics.median(after), 3) if after else None
    result["first_epoch_s"] = rows[0]["train_s"] if rows else None
    result["rewrite_epoch"] = rewrite
    result["rewrite_s"] = next((r["surgery_s"] for r in rows if r["epoch"] == rewrite), None)
    result["resumed_from_dense"] = str(resume) if resume is not None else None
    result["epochs"] = rows
    if spec.kind == "tetra":
        callback = structural[0]
        result["callback_summary"] = _jsonable(getattr(callback, "summary", None))
        table = getattr(callback, "layer_table", None) or []
        result["layer_table"] = _jsonable(table)
    elif spec.kind == "tltorch":
        result["tltorch"] = structural[0].info
    del trainer, module
    if cuda:
        torch.cuda.empty_cache()
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# ------------------------------------------------------------------------------------------------ output


def markdown_table(results: dict[str, Any]) -> str:
    runs = results["runs"]
    dense_acc = runs.get("dense", {}).get("test_acc")
    args = results.get("args", {})
    cpu_batches = " / ".join(f"b{b}" for b in args.get("cpu_latency_batches", [1, 64]))
    gpu_batches = " / ".join(f"b{b}" for b in args.get("gpu_latency_batches", [1, 256]))
    header = ("| run | test acc | Δ vs dense | params | params × | MB | MMACs/img | MACs × | epoch s before→after "
              f"| CPU ms {cpu_batches} | GPU ms {gpu_batches} |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in runs.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {str(r.get('error', ''))[:60]} |" + " |" * 9)
            continue
        delta = f"{100 * (r['test_acc'] - dense_acc):+.2f} pt" if dense_acc is not None else "–"
        cpu_text = " / ".join(f"{v:.1f}" for v in r.get("cpu_latency_ms", {}).values()) or "–"
        gpu_text = " / ".join(f"{v:.2f}" for v in (r.get("gpu_latency_ms") or {}).values()) or "–"
        epoch = f"{_num(r.get('epoch_time_before_s'))}→{_num(r.get('epoch_time_after_s'))}"
        lines.append(
            f"| {name} | {100 * r['test_acc']:.2f}% | {delta} | {r['params'] / 1e6:.3f}M | {r['params_ratio']:.2f}x | "
            f"{r['bytes'] / 2**20:.2f} | {r['macs_per_image'] / 1e6:.1f} | {r['macs_ratio']:.2f}x | {epoch} | "
            f"{cpu_text} | {gpu_text} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def environment(cuda: bool) -> dict[str, Any]:
    import lightning
    import tensorly

    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "lightning": lightning.__version__,
        "tensorly": tensorly.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
    }


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
    out_path = Path(args.out_dir) / ("resnet18_cifar10_quick.json" if args.quick else "resnet18_cifar10.json")

    t0 = time.perf_counter()
    if args.cifar_root:
        from tetra_lightning.data import load_cifar10_torchvision

        arrays = load_cifar10_torchvision(args.cifar_root)
    else:
        arrays = load_cifar10(args.data or default_data_path(args.quick), cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    print(f"data: {arrays.source}: {arrays.x_train.shape[0]} train / {arrays.x_test.shape[0]} test images "
          f"loaded in {load_s:.1f}s", flush=True)

    results: dict[str, Any] = {"runs": {}}
    if args.append is not None:
        previous = Path(args.append) if args.append else out_path
        if previous.is_file():
            results["runs"] = json.loads(previous.read_text()).get("runs", {})
            print(f"kept runs {sorted(results['runs'])} from {previous}", flush=True)
    results.update({
        "benchmark": "resnet18_cifar10", "quick": args.quick, "environment": environment(cuda), "args": vars(args),
        "data": {"source": arrays.source, "train_images": int(arrays.x_train.shape[0]),
                 "test_images": int(arrays.x_test.shape[0]), "load_s": round(load_s, 2)},
    })
    from tetra_lightning.models import cifar_resnet18

    reference = cifar_resnet18(num_classes=10, width=args.width)
    ref_report = model_report(reference, torch.randn(1, 3, 32, 32), latency=False, print_table=False)
    dense_ref = {"params": ref_report.params, "bytes": ref_report.bytes, "macs_per_image": ref_report.macs}
    results["dense_reference"] = dense_ref
    print(f"dense ResNet-18 (width {args.width:g}): {dense_ref['params']:,} params, {dense_ref['macs_per_image'] / 1e6:.1f} MMACs/image",
          flush=True)

    last_run_s: float | None = None
    for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
        spec = parse_run(name, args, results)
        elapsed = time.perf_counter() - t_start
        if args.budget_s and last_run_s and elapsed + last_run_s > args.budget_s:
            print(f"[{name}] skipped: {elapsed:.0f}s spent + ~{last_run_s:.0f}s per run > budget {args.budget_s:.0f}s. "
                  f"Run it later with --runs {name} --append", flush=True)
            results["runs"].setdefault(name, {"status": "skipped", "error": "time budget"})
            continue
        ratio_text = f", ratio {spec.ratio:.2f}" if spec.ratio else ""
        print(f"=== {name} ({spec.kind}{ratio_text}) ===", flush=True)
        t_run = time.perf_counter()
        try:
            results["runs"][name] = run_one(spec, args, arrays, dense_ref)
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the other runs
            traceback.print_exc()
            results["runs"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc()}
        last_run_s = time.perf_counter() - t_run
        run = results["runs"][name]
        dense_run = results["runs"].get("dense", {})
        if run.get("resumed_from_dense") and run.get("epoch_time_before_s") is None:
            run["epoch_time_before_s"] = dense_run.get("epoch_time_before_s")  # the epochs it shares with dense
        results["runs"][name]["run_s"] = round(last_run_s, 1)
        results["total_s"] = round(time.perf_counter() - t_start, 1)
        save(results, out_path)
        print(f"[{name}] done in {last_run_s:.1f}s; saved {out_path}", flush=True)

    table = markdown_table(results)
    results["markdown"] = table
    save(results, out_path)
    print("\n" + table, flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s; results in {out_path}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
