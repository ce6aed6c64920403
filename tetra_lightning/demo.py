"""The main job, offline: tune a small CNN with TetraOpt, then compress, prune and quantize its best config.

``make demo`` (or ``python -m tetra_lightning.demo``) runs on scikit-learn's bundled 8x8 digits, so it needs no
download, and takes two to three minutes on two CPU cores:

1. **tune**: :class:`~tetra_lightning.tuner.TetraOptTuner` runs 16 trials (3 epochs each) of :class:`DigitsCNN`
   over width, learning rate, weight decay and batch size, monitoring accuracy on a validation split. The study
   lives in ``<out>/tune.db``: run the demo again and the finished trials are reused (``--fresh`` tunes again).
2. **compress, prune, quantize**: the best config trains in one ``Trainer.fit`` with three callbacks.
   :class:`~tetra_lightning.callbacks.TensorCompressionCallback` factorizes the layers 4x at the start of epoch 4,
   :class:`~tetra_lightning.callbacks.PruningCallback` removes 30% of the channels (the factorized layers' inner
   ranks included) at the start of epoch 8, and :class:`~tetra_lightning.callbacks.QuantizationCallback` converts
   the trained network to int8 (PT2E, calibrated on validation batches) when ``fit`` ends.
   :class:`StageSnapshots` copies the network just before each rewrite, so every stage is measured as it was:
   *dense* after 4 epochs, *compressed* after 4 more epochs of fine-tuning, *pruned* at the end of ``fit``, and
   *int8* = the pruned network quantized.
3. **report**: accuracy on a held-out test split (no trial and no stage trains or selects on it), parameters,
   bytes, MACs and CPU latency at batch 1 of every stage, printed and written to ``<out>/report.json`` and
   ``<out>/report.md``, with ``<out>/accuracy_vs_size.png`` and a W&B run (offline unless you are logged in to
   W&B, ``--no-wandb`` to skip) holding the trials table, the callbacks' per-layer tables, the stage table and the
   plot.

``python -m tetra_lightning.demo --data cifar10 --data-dir DIR`` runs the same pipeline on CIFAR-10 with a narrow
CIFAR ResNet-18 (:class:`CIFARResNet18`); ``DIR`` holds ``cifar10_jpeg_packed.npz`` or torchvision's
``cifar-10-batches-py``. That run is meant for a GPU. ``--quick`` shrinks everything to seconds (for the tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from torch import Tensor, nn

from tetra_lightning.data.digits import DigitsDataModule, load_digits_tensors

__all__ = [
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

STAGES = ("dense", "compressed", "pruned", "int8")
DATASETS = ("digits", "cifar10")


# ------------------------------------------------------------------------------------------------ models


class _Classifier(LightningModule):
    """Cross-entropy training of ``self.net`` with SGD (Nesterov) and a cosine schedule over ``max_epochs``.

    Logs ``{train,val,test}_loss`` and ``{train,val,test}_acc`` per epoch. Subclasses build ``self.net`` (the one
    child with parameters, which :class:`~tetra_lightning.callbacks.QuantizationCallback` quantizes).
    """

    net: nn.Module

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
        opt = torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True,
            weight_decay=self.hparams.weight_decay,
        )
        max_epochs = self.trainer.max_epochs if self.trainer is not None and self.trainer.max_epochs else 10
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class DigitsCNN(_Classifier):
    """A small CNN for 8x8 digit images, trained with SGD and a cosine schedule.

    Args:
        width: channels of the first conv; later convs use 2x and 4x.
        lr: peak learning rate of SGD.
        num_classes: number of output classes.
        weight_decay: L2 penalty of SGD.

    Example:
        >>> model = DigitsCNN(width=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, lr: float = 0.05, num_classes: int = 10, weight_decay: float = 5e-4) -> None:
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


