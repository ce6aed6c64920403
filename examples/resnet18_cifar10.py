"""ResNet-18 on CIFAR-10 in one ``Trainer.fit``: train dense, factorize, prune, quantize to int8, and report each stage.

The callbacks do the work: ``TensorCompressionCallback`` factorizes the network to ``--target-ratio`` fewer
parameters at the start of epoch ``--compress-epoch`` (ranks allocated across layers, the best of SVD / Tucker / CP
per layer), ``PruningCallback`` removes ``--pruning-ratio`` of the channels (the factorized layers' inner ranks
included) at the start of ``--prune-epoch``, and ``QuantizationCallback`` converts the trained network to int8
(PT2E, calibrated on validation batches) when ``fit`` ends and exports it as a ``torch.export`` program. A
``KeepCopy`` callback listed before them copies the network just before each rewrite, so the report measures
dense -> compressed -> pruned -> int8: test accuracy, parameters, bytes, MACs and CPU latency at batch 1, printed
and written to ``<out>/report.json``.

    # the full run, on a GPU (the whole training set, a full-width ResNet-18)
    python examples/resnet18_cifar10.py --data ../shared/data/cifar10/cifar10_jpeg_packed.npz
    # from torchvision's files (a folder holding cifar-10-batches-py)
    python examples/resnet18_cifar10.py --cifar-root ~/datasets --width 0.5 --epochs 20
    # a CPU check of the whole pipeline in about a minute: 1/8-width network, 3 epochs of 10 batches
    python examples/resnet18_cifar10.py --quick --data ../shared/data/cifar10/cifar10_subset_uint8.npz

``--data`` takes the packed JPEG file, the decoded 5000-image subset or a folder holding either (see
``tetra_lightning.data.load_cifar10``); without ``--data`` and ``--cifar-root`` it reads ``$TETRA_DATA_DIR/cifar10``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from tetra_lightning import PruningCallback, QuantizationCallback, TensorCompressionCallback
from tetra_lightning.data import CIFAR10DataModule
from tetra_lightning.models import cifar_resnet18
from tetra_lightning.report import model_report


class LitResNet18(pl.LightningModule):
    """CIFAR ResNet-18 (``self.net``) trained with SGD, Nesterov momentum and a cosine schedule over the epochs."""

    def __init__(self, width: float = 1.0, lr: float = 0.1, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = cifar_resnet18(num_classes=10, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True,
                                    weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return [optimizer], [scheduler]


class KeepCopy(Callback):
    """Copies ``pl_module.net`` at the start of ``epoch``, before the callbacks listed after this one rewrite it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.network: nn.Module | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and self.network is None:
            self.network = copy.deepcopy(pl_module.net).eval()


class Int8(nn.Module):
    """The converted int8 graph with no-op ``train()``/``eval()`` (exported graphs refuse them, and
    ``model_report`` switches modes around its measurements)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> Int8:
        return self


def accuracy(network: nn.Module, loader: Any, stride: int) -> float:
    """Accuracy on every ``stride``-th test image (CIFAR-10's test files are sorted by class: a stride keeps the
    classes balanced)."""
    correct = total = seen = 0
    with torch.no_grad():
        for x, y in loader:
            keep = torch.arange(seen, seen + len(y)) % stride == 0
            seen += len(y)
            if keep.any():
                x, y = x.cpu()[keep], y.cpu()[keep]
                correct += int((network(x).argmax(1) == y).sum())
                total += len(y)
    return correct / max(total, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="packed .npz, subset .npz, or a folder holding one")
    parser.add_argument("--cifar-root", default=None, help="torchvision root with cifar-10-batches-py")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (0.25: 16/32/64/128)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--compress-epoch", type=int, default=None, help="default: epochs // 3")
    parser.add_argument("--prune-epoch", type=int, default=None, help="default: 2 * epochs // 3")
    parser.add_argument("--target-ratio", type=float, default=4.5, help="dense / factorized parameters")
    parser.add_argument("--pruning-ratio", type=float, default=0.3, help="fraction of the channels removed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--test-stride", type=int, default=1, help="test on every n-th test image")
    parser.add_argument("--out", default="resnet18_cifar10_out", help="folder for report.json and the int8 model")
    parser.add_argument("--quick", action="store_true", help="CPU check: width 1/8, 3 epochs of 10 batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.epochs, args.batch_size, args.target_ratio = 0.125, 3, 64, 3.0
        args.limit_train_batches, args.test_stride = 10, 10
    args.compress_epoch = args.epochs // 3 if args.compress_epoch is None else args.compress_epoch
    args.prune_epoch = 2 * args.epochs // 3 if args.prune_epoch is None else args.prune_epoch
    if not 0 < args.compress_epoch < args.prune_epoch < args.epochs:
        parser.error(f"need 0 < --compress-epoch < --prune-epoch < --epochs, got {args.compress_epoch}, "
                     f"{args.prune_epoch}, {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    gpu = torch.cuda.is_available() and not args.quick
    # channels_last is faster on GPUs; on the CPU torch 2.14 aborts in the backward of stride-2 1x1 convs with 2-4
    # input channels in that layout, which factorized downsampling layers can have.
    data = CIFAR10DataModule(args.data, cifar_root=args.cifar_root, batch_size=args.batch_size,
                             val_size=1000 if args.quick else 5000, channels_last=gpu)
    model = LitResNet18(width=args.width, lr=args.lr)

    dense, compressed = KeepCopy(args.compress_epoch), KeepCopy(args.prune_epoch)
    compression = TensorCompressionCallback(target_ratio=args.target_ratio, start_epoch=args.compress_epoch)
    pruning = PruningCallback(pruning_ratio=args.pruning_ratio, start_epoch=args.prune_epoch)
    quantization = QuantizationCallback(mode="int8", export_path=out / "resnet18_int8.pt2")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=2 if args.quick else None,
        logger=False,
        enable_checkpointing=False,
        callbacks=[dense, compressed, compression, pruning, quantization],  # the copies first
    )
    trainer.fit(model, datamodule=data)

    stages = {"dense": dense.network, "compressed": compressed.network, "pruned": model.net,
              "int8": Int8(quantization.quantized_model)}
    data.trainer = None  # the test batches on the CPU, where the report measures
    example = torch.randn(1, 3, 32, 32)
    rows = []
    for name, network in stages.items():
        network = network.cpu().eval()
        measured = model_report(network, example, repeats=5 if args.quick else 20, print_table=False)
        row = {"stage": name, "test_acc": accuracy(network, data.test_dataloader(), args.test_stride),
               **measured.to_dict()}
        if name == "int8":
            row["params"] = rows[-1]["params"]  # the pruned network's weights, stored as int8 buffers
        rows.append(row)

    print(f"\n{'stage':<11}{'test acc':>9}{'params':>12}{'MiB':>8}{'MMACs':>9}{'CPU ms b1':>11}")
    for row in rows:
        print(f"{row['stage']:<11}{100 * row['test_acc']:>8.2f}%{row['params']:>12,}{row['bytes'] / 2**20:>8.3f}"
              f"{row['macs'] / 1e6:>9.2f}{row['latency_ms']:>11.2f}")
    report = {"args": vars(args), "stages": rows, "int8_model": str(out / "resnet18_int8.pt2"),
              "layers": {"compression": compression.layer_table, "pruning": pruning.layer_table}}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out / 'report.json'} and {out / 'resnet18_int8.pt2'}")
    return {**report, "model": model, "quantized_model": quantization.quantized_model}


if __name__ == "__main__":
    main()
