"""The main job, offline: train a small CNN with Lightning, compress it mid-training, report what changed.

Run it with ``make demo`` or ``python -m tetra_lightning.demo``. It uses scikit-learn's bundled digits, so it
needs no download and finishes in about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import Tensor, nn

__all__ = ["DigitsCNN", "main", "run_demo"]


class DigitsCNN(LightningModule):
    """A small CNN for 8x8 digit images, trained with SGD and a cosine schedule.

    Args:
        width: channels of the first conv; later convs use 2x and 4x.
        lr: peak learning rate of SGD.
        num_classes: number of output classes.

    Example:
        >>> model = DigitsCNN(width=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, lr: float = 0.05, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", on_epoch=True, on_step=False)
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train", on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        max_epochs = self.trainer.max_epochs if self.trainer is not None and self.trainer.max_epochs else 10
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _accuracy(model: nn.Module, loader: Any) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def run_demo(
    epochs: int = 8,
    start_epoch: int = 3,
    target_ratio: float = 4.0,
    method: str = "auto",
    width: int = 32,
    out_dir: str | Path = "outputs/demo",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a dense and a compressed ``DigitsCNN`` for the same epochs and report both.

    Args:
        epochs: training epochs of each run.
        start_epoch: epoch at which :class:`~tetra_lightning.TensorCompressionCallback` decomposes the model.
        target_ratio: whole-model parameter compression to reach.
        method: decomposition method (``"auto"``, ``"svd"``, ``"cp"``, ``"tucker"``, ``"tt"``).
        width: channels of the CNN's first conv.
        out_dir: folder for the JSON summary.
        seed: global seed.
        progress: show Lightning's progress bars.

    Returns:
        A JSON-safe dict with accuracy, parameters, bytes, MACs and latency of both models and their ratios.
    """
    from tetra_lightning.callbacks import TensorCompressionCallback
    from tetra_lightning.data import DigitsDataModule
    from tetra_lightning.report import compare, model_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    reports = {}
    for name in ("dense", "compressed"):
        seed_everything(seed, workers=True)
        dm = DigitsDataModule(batch_size=64, seed=seed)
        model = DigitsCNN(width=width)
        callbacks = []
        if name == "compressed":
            callbacks.append(TensorCompressionCallback(method=method, target_ratio=target_ratio, start_epoch=start_epoch))
        trainer = Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=progress, enable_model_summary=False, callbacks=callbacks,
        )
        started = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        seconds = time.perf_counter() - started
        acc = _accuracy(model, dm.val_dataloader())
        example = torch.zeros(1, 1, 8, 8)
        print(f"\n== {name} model ==")
        # One thread: on a small shared CPU, multi-threaded timings of a tiny model measure the scheduler.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            report = model_report(model, example, print_table=True)
        finally:
            torch.set_num_threads(threads)
        reports[name] = report
        results[name] = {"val_acc": acc, "fit_seconds": seconds, **report.to_dict()}
        if callbacks:
            results[name]["layers"] = callbacks[0].layer_table
    ratios = compare(reports["dense"], reports["compressed"])
    results["ratios"] = ratios
    results["accuracy_drop_points"] = 100 * (results["dense"]["val_acc"] - results["compressed"]["val_acc"])
    print("\n== summary ==")
    print(f"dense accuracy      {100 * results['dense']['val_acc']:.2f}%")
    print(f"compressed accuracy {100 * results['compressed']['val_acc']:.2f}%")
    for key, value in ratios.items():
        print(f"{key:<20}{value:.2f}x")
    (out / "demo.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {out / 'demo.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point of ``python -m tetra_lightning.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--start-epoch", type=int, default=3)
    parser.add_argument("--target-ratio", type=float, default=4.0)
    parser.add_argument("--method", default="auto", choices=["auto", "svd", "cp", "tucker", "tt"])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out-dir", default="outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return run_demo(
        epochs=args.epochs, start_epoch=args.start_epoch, target_ratio=args.target_ratio, method=args.method,
        width=args.width, out_dir=args.out_dir, seed=args.seed, progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