class CIFARResNet18(_Classifier):
    """The CIFAR-style ResNet-18 of :func:`tetra_lightning.models.cifar_resnet18`, optionally narrower.

    Args:
        width: channel multiplier (``0.25``: 16/32/64/128 channels, 0.70M parameters; ``1.0``: 11.17M).
        lr: peak learning rate of SGD.
        num_classes: number of output classes.
        weight_decay: L2 penalty of SGD.

    Example:
        >>> model = CIFARResNet18(width=0.0625)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: float = 0.25, lr: float = 0.1, num_classes: int = 10, weight_decay: float = 5e-4) -> None:
        from tetra_lightning.models import cifar_resnet18

        super().__init__()
        self.save_hyperparameters()
        self.net = cifar_resnet18(num_classes=num_classes, width=width)


# ------------------------------------------------------------------------------------------------ data


class HeldOutDigitsDataModule(DigitsDataModule):
    """The digits split three ways: train, validation (tuning and monitoring) and a held-out test split.

    :class:`~tetra_lightning.data.DigitsDataModule` validates and tests on the same split; the demo selects the
    best trial on the validation split, so its test accuracy must come from images that no choice saw. The test
    split is drawn first with ``seed``, so it is the same for every batch size and validation fraction.

    Args:
        batch_size: training batch size.
        val_fraction: fraction of the images left after the test split that are held out for validation.
        test_fraction: fraction of all 1797 images held out for testing, in (0, 1).
        seed: seed of the split and the shuffling.

    Raises:
        ValueError: for a non-positive ``batch_size`` or a fraction outside (0, 1).

    Example:
        >>> dm = HeldOutDigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> dm.num_train, dm.num_val, dm.num_test
        (1150, 288, 359)
    """

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(
                f"`test_fraction` must be in (0, 1), got {test_fraction!r}. Pass e.g. `test_fraction=0.2`."
            )
        self.test_fraction = test_fraction

    @property
    def num_test(self) -> int:
        """Test images (after :meth:`setup`)."""
        return self._splits["test"][0].shape[0]

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and split them into train, validation and test (once)."""
        if self._splits:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
        num_test = round(self.test_fraction * images.shape[0])
        num_val = round(self.val_fraction * (images.shape[0] - num_test))
        test_index = order[:num_test]
        val_index = order[num_test : num_test + num_val]
        train_index = order[num_test + num_val :]
        mean, std = images[train_index].mean(), images[train_index].std()
        images = (images - mean) / std
        self._splits = {
            "train": (images[train_index], labels[train_index]),
            "val": (images[val_index], labels[val_index]),
            "test": (images[test_index], labels[test_index]),
        }

    def test_dataloader(self) -> Any:
        """The held-out test split, in order."""
        return self._loader("test", shuffle=False)


# ------------------------------------------------------------------------------------------------ snapshots


class StageSnapshots(Callback):
    """Keeps a copy of the network at the start of given epochs, before that epoch's rewrites.

    Lightning calls callbacks in list order, so list this one before the structural callbacks whose rewrites it
    should precede; a snapshot taken at the epoch where :class:`~tetra_lightning.callbacks.TensorCompressionCallback`
    starts is the dense network as it was trained so far. Copies are on the training device, in eval mode.

    Args:
        epochs: ``{stage_name: epoch}``; each stage is copied at the start of its epoch (never during the sanity
            check).
        submodule: attribute name of the network inside the LightningModule.

    Raises:
        ValueError: for an epoch that is not an int >= 0.

    Example:
        >>> import lightning.pytorch as pl
        >>> from tetra_lightning.data import DigitsDataModule
        >>> snapshots = StageSnapshots({"after_one_epoch": 1})
        >>> trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[snapshots],
        ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(DigitsCNN(width=4), datamodule=DigitsDataModule())
        >>> snapshots.epochs_taken
        {'after_one_epoch': 1}
        >>> sum(p.numel() for p in snapshots.models["after_one_epoch"].parameters())
        4038
    """

    def __init__(self, epochs: Mapping[str, int], submodule: str = "net") -> None:
        for name, epoch in epochs.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(
                    f"`epochs[{name!r}]` must be an int >= 0 (the epoch at whose start to copy the network), "
                    f"got {epoch!r}."
                )
        self.epochs = dict(epochs)
        self.submodule = submodule
        self.models: dict[str, nn.Module] = {}
        self.epochs_taken: dict[str, int] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, epoch in self.epochs.items():
            if epoch == trainer.current_epoch and name not in self.models:
                self.models[name] = copy.deepcopy(pl_module.get_submodule(self.submodule)).eval()
                self.epochs_taken[name] = epoch


