"""Tune a Lightning model on a Ray cluster: ``ray.tune.Tuner`` + ``TetraOptSearch`` + Ray Train workers.

Every Tune trial is a small driver function that starts a Ray Train ``TorchTrainer`` (``--workers-per-trial``
DDP workers) running a plain Lightning ``Trainer`` prepared with ``ray.train.lightning`` (``RayDDPStrategy``,
``RayLightningEnvironment``, ``RayTrainReportCallback``, ``prepare_trainer``), as Ray documents for Train V2.
The epoch metrics reach Tune through ``TuneReportCallback``; TetraOptSearch proposes the next configs in
batches of ``--concurrent`` points and learns from each trial as it finishes.

    python examples/ray_tune_lightning.py --quick                       # a local Ray instance, CPU only
    ray start --head                                                   # or on a cluster:
    python examples/ray_tune_lightning.py --address auto --budget 40 --concurrent 8 --use-gpu \\
        --storage-path /shared/ray_results                            # storage every node can reach

The data are scikit-learn's 8x8 digits (bundled, no download) in a ``DataLoader``, so under DDP Lightning
shards them across the workers of a trial. Swap in your own LightningModule and data.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from lightning.pytorch import LightningModule, Trainer
from ray import tune
from ray.train.lightning import (
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    prepare_trainer,
)
from ray.tune.integration.ray_train import TuneReportCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tetra_lightning.data.digits import load_digits_tensors
from tetra_lightning.optim import Categorical, Float, Int
from tetra_lightning.tuner.ray import TetraOptSearch


class LitMLP(LightningModule):
    """``depth`` hidden layers of ``width`` units on the flattened 8x8 digits."""

    def __init__(self, lr: float = 0.05, width: int = 64, depth: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        size = 64
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(size, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        # sync_dist: every DDP rank reports the accuracy over all ranks' shards
        self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def digits_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Train/validation DataLoaders of the standardised digits (a fixed 80/20 split)."""
    images, labels = load_digits_tensors()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images = (images - images.mean()) / images.std()
    val, train = order[:360], order[360:]
    return (
        DataLoader(TensorDataset(images[train], labels[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(images[val], labels[val]), batch_size=360),
    )


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker of a trial: one Lightning fit, reported to Ray after each epoch."""
    train_loader, val_loader = digits_loaders(config["batch_size"])
    model = LitMLP(lr=config["lr"], width=config["width"], depth=config["depth"])
    trainer = Trainer(
        max_epochs=config["max_epochs"],
        limit_train_batches=config["limit_train_batches"],
        devices="auto",
        accelerator="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[RayTrainReportCallback()],
        enable_checkpointing=False,  # RayTrainReportCallback reports a checkpoint per epoch to Ray Train
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)


def make_driver_fn(settings: dict[str, Any]) -> Any:
    """The Tune trainable: launches one Ray Train run for the trial's config and forwards its metrics."""

    def train_driver_fn(config: dict[str, Any]) -> None:
        trainer = ray.train.torch.TorchTrainer(
            train_fn_per_worker,
            train_loop_config={**config, **settings["fixed"]},
            scaling_config=ray.train.ScalingConfig(
                num_workers=settings["workers_per_trial"],
                use_gpu=settings["use_gpu"],
                resources_per_worker=settings["resources_per_worker"],
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{tune.get_context().get_trial_id()}",  # one Ray Train run per trial
                storage_path=settings["storage_path"],
                callbacks=[TuneReportCallback()],
            ),
        )
        trainer.fit()

    return train_driver_fn


def main(argv: list[str] | None = None) -> tune.ResultGrid:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=24, help="trials TetraOptSearch proposes")
    parser.add_argument("--concurrent", type=int, default=4, help="trials running at once (the batch size)")
    parser.add_argument("--workers-per-trial", type=int, default=2, help="Ray Train (DDP) workers per trial")
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per Ray Train worker")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' for `ray start`)")
    parser.add_argument("--storage-path", default="ray_results", help="Ray results; shared storage on clusters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="CPU, 1 worker per trial, 4 trials of 2 short epochs")
    args = parser.parse_args(argv)

    budget, concurrent, workers, max_epochs, limit = args.budget, args.concurrent, args.workers_per_trial, \
        args.max_epochs, 1.0
    driver_cpus, worker_resources = 1.0, None
    if args.quick:
        budget, concurrent, workers, max_epochs, limit = min(budget, 4), 2, 1, 2, 10
        # two trials side by side on two CPUs: the driver needs little, the training worker the rest
        driver_cpus, worker_resources = 0.2, {"CPU": 0.8}
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False)

    search_space = {
        "lr": Float(1e-3, 0.5, log=True, grid=8),
        "width": Categorical([16, 32, 64, 128]),
        "depth": Int(1, 3),
        "batch_size": Categorical([32, 128]),
    }
    search = TetraOptSearch(search_space, metric="val_acc", mode="max", budget=budget, seed=args.seed)
    storage_path = str(Path(args.storage_path).resolve()) if "://" not in args.storage_path else args.storage_path
    settings = {
        "fixed": {"max_epochs": max_epochs, "limit_train_batches": limit},
        "workers_per_trial": workers,
        "use_gpu": args.use_gpu,
        "resources_per_worker": worker_resources,
        "storage_path": storage_path,
    }
    tuner = tune.Tuner(
        tune.with_resources(make_driver_fn(settings), {"cpu": driver_cpus}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=-1, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name="tetra-digits", storage_path=storage_path, verbose=1),
    )
    results = tuner.fit()
    best = results.get_best_result(metric="val_acc", mode="max")
    print(f"{len(results)} trials, {sum(r.error is not None for r in results)} errors")
    print(f"best val_acc {best.metrics['val_acc']:.4f} with "
          f"{ {k: best.config[k] for k in search_space} } (TetraOptSearch: {search.best_value:.4f})")
    if not math.isfinite(search.best_value):
        raise SystemExit("no trial reported val_acc")
    return results


if __name__ == "__main__":
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    main()
