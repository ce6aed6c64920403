"""Architecture search by real training: TetraOptTuner over NATS-Bench cells, each trial a short CIFAR-10 run.

Every trial builds the cell network of one point of the topology space (or, with ``--space sss``, the channel
counts of the size space), trains it with the NAS-Bench-201 recipe (SGD + cosine) for a few epochs and reports
the held-out validation accuracy. ``--quick`` uses the 5000-image subset, a tiny network (C=8, N=1) and a few
batches per trial: 4 trials in a few minutes on a CPU. The benchmark's own setting is C=16, N=5 (use a GPU).

    python examples/nas_train_cifar10.py --quick
    python examples/nas_train_cifar10.py --data ../shared/data/cifar10/cifar10_jpeg_packed.npz --budget 40 \\
        --max-epochs 12 --channels 16 --cells 5 --storage sqlite:///nas_cifar10.db

Kill it at any time and rerun with the same --storage: finished trials are kept and the study continues.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import optuna

from tetra_lightning.data import CIFAR10DataModule, load_cifar10
from tetra_lightning.nas import get_nats_space
from tetra_lightning.nas.lightning import NATSLightningModule
from tetra_lightning.tuner import TetraOptTuner

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_subset_uint8.npz"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TETRA_CIFAR10", str(DEFAULT_DATA)),
                        help="CIFAR-10 file (packed .npz / subset .npz / folder)")
    parser.add_argument("--space", default="tss", choices=["tss", "sss"], help="topology or size space")
    parser.add_argument("--budget", type=int, default=20, help="trials (architectures trained)")
    parser.add_argument("--max-epochs", type=int, default=12, help="epochs per trial (NATS search signal: 12)")
    parser.add_argument("--channels", type=int, default=16, help="C: first-stage channels (tss)")
    parser.add_argument("--cells", type=int, default=5, help="N: cells per stage (tss)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--limit-batches", type=float, default=1.0, help="train batches per epoch (int or fraction)")
    parser.add_argument("--limit-val-batches", type=float, default=1.0, help="val batches (int or fraction)")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL of the study (default: in memory)")
    parser.add_argument("--study-name", default=None, help="default: nats-<space>-cifar10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="4 trials of 1 epoch x 12 batches of 64, C=8, N=1, on the 5000-image subset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    budget, epochs, channels, cells = args.budget, args.max_epochs, args.channels, args.cells
    batch_size, val_size = args.batch_size, args.val_size
    limit, limit_val = args.limit_batches, args.limit_val_batches
    if args.quick:
        budget, epochs, channels, cells = min(budget, 4), 1, 8, 1
        batch_size, val_size, limit, limit_val = 64, 1000, 12, 8
    limit_train = int(limit) if limit > 1 else limit
    limit_val = int(limit_val) if limit_val > 1 else limit_val

    space = get_nats_space(args.space)
    arrays = load_cifar10(args.data)  # decoded once, shared by every trial

    def model_fn(cfg: dict[str, Any]) -> NATSLightningModule:
        lr = 0.05 if args.quick else 0.1
        if space.name == "sss":  # the size space fixes C and N by its 5 channel counts
            return NATSLightningModule(space.to_arch(cfg), lr=lr)
        return NATSLightningModule(space.to_arch(cfg), C=channels, N=cells, lr=lr)

    def datamodule_fn(cfg: dict[str, Any]) -> CIFAR10DataModule:
        return CIFAR10DataModule(arrays, batch_size=batch_size, val_size=val_size, seed=args.seed)

    # no --storage: a fresh in-memory study (the tuner's own default is a SQLite file in the working directory)
    storage = args.storage if args.storage else optuna.storages.InMemoryStorage()
    tuner = TetraOptTuner(
        space.search_space(), monitor="val_acc", mode="max", budget=budget, storage=storage,
        study_name=args.study_name or f"nats-{space.name}-cifar10", objective="best", seed=args.seed,
        progress_bar=False,
    )
    result = tuner.fit(
        model_fn,
        datamodule_fn=datamodule_fn,
        trainer_kwargs={
            "max_epochs": epochs,
            "limit_train_batches": limit_train,
            "limit_val_batches": limit_val,
            "accelerator": "auto",
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
    )
    trials = result.trials
    for _, row in trials.iterrows():
        cfg = {name: row[f"params_{name}"] for name in space.dimensions}
        value = "failed" if row["value"] != row["value"] else f"{row['value']:.4f}"
        print(f"trial {row['number']:3d} {row['state']:9s} val_acc {value:>7s}  {space.to_arch(cfg)}")
    best_arch = space.to_arch(result.best_params)
    print(f"best val_acc {result.best_value:.4f}: {best_arch} (arch_index {space.index(best_arch)})")
    return {"best_value": result.best_value, "best_arch": best_arch, "n_trials": len(trials)}


if __name__ == "__main__":
    main()