class _Int8Network(nn.Module):
    """Holds a converted PT2E graph; ``train()``/``eval()`` are no-ops (exported graphs refuse them, and
    :func:`~tetra_lightning.report.model_report` switches modes)."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, x: Tensor) -> Tensor:
        return self.graph_module(x)

    def train(self, mode: bool = True) -> _Int8Network:
        return self


# ------------------------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Recipe:
    """How much the demo trains: trials, epochs and the epochs of the rewrites.

    Attributes:
        trials: tuning trials (COMPLETE + PRUNED) the study should hold.
        trial_epochs: epochs of each trial.
        epochs: epochs of the final fit.
        compress_epoch: epoch at whose start the network is factorized.
        prune_epoch: epoch at whose start channels are pruned.
        target_ratio: dense / compressed parameters after factorizing.
        pruning_ratio: fraction of the channels removed by pruning.
        limit_train_batches: training batches per epoch (Lightning's ``limit_train_batches``).
        limit_val_batches: validation batches per epoch.
        test_stride: the report evaluates every ``test_stride``-th test image (1: all; CIFAR-10's test set is
            sorted by class, so a stride keeps the classes balanced where the first images would not).
        latency_repeats: timed forward passes per latency median.

    Example:
        >>> Recipe.for_data("digits").trials
        16
        >>> Recipe.for_data("digits", quick=True).epochs
        3
    """

    trials: int
    trial_epochs: int
    epochs: int
    compress_epoch: int
    prune_epoch: int
    target_ratio: float = 4.0
    pruning_ratio: float = 0.3
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    test_stride: int = 1
    latency_repeats: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.compress_epoch < self.prune_epoch < self.epochs:
            raise ValueError(
                "The recipe needs 0 < compress_epoch < prune_epoch < epochs, got "
                f"compress_epoch={self.compress_epoch}, prune_epoch={self.prune_epoch}, epochs={self.epochs}. "
                "Leave at least one epoch of training before each rewrite and after pruning."
            )
        if self.trials < 1 or self.trial_epochs < 1:
            raise ValueError(f"`trials` and `trial_epochs` must be >= 1, got {self.trials} and {self.trial_epochs}.")
        if self.test_stride < 1:
            raise ValueError(f"`test_stride` must be >= 1, got {self.test_stride}. Pass 1 to test on every image.")

    @classmethod
    def for_data(cls, data: str, quick: bool = False) -> Recipe:
        """The default recipe of a data set.

        Args:
            data: ``"digits"`` or ``"cifar10"``.
            quick: a run of seconds on a CPU (for tests), instead of the full demo.

        Returns:
            The recipe.

        Raises:
            ValueError: for an unknown ``data``.
        """
        _check_data(data)
        if data == "digits":
            if quick:
                return cls(trials=3, trial_epochs=1, epochs=3, compress_epoch=1, prune_epoch=2, target_ratio=3.0,
                           latency_repeats=5)
            return cls(trials=16, trial_epochs=3, epochs=12, compress_epoch=4, prune_epoch=8)
        if quick:
            return cls(trials=2, trial_epochs=1, epochs=3, compress_epoch=1, prune_epoch=2, target_ratio=3.0,
                       limit_train_batches=20, limit_val_batches=4, test_stride=20, latency_repeats=3)
        return cls(trials=16, trial_epochs=3, epochs=15, compress_epoch=5, prune_epoch=10, latency_repeats=20)


def _check_data(data: str) -> None:
    if data not in DATASETS:
        raise ValueError(
            f"`data` must be one of {', '.join(map(repr, DATASETS))}, got {data!r}. Pass data='digits' for the "
            "bundled digits or data='cifar10' with `data_dir` pointing at CIFAR-10."
        )


@dataclass
class _Task:
    """Everything the pipeline needs to know about one data set."""

    search_space: dict[str, Any]
    model_fn: Callable[[dict[str, Any]], LightningModule]
    datamodule_fn: Callable[[dict[str, Any]], LightningDataModule]
    input_shape: tuple[int, ...]
    accelerator: str


def _task(data: str, data_dir: str | os.PathLike[str] | None, quick: bool, seed: int) -> _Task:
    from tetra_lightning.optim import Categorical, Float

    if data == "digits":
        return _Task(
            search_space={
                "width": Categorical([8, 16, 32, 48]),
                "lr": Float(0.01, 0.5, log=True, grid=8),
                "weight_decay": Float(1e-5, 1e-2, log=True, grid=4),
                "batch_size": Categorical([32, 64, 128]),
            },
            model_fn=_seeded(seed, DigitsCNN),
            datamodule_fn=lambda cfg: HeldOutDigitsDataModule(batch_size=cfg["batch_size"], seed=seed),
            input_shape=(1, 1, 8, 8),
            accelerator="cpu",  # a GPU only adds launch overhead to an 8x8 CNN
        )
    from tetra_lightning.data import CIFAR10DataModule, load_cifar10

    arrays = load_cifar10(data_dir)  # decoded once, shared by every trial and the final fit
    val_size = 1000 if quick else 5000
    accelerator = "cpu" if quick else "auto"
    # channels_last speeds up GPUs; on the CPU (torch 2.14) the backward of a stride-2 1x1 conv with 2-4 input
    # channels in channels_last aborts the process, and factorized downsampling layers can have such small ranks.
    channels_last = not quick and torch.cuda.is_available()
    return _Task(
        search_space={
            "width": Categorical([0.125, 0.1875] if quick else [0.125, 0.25, 0.5]),
            "lr": Float(0.02, 0.5, log=True, grid=8),
            "weight_decay": Float(1e-5, 1e-3, log=True, grid=4),
            "batch_size": Categorical([64, 128] if quick else [128, 256]),
        },
        model_fn=_seeded(seed, CIFARResNet18),
        datamodule_fn=lambda cfg: CIFAR10DataModule(
            arrays, batch_size=cfg["batch_size"], val_size=val_size, seed=seed, channels_last=channels_last
        ),
        input_shape=(1, 3, 32, 32),
        accelerator=accelerator,
    )


def _seeded(seed: int, model_class: Callable[..., LightningModule]) -> Callable[[dict[str, Any]], LightningModule]:
    # Every trial starts from the same initialisation (the datamodule already seeds the batches), so trials differ
    # only by their config and the demo picks the same config on every run.
    def build(config: dict[str, Any]) -> LightningModule:
        torch.manual_seed(seed)
        return model_class(width=config["width"], lr=config["lr"], weight_decay=config["weight_decay"])

    return build


# ------------------------------------------------------------------------------------------------ pipeline


def run_demo(
    data: str = "digits",
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "demo_out",
    quick: bool = False,
    trials: int | None = None,
    method: str = "auto",
    use_wandb: bool = True,
    fresh: bool = False,
    seed: int = 0,
    progress: bool = True,
    recipe: Recipe | None = None,
    threads: int | None = None,
    compile_latency: bool = False,
) -> dict[str, Any]:
    """Tune, then train the best config with compression, pruning and int8 quantization, and report every stage.

    Args:
        data: ``"digits"`` (bundled with scikit-learn) or ``"cifar10"``.
        data_dir: CIFAR-10 location accepted by :func:`tetra_lightning.data.load_cifar10` (the packed file, the
            decoded subset, or a folder with either or with torchvision's ``cifar-10-batches-py``); ``None`` reads
            ``$TETRA_DATA_DIR/cifar10``. Unused for digits.
        out_dir: folder for the study, the report, the plot and the W&B run.
        quick: shrink the run to seconds (few trials, few batches).
        trials: number of tuning trials (default: the recipe's, 16).
        method: decomposition of :class:`~tetra_lightning.callbacks.TensorCompressionCallback`.
        use_wandb: log to a W&B run (offline unless logged in or ``WANDB_MODE`` says otherwise).
        fresh: delete an earlier study of the same name in ``out_dir`` and tune again.
        seed: seed of the data split, the tuner and the final fit.
        progress: show the tuner's bar over trials and Lightning's bar for the final fit.
        recipe: epochs and rewrite schedule (default: :meth:`Recipe.for_data`).
        threads: torch CPU threads while tuning and training (default: 1 for digits and ``quick``, where more
            threads only add synchronisation to tiny kernels and a busy machine makes OpenMP's spinning threads
            much slower; torch's default otherwise). Restored on return.
        compile_latency: also time every stage after ``torch.compile`` (Inductor, freezing), which lowers the
            int8 q/dq pairs to int8 kernels; adds a compile of about 10-30 s per stage on a CPU.

    Returns:
        The JSON-safe report also written to ``<out_dir>/report.json``: ``settings``, ``tuning`` (best params,
        best value, every trial), ``stages`` (one row per stage: ``test_acc``, ``params``, ``bytes``, ``macs``,
        ``latency_ms``, ``epoch``), ``ratios`` (against the dense stage), ``files`` and ``seconds``.

    Raises:
        ValueError: for an unknown ``data`` or a non-positive ``trials`` / ``threads``.
        FileNotFoundError: for ``data="cifar10"`` when no CIFAR-10 is found at ``data_dir``.
    """
    _check_data(data)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise ValueError(f"`trials` must be an int >= 1, got {trials!r}. Pass e.g. trials=16.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be None or an int >= 1, got {threads!r}. Pass e.g. threads=1.")
    if threads is None and (data == "digits" or quick):
        threads = 1
    previous_threads = torch.get_num_threads()
    pytree_log = logging.getLogger("torch.utils._pytree")
    previous_level = pytree_log.level
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            # Noise from library versions, printed once per trial, that would break the progress bars: Lightning's
            # use of a deprecated torch pytree API, and torchao registering an Enum with torch's pytree at import.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
            pytree_log.setLevel(logging.ERROR)
            return _run(data, data_dir, Path(out_dir), quick, trials, method, use_wandb, fresh, seed, progress,
                        recipe, compile_latency)
    finally:
        torch.set_num_threads(previous_threads)
        pytree_log.setLevel(previous_level)


def _run(
    data: str,
    data_dir: str | os.PathLike[str] | None,
    out: Path,
    quick: bool,
    trials: int | None,
    method: str,
    use_wandb: bool,
    fresh: bool,
    seed: int,
    progress: bool,
    recipe: Recipe | None,
    compile_latency: bool,
) -> dict[str, Any]:
    recipe = recipe or Recipe.for_data(data, quick=quick)
    if trials is not None:
        recipe = Recipe(**{**asdict(recipe), "trials": trials})
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    task = _task(data, data_dir, quick, seed)

    print(f"== 1/3 tune: {recipe.trials} trials of {recipe.trial_epochs} epoch(s) with TetraOpt ==", flush=True)
    result = _tune(task, recipe, out, f"demo-{data}{'-quick' if quick else ''}", fresh, seed, progress)
    seconds["tune"] = time.perf_counter() - started
    best = dict(result.best_params)
    print(f"best val_acc {result.best_value:.4f} with {_format_params(best)}", flush=True)

    print(f"== 2/3 train the best config for {recipe.epochs} epochs: compress at epoch {recipe.compress_epoch}, "
          f"prune at epoch {recipe.prune_epoch}, int8 at the end ==", flush=True)
    logger = _wandb_logger(out, data, best, recipe) if use_wandb else None
    fit_started = time.perf_counter()
    model, datamodule, callbacks = _train_best(task, recipe, best, method, logger, seed, progress)
    seconds["fit"] = time.perf_counter() - fit_started

    print("== 3/3 measure every stage ==", flush=True)
    report_started = time.perf_counter()
    snapshots, compression, pruning, quantization = callbacks
    networks: dict[str, nn.Module] = {
        "dense": snapshots.models["dense"],
        "compressed": snapshots.models["compressed"],
        "pruned": copy.deepcopy(model.net).eval(),
        "int8": _Int8Network(quantization.quantized_model),
    }
    epochs = {**snapshots.epochs_taken, "pruned": recipe.epochs, "int8": recipe.epochs}
    stages = _measure_stages(networks, epochs, datamodule, task.input_shape, recipe, compile_latency)
    ratios = {row["stage"]: _ratios(stages[0], row) for row in stages}
    seconds["report"] = time.perf_counter() - report_started

    report: dict[str, Any] = {
        "data": data,
        "quick": quick,
        "settings": {"recipe": asdict(recipe), "method": method, "seed": seed, "threads": torch.get_num_threads()},
        "tuning": _tuning_summary(result),
        "stages": stages,
        "ratios": ratios,
        "layers": {"compression": compression.layer_table, "pruning": pruning.layer_table},
        "latency": {"device": "cpu", "batch_size": 1, "threads": 1, "repeats": recipe.latency_repeats},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count()},
    }
    table = format_table(stages)
    print(f"\n{table}\n", flush=True)
    png = plot_accuracy_vs_size(stages, out / "accuracy_vs_size.png", title=f"{data}: accuracy vs size")
    report["files"] = {
        "report_json": str(out / "report.json"),
        "report_md": str(out / "report.md"),
        "plot": str(png),
        "study": str(out / "tune.db"),
    }
    if logger is not None:
        report["files"]["wandb_run"] = _log_report_to_wandb(logger, result, stages, png)
    seconds["total"] = time.perf_counter() - started
    report["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(_markdown(report))
    for name, path in report["files"].items():
        print(f"{name:<12}{path}")
    print(f"done in {seconds['total']:.0f}s (tune {seconds['tune']:.0f}s, fit {seconds['fit']:.0f}s, "
          f"report {seconds['report']:.0f}s)", flush=True)
    return report


def _tune(task: _Task, recipe: Recipe, out: Path, study_name: str, fresh: bool, seed: int, progress: bool) -> Any:
    import optuna

    from tetra_lightning.tuner import TetraOptTuner

    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    if fresh:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
    else:
        try:
            done = len(optuna.load_study(study_name=study_name, storage=storage).trials)
        except KeyError:
            done = 0
        if done:
            print(f"study {study_name!r} in {out / 'tune.db'} already holds {done} trial(s): reusing them "
                  "(pass --fresh to tune again)", flush=True)
    tuner = TetraOptTuner(
        task.search_space, monitor="val_acc", mode="max", budget=recipe.trials, storage=storage,
        study_name=study_name, objective="last", seed=seed, progress_bar=progress,
    )
    return tuner.fit(
        task.model_fn,
        datamodule_fn=task.datamodule_fn,
        trainer_kwargs={
            "max_epochs": recipe.trial_epochs,
            "accelerator": task.accelerator,
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            **_limits(recipe),
        },
    )


def _limits(recipe: Recipe) -> dict[str, int | float]:
    # Only what differs from Lightning's default, which otherwise prints a line per trial about using 100%.
    limits = {"limit_train_batches": recipe.limit_train_batches, "limit_val_batches": recipe.limit_val_batches}
    return {key: value for key, value in limits.items() if value != 1.0}


def _train_best(
    task: _Task, recipe: Recipe, best: dict[str, Any], method: str, logger: Any, seed: int, progress: bool
) -> tuple[LightningModule, LightningDataModule, tuple[Any, Any, Any, Any]]:
    from tetra_lightning.callbacks import PruningCallback, QuantizationCallback, TensorCompressionCallback

    seed_everything(seed, workers=True, verbose=False)
    model = task.model_fn(best)
    datamodule = task.datamodule_fn(best)
    # Listed first: it copies the network at the start of an epoch before the callbacks after it rewrite it.
    snapshots = StageSnapshots({"dense": recipe.compress_epoch, "compressed": recipe.prune_epoch})
    compression = TensorCompressionCallback(
        method=method, target_ratio=recipe.target_ratio, start_epoch=recipe.compress_epoch, verbose=False
    )
    pruning = PruningCallback(pruning_ratio=recipe.pruning_ratio, start_epoch=recipe.prune_epoch, verbose=False)
    quantization = QuantizationCallback(mode="int8", calibration_batches=8)
    trainer = Trainer(
        max_epochs=recipe.epochs,
        accelerator=task.accelerator,
        devices=1,
        logger=logger if logger is not None else False,
        callbacks=[snapshots, compression, pruning, quantization],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        **_limits(recipe),
    )
    trainer.fit(model, datamodule=datamodule)
    if quantization.quantized_model is None:  # pragma: no cover - on_fit_end always runs on rank zero here
        raise RuntimeError("QuantizationCallback produced no int8 model; see the log above.")
    return model, datamodule, (snapshots, compression, pruning, quantization)


def _measure_stages(
    networks: Mapping[str, nn.Module],
    epochs: Mapping[str, int],
    datamodule: LightningDataModule,
    input_shape: tuple[int, ...],
    recipe: Recipe,
    compile_latency: bool = False,
) -> list[dict[str, Any]]:
    from tetra_lightning.report import model_report

    datamodule.trainer = None  # evaluate on the CPU, whatever device trained
    loader = datamodule.test_dataloader()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    for name, network in networks.items():
        network = network.cpu() if name != "int8" else network
        accuracy = _accuracy(network, loader, recipe.test_stride)
        # One thread: on a small shared CPU, multi-threaded timings of a tiny model measure the scheduler.
        torch.set_num_threads(1)
        try:
            measured = model_report(network, example, repeats=recipe.latency_repeats, print_table=False)
            compiled = _compiled_latency(network, example, recipe.latency_repeats) if compile_latency else None
        finally:
            torch.set_num_threads(threads)
        row = {"stage": name, "epoch": int(epochs[name]), "test_acc": accuracy, **measured.to_dict()}
        if compile_latency:
            row["latency_compiled_ms"] = compiled
        if name == "int8":
            # The converted graph stores the weights as int8 buffers: count the float source's parameters; its MACs
            # are those of the float-equivalent convolutions (run by int8 kernels once lowered).
            row["params"] = row["trainable_params"] = rows[-1]["params"]
            row["note"] = "params of the float source; eager runs q/dq around float kernels (int8 needs torch.compile)"
        rows.append(row)
    return rows


def _compiled_latency(network: nn.Module, example: Tensor, repeats: int) -> float | None:
    from torch._inductor import config as inductor_config

    from tetra_lightning.report import measure_latency

    torch._dynamo.reset()
    previous = inductor_config.freezing
    inductor_config.freezing = True  # folds the weights; lowers PT2E q/dq pairs to int8 oneDNN kernels on x86
    try:
        compiled = torch.compile(network, dynamic=False)
        with torch.inference_mode():
            compiled(example)  # compile outside the timed passes
        return measure_latency(compiled, example, repeats=repeats, warmup=2)
    except Exception as error:  # noqa: BLE001 - an optional column; the eager number stays
        print(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); no compiled latency")
        return None
    finally:
        inductor_config.freezing = previous
        torch._dynamo.reset()


def _accuracy(network: nn.Module, loader: Any, stride: int = 1) -> float:
    correct = total = seen = 0
    network.eval()
    with torch.no_grad():
        for x, y in loader:
            # every `stride`-th image of the whole split, wherever the batch boundaries fall
            keep = torch.arange(seen, seen + y.shape[0]) % stride == 0
            seen += y.shape[0]
            if keep.any():
                x, y = x.cpu()[keep], y.cpu()[keep]
                correct += int((network(x).argmax(1) == y).sum())
                total += int(y.numel())
    return correct / max(total, 1)


def _ratios(dense: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        return float(dense[key]) / float(row[key]) if dense.get(key) and row.get(key) else None

    return {
        "params_ratio": ratio("params"),
        "bytes_ratio": ratio("bytes"),
        "macs_ratio": ratio("macs"),
        "latency_speedup": ratio("latency_ms"),
        "accuracy_change_points": 100.0 * (row["test_acc"] - dense["test_acc"]),
    }


def _tuning_summary(result: Any) -> dict[str, Any]:
    frame = result.trials
    keep = [c for c in frame.columns if c in ("number", "state", "value") or c.startswith("params_")]
    trials = frame[keep].copy()
    if "duration" in frame.columns:
        trials["duration_s"] = frame["duration"].dt.total_seconds()
    trials = trials.astype(object).where(trials.notna(), None)
    return {
        "best_params": dict(result.best_params),
        "best_value": float(result.best_value),
        "n_trials": len(frame),
        "n_complete": int(result.n_complete),
        "trials": trials.to_dict(orient="records"),
    }


# ------------------------------------------------------------------------------------------------ output


def format_table(stages: Sequence[Mapping[str, Any]]) -> str:
    """The stage table as aligned text: accuracy, parameters, bytes, MACs and latency, with ratios to the first row.

    Args:
        stages: rows with ``stage``, ``epoch``, ``test_acc``, ``params``, ``bytes``, ``macs`` and ``latency_ms``.

    Returns:
        The table, one line per stage under a header.

    Example:
        >>> rows = [dict(stage="dense", epoch=4, test_acc=0.98, params=1000, bytes=4000, macs=8000, latency_ms=0.5),
        ...         dict(stage="int8", epoch=12, test_acc=0.97, params=1000, bytes=1000, macs=8000, latency_ms=1.0)]
        >>> print(format_table(rows).splitlines()[-1])
        int8            12     97.00%       1,000   1.0x      1,000   4.0x       8,000   1.0x      1.000   0.50x
    """
    compiled = any("latency_compiled_ms" in row for row in stages)
    header = (f"{'stage':<12}{'epoch':>6}{'test acc':>11}{'params':>12}{'x':>7}{'bytes':>11}{'x':>7}"
              f"{'MACs':>12}{'x':>7}{'CPU ms b1':>11}{'x':>8}" + (f"{'compiled ms':>13}" if compiled else ""))
    lines = [header, "-" * len(header)]
    dense = stages[0]
    for row in stages:
        def x(key: str, row: Mapping[str, Any] = row) -> str:
            return f"{dense[key] / row[key]:.1f}x" if row.get(key) else "-"

        latency = row.get("latency_ms")
        speed = f"{dense['latency_ms'] / latency:.2f}x" if latency and dense.get("latency_ms") else "-"
        lines.append(
            f"{row['stage']:<12}{row['epoch']:>6}{100 * row['test_acc']:>10.2f}%{row['params']:>12,}{x('params'):>7}"
            f"{row['bytes']:>11,}{x('bytes'):>7}{row['macs']:>12,}{x('macs'):>7}"
            f"{latency if latency is not None else math.nan:>11.3f}{speed:>8}"
            + (f"{_or_nan(row.get('latency_compiled_ms')):>13.3f}" if compiled else "")
        )
    return "\n".join(lines)


def plot_accuracy_vs_size(
    stages: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "accuracy vs size"
) -> Path:
    """Writes a PNG of test accuracy against model size (bytes, log scale), one labelled point per stage.

    Args:
        stages: rows with ``stage``, ``test_acc`` and ``bytes`` (the first row is the reference of the labels).
        path: the PNG to write (parents are created).
        title: the figure title.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> rows = [dict(stage="dense", test_acc=0.98, bytes=40000), dict(stage="int8", test_acc=0.97, bytes=9000)]
        >>> png = plot_accuracy_vs_size(rows, Path(tempfile.mkdtemp()) / "plot.png")
        >>> png.stat().st_size > 1000
        True
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5), constrained_layout=True)
    axes = figure.subplots()
    sizes = [row["bytes"] / 1024 for row in stages]
    accuracies = [100 * row["test_acc"] for row in stages]
    axes.plot(sizes, accuracies, "-", color="0.7", zorder=1)
    axes.scatter(sizes, accuracies, s=60, c=[f"C{i}" for i in range(len(stages))], zorder=2)
    for index, (row, size, accuracy) in enumerate(zip(stages, sizes, accuracies, strict=True)):
        smaller = stages[0]["bytes"] / row["bytes"]
        label = f"{row['stage']}" + (f" (epoch {row['epoch']})" if "epoch" in row else "")
        label += f"\n{accuracy:.1f}%, {size:,.0f} KiB" + (f" ({smaller:.1f}x smaller)" if index else "")
        # alternate above and below the points, so neighbouring labels do not overlap
        axes.annotate(label, (size, accuracy), textcoords="offset points", xytext=(-20, 12 if index % 2 else -30),
                      fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("model size (KiB, parameters + buffers)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    low, high = min(accuracies), max(accuracies)
    margin = max(1.5, 0.35 * (high - low))
    axes.set_ylim(max(0.0, low - margin), min(100.5, high + margin) if high < 100 else 100.8)
    axes.set_xlim(min(sizes) / 1.8, max(sizes) * 2.2)
    figure.savefig(path, dpi=110)
    return path


def _markdown(report: Mapping[str, Any]) -> str:
    recipe = report["settings"]["recipe"]
    tuning = report["tuning"]
    stages = report["stages"]
    compiled = any("latency_compiled_ms" in row for row in stages)
    lines = [
        f"# tetra-lightning demo: {report['data']}{' (quick)' if report['quick'] else ''}",
        "",
        f"Tuned {tuning['n_trials']} trials with TetraOpt; best validation accuracy {tuning['best_value']:.4f} with "
        f"{_format_params(tuning['best_params'])}. The best config trained {recipe['epochs']} epochs in one "
        f"`Trainer.fit`: factorized {recipe['target_ratio']:g}x at the start of epoch {recipe['compress_epoch']}, "
        f"{100 * recipe['pruning_ratio']:.0f}% of the channels pruned at the start of epoch "
        f"{recipe['prune_epoch']}, int8 (PT2E) at the end. `epoch` is when the stage was captured: dense and "
        "compressed just before the next rewrite (so dense had fewer epochs of training than the later stages), "
        "pruned and int8 at the end. Accuracy is on the held-out test split; latency is the median CPU forward at "
        "batch 1 on 1 thread (eager: int8 runs q/dq pairs around float kernels until torch.compile lowers them).",
        "",
        "| stage | epoch | test acc | params | x | bytes | x | MACs | x | CPU ms b1 | x |"
        + (" compiled ms b1 |" if compiled else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if compiled else ""),
    ]
    dense = stages[0]
    for row in stages:
        def x(key: str, row: Mapping[str, Any] = row) -> str:
            return f"{dense[key] / row[key]:.2f}x" if row.get(key) and dense.get(key) else "–"

        line = (
            f"| {row['stage']} | {row['epoch']} | {100 * row['test_acc']:.2f}% | {row['params']:,} | {x('params')} | "
            f"{row['bytes']:,} | {x('bytes')} | {row['macs']:,} | {x('macs')} | {_or_nan(row['latency_ms']):.3f} | "
            f"{x('latency_ms')} |"
        )
        if compiled:
            line += f" {_or_nan(row.get('latency_compiled_ms')):.3f} |"
        lines.append(line)
    seconds = report["seconds"]
    lines += ["", "Wall time: " + ", ".join(f"{key} {value:.0f} s" for key, value in seconds.items()), ""]
    return "\n".join(lines)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _json_default(value: Any) -> Any:
    if isinstance(value, (Tensor,)):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------------ W&B


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """The mode of the demo's W&B run: ``WANDB_MODE`` when set, else online if you are logged in, else offline.

    Offline runs are written to ``<out>/wandb`` (upload them later with ``wandb sync``). The login check reads the
    key from the environment or ``~/.netrc``: no prompt, no network.

    Args:
        environ: the environment to read ``WANDB_MODE`` from (default: ``os.environ``).

    Returns:
        ``"online"``, ``"offline"`` or ``"disabled"``.

    Example:
        >>> wandb_mode({"WANDB_MODE": "dryrun"}), wandb_mode({"WANDB_MODE": "disabled"})
        ('offline', 'disabled')
    """
    mode = (os.environ if environ is None else environ).get("WANDB_MODE")
    if mode:
        return {"dryrun": "offline", "run": "online"}.get(mode, mode)
    import wandb

    try:
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    except Exception:  # noqa: BLE001 - any doubt means offline
        return "offline"


def _wandb_logger(out: Path, data: str, best: Mapping[str, Any], recipe: Recipe) -> Any:
    try:
        import wandb  # noqa: F401
    except ImportError:
        print("wandb is not installed: no W&B run (`pip install wandb`, or tetra-lightning[all]).")
        return None
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode()
    if mode == "disabled":
        print("WANDB_MODE=disabled: no W&B run.")
        return None
    print(f"W&B run: {mode}{', in ' + str(out / 'wandb') if mode == 'offline' else ''}", flush=True)
    # The mode goes straight to wandb.init: WandbLogger(offline=True) would set WANDB_MODE=dryrun for the whole
    # process, which wandb no longer honours once its settings were read (e.g. by the login check above).
    return WandbLogger(
        project="tetra-lightning-demo",
        name=f"{data}-{time.strftime('%Y%m%d-%H%M%S')}",
        save_dir=str(out),
        mode=mode,
        config={"best_params": dict(best), "recipe": asdict(recipe)},
    )


def _log_report_to_wandb(logger: Any, result: Any, stages: Sequence[Mapping[str, Any]], png: Path) -> str:
    import wandb

    summary = _tuning_summary(result)
    trials = summary["trials"]
    trial_columns = list(trials[0]) if trials else []
    stage_columns = ["stage", "epoch", "test_acc", "params", "bytes", "macs", "latency_ms"]
    run = logger.experiment
    # One record for the three: the callbacks' per-layer tables went to the same run during fit.
    run.log({
        "tuning/trials": wandb.Table(columns=trial_columns, data=[[row[c] for c in trial_columns] for row in trials]),
        "report/stages": wandb.Table(columns=stage_columns, data=[[row[c] for c in stage_columns] for row in stages]),
        "report/accuracy_vs_size": wandb.Image(str(png)),
    })
    for row in stages:
        for key in ("test_acc", "params", "bytes", "macs", "latency_ms"):
            run.summary[f"report/{row['stage']}/{key}"] = row[key]
    run.summary["tuning/best_value"] = summary["best_value"]
    directory = str(Path(run.dir).parent)
    run.finish()
    return directory


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point of ``python -m tetra_lightning.demo`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
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


if __name__ == "__main__":
    main()
