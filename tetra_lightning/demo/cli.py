"""The command line of ``python -m tetra_lightning.demo`` (``make demo``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from tetra_lightning.demo.pipeline import run_demo
from tetra_lightning.demo.recipe import DATASETS

__all__ = ["main"]

DESCRIPTION = "The main job, offline: tune a small CNN with TetraOpt, then compress, prune and quantize its best config."


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point of ``python -m tetra_lightning.demo`` (see :mod:`tetra_lightning.demo`)."""
    parser = argparse.ArgumentParser(
        prog="python -m tetra_lightning.demo", description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", default="digits", choices=DATASETS)
    parser.add_argument("--data-dir", default=None,
                        help="CIFAR-10: cifar10_jpeg_packed.npz, or a folder with it or torchvision's "
                             "cifar-10-batches-py (default: $TETRA_DATA_DIR/cifar10)")
    parser.add_argument("--out", "--out-dir", dest="out", default="demo_out", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a run of seconds (few trials, few batches)")
    parser.add_argument("--trials", type=int, default=None, help="tuning trials (default 16; --quick 3)")
    parser.add_argument("--method", default="auto", choices=["auto", "svd", "cp", "tucker", "tt"],
                        help="decomposition of TensorCompressionCallback")
    parser.add_argument("--no-wandb", action="store_true", help="do not write a W&B run")
    parser.add_argument("--fresh", action="store_true", help="tune again instead of reusing the study in --out")
    parser.add_argument("--compile", action="store_true",
                        help="also time every stage after torch.compile (lowers int8 to int8 kernels; slow to build)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 for digits and --quick, torch's default otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.data == "digits" and args.data_dir is not None:
        parser.error("--data-dir is for --data cifar10; the digits ship with scikit-learn")
    return run_demo(
        data=args.data, data_dir=args.data_dir, out_dir=args.out, quick=args.quick, trials=args.trials,
        method=args.method, use_wandb=not args.no_wandb, fresh=args.fresh, seed=args.seed,
        progress=not args.no_progress, threads=args.threads, compile_latency=args.compile,
    )
