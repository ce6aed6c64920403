"""Automatic rank selection vs compress-after-training on the CIFAR-10 subset.

A small CNN is trained from scratch twice for the same number of epochs:

* ``automatic``: every conv/linear layer is an SVD layer at full rank from the start, trained with a rank-shrinking
  prior; components below the threshold are removed at the shrink epochs
  (:class:`~tetra_lightning.callbacks.lowrank.LowRankCallback`). ``--prior hoyer`` (default): SVD training's
  Hoyer sparsity of the singular values (scale invariant, which the convs followed by BatchNorm need);
  ``--prior gamma``: the low-rank Gamma-Gaussian prior of Hawkins & Zhang (with BatchNorm after every conv it
  shrinks all components together and, at a relative threshold, collapses the ranks: see the results file).
* ``post-hoc``: the dense network is trained, then each layer is truncated by SVD to the ranks the automatic run
  ended with (same final size), evaluated as is and after one epoch of fine-tuning.

Prints a table and writes ``benchmarks/results/automatic_rank.json``. ``--quick`` uses 2000 training images and
few epochs (a smoke run on a CPU; its accuracies are not meaningful beyond the comparison itself).

Usage:
    python benchmarks/automatic_rank.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tetra_lightning.callbacks.lowrank import LowRankCallback
from tetra_lightning.data import load_cifar10
from tetra_lightning.decompose import SVDConfig, compress_
from tetra_lightning.lowrank import GammaGaussianPrior, SVDTrainingRegularizer, layer_ranks

DATA = "/work/shared/data/cifar10/cifar10_subset_uint8.npz"
RESULTS = Path(__file__).parent / "results" / "automatic_rank.json"
MEAN = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
STD = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]


class SmallCNN(pl.LightningModule):
    def __init__(self, width: int = 32, lr: float = 0.05, epochs: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        wide = 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, wide, 3, padding=1, stride=2), nn.BatchNorm2d(wide), nn.ReLU(),
            nn.Conv2d(wide, wide, 3, padding=1), nn.BatchNorm2d(wide), nn.ReLU(),
            nn.Conv2d(wide, 2 * wide, 3, padding=1, stride=2), nn.BatchNorm2d(2 * wide), nn.ReLU(),
        )
        self.head = nn.Linear(2 * wide, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum()) for i in range(0, len(x), 500))
    model.train(was_training)
    return correct / len(x)


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 images, 4 epochs, width 16")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--prior", choices=("hoyer", "gamma"), default="hoyer")
    parser.add_argument("--threshold", type=float, default=None, help="relative (default 0.1 hoyer, 0.05 gamma)")
    parser.add_argument("--sparsity", type=float, default=0.025, help="Hoyer sparsity weight")
    parser.add_argument("--prior-weight", type=float, default=None,
                        help="prior scale (default 1 for hoyer, 5 / training images for gamma)")
    parser.add_argument("--prior-a", type=float, default=1.0, help="GammaGaussianPrior shape a")
    parser.add_argument("--prior-b", type=float, default=1e-4, help="GammaGaussianPrior rate b")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1 if args.quick else torch.get_num_threads())

    data = load_cifar10(args.data)
    n_train = 2000 if args.quick else len(data.x_train)
    x_train = (data.x_train[:n_train].float() / 255 - MEAN) / STD
    x_test = (data.x_test.float() / 255 - MEAN) / STD
    y_train, y_test = data.y_train[:n_train], data.y_test
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    epochs = args.epochs or (4 if args.quick else 20)
    width = 16 if args.quick else 32
    shrink_epochs = sorted({max(1, epochs // 2), max(1, 3 * epochs // 4), epochs - 1})

    # automatic ranks
    start = time.time()
    torch.manual_seed(0)
    auto = SmallCNN(width, epochs=epochs)
    dense_params = _params(auto)
    if args.prior == "hoyer":
        prior: Any = SVDTrainingRegularizer(sparsity=args.sparsity, orthogonality=0.0, measure="hoyer")
        default_weight, default_threshold = 1.0, 0.1
    else:
        prior = GammaGaussianPrior(a=args.prior_a, b=args.prior_b)
        default_weight, default_threshold = 5.0 / n_train, 0.05
    prior_weight = args.prior_weight if args.prior_weight is not None else default_weight
    threshold = args.threshold if args.threshold is not None else default_threshold
    callback = LowRankCallback(
        method="svd", rank=1024, prior=prior, prior_weight=prior_weight,
        threshold=threshold, shrink_epochs=shrink_epochs, verbose=False,
        filter_fn=lambda module, name: name != "features.0",  # the 3-channel stem stays dense
    )
    _trainer(epochs, [callback]).fit(auto, loader)
    ranks = layer_ranks(auto)
    auto_row = {"run": "automatic", "params": _params(auto), "accuracy": _accuracy(auto, x_test, y_test),
                "seconds": round(time.time() - start, 1), "ranks": ranks}

    # dense, then compressed after training at the same ranks
    start = time.time()
    torch.manual_seed(0)
    dense = SmallCNN(width, epochs=epochs)
    _trainer(epochs, []).fit(dense, loader)
    dense_row = {"run": "dense", "params": _params(dense), "accuracy": _accuracy(dense, x_test, y_test),
                 "seconds": round(time.time() - start, 1)}
    compress_(dense, {name: SVDConfig(rank=values[0]) for name, values in ranks.items()})
    post_row = {"run": "post-hoc SVD", "params": _params(dense), "accuracy": _accuracy(dense, x_test, y_test)}
    dense.hparams.lr, dense.hparams.epochs = 0.005, 1
    _trainer(1, []).fit(dense, loader)
    tuned_row = {"run": "post-hoc SVD + 1 epoch", "params": _params(dense),
                 "accuracy": _accuracy(dense, x_test, y_test), "seconds": round(time.time() - start, 1)}

    rows = [dense_row, auto_row, post_row, tuned_row]
    for row in rows:
        row["compression"] = round(dense_params / row["params"], 3)
    print(f"{'run':<26} {'params':>9} {'compr.':>7} {'acc.':>7}")
    for row in rows:
        print(f"{row['run']:<26} {row['params']:>9} {row['compression']:>6.2f}x {row['accuracy']:>7.4f}")
    print("automatic ranks:", ranks)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"quick": args.quick, "epochs": epochs, "train_images": n_train, "width": width,
               "threshold": threshold, "prior": {"kind": args.prior, **prior.to_dict(), "weight": prior_weight}, "shrink_epochs": shrink_epochs, "rows": rows}
    RESULTS.write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
