"""The main job, offline: tune a small CNN with TetraOpt, then compress, prune and quantize its best config.

``make demo`` (or ``python -m tetra_lightning.demo``) runs on scikit-learn's bundled 8x8 digits, so it needs no
download, and takes two to three minutes on two CPU cores:

1. **tune**: :class:`~tetra_lightning.tuner.TetraOptTuner` runs 16 trials (3 epochs each) of
   :class:`~tetra_lightning.models.DigitsCNN` over width, learning rate, weight decay and batch size, monitoring
   accuracy on a validation split. The study
   lives in ``<out>/tune.db``: run the demo again and the finished trials are reused (``--fresh`` tunes again).
2. **compress, prune, quantize**: the best config trains in one ``Trainer.fit`` with three callbacks.
   :class:`~tetra_lightning.callbacks.TensorCompressionCallback` factorizes the layers 4x at the start of epoch 4,
   :class:`~tetra_lightning.callbacks.PruningCallback` removes 30% of the channels (the factorized layers' inner
   ranks included) at the start of epoch 8, and :class:`~tetra_lightning.callbacks.QuantizationCallback` converts
   the trained network to int8 (PT2E, calibrated on validation batches) when ``fit`` ends.
   :class:`~tetra_lightning.demo.snapshots.StageSnapshots` copies the network just before each rewrite, so every
   stage is measured as it was: *dense* after 4 epochs, *compressed* after 4 more epochs of fine-tuning, *pruned* at the end of ``fit``, and
   *int8* = the pruned network quantized.
3. **report**: accuracy on a held-out test split (no trial and no stage trains or selects on it), parameters,
   bytes, MACs and CPU latency at batch 1 of every stage, printed and written to ``<out>/report.json`` and
   ``<out>/report.md``, with ``<out>/accuracy_vs_size.png`` and a W&B run (offline unless you are logged in to
   W&B, ``--no-wandb`` to skip) holding the trials table, the callbacks' per-layer tables, the stage table and the
   plot.

``python -m tetra_lightning.demo --data cifar10 --data-dir DIR`` runs the same pipeline on CIFAR-10 with a narrow
CIFAR ResNet-18 (:class:`~tetra_lightning.models.CIFARResNet18`); ``DIR`` holds ``cifar10_jpeg_packed.npz`` or
torchvision's ``cifar-10-batches-py``. That run is meant for a GPU. ``--quick`` shrinks everything to seconds (for the tests).

The package is an application on top of the library: ``recipe`` (what runs), ``pipeline`` (the three steps),
``snapshots``, ``measure``, ``output`` and ``wandb_run`` (the report), ``cli`` (the command line). Nothing in
``tetra_lightning`` imports it; its models and data module live in :mod:`tetra_lightning.models` and
:mod:`tetra_lightning.data`.
"""

from __future__ import annotations

from tetra_lightning.data import HeldOutDigitsDataModule
from tetra_lightning.demo.cli import main
from tetra_lightning.demo.output import format_table, plot_accuracy_vs_size
from tetra_lightning.demo.pipeline import run_demo
from tetra_lightning.demo.recipe import DATASETS, STAGES, Recipe
from tetra_lightning.demo.snapshots import StageSnapshots
from tetra_lightning.demo.wandb_run import wandb_mode
from tetra_lightning.models import CIFARResNet18, DigitsCNN

__all__ = [
    "DATASETS",
    "STAGES",
    "CIFARResNet18",
    "DigitsCNN",
    "HeldOutDigitsDataModule",
    "Recipe",
    "StageSnapshots",
    "format_table",
    "main",
    "plot_accuracy_vs_size",
    "run_demo",
    "wandb_mode",
]
