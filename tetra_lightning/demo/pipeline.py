"""The demo's pipeline: tune, train the best config with compression, pruning and int8, report every stage."""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch import nn

from tetra_lightning.callbacks import PruningCallback, QuantizationCallback, TensorCompressionCallback
from tetra_lightning.demo.measure import measure_stages, stage_ratios, tuning_summary
from tetra_lightning.demo.output import (
    format_params,
    format_table,
    json_default,
    markdown_report,
    plot_accuracy_vs_size,
)
from tetra_lightning.demo.recipe import Recipe, Task, check_data, make_task
from tetra_lightning.demo.snapshots import Int8Network, StageSnapshots
from tetra_lightning.demo.wandb_run import log_report_to_wandb, wandb_logger
from tetra_lightning.tuner import TetraOptTuner

__all__ = ["run_demo"]


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
    check_data(data)
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
    task = make_task(data, data_dir, quick, seed)

    print(f"== 1/3 tune: {recipe.trials} trials of {recipe.trial_epochs} epoch(s) with TetraOpt ==", flush=True)
    result = _tune(task, recipe, out, f"demo-{data}{'-quick' if quick else ''}", fresh, seed, progress)
    seconds["tune"] = time.perf_counter() - started
    best = dict(result.best_params)
    print(f"best val_acc {result.best_value:.4f} with {format_params(best)}", flush=True)

    print(f"== 2/3 train the best config for {recipe.epochs} epochs: compress at epoch {recipe.compress_epoch}, "
          f"prune at epoch {recipe.prune_epoch}, int8 at the end ==", flush=True)
    logger = wandb_logger(out, data, best, recipe) if use_wandb else None
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
        "int8": Int8Network(quantization.quantized_model),
    }
    epochs = {**snapshots.epochs_taken, "pruned": recipe.epochs, "int8": recipe.epochs}
    stages = measure_stages(networks, epochs, datamodule, task.input_shape, recipe, compile_latency)
    ratios = {row["stage"]: stage_ratios(stages[0], row) for row in stages}
    seconds["report"] = time.perf_counter() - report_started

    report: dict[str, Any] = {
        "data": data,
        "quick": quick,
        "settings": {"recipe": asdict(recipe), "method": method, "seed": seed, "threads": torch.get_num_threads()},
        "tuning": tuning_summary(result),
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
        report["files"]["wandb_run"] = log_report_to_wandb(logger, result, stages, png)
    seconds["total"] = time.perf_counter() - started
    report["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=json_default))
    (out / "report.md").write_text(markdown_report(report))
    for name, path in report["files"].items():
        print(f"{name:<12}{path}")
    print(f"done in {seconds['total']:.0f}s (tune {seconds['tune']:.0f}s, fit {seconds['fit']:.0f}s, "
          f"report {seconds['report']:.0f}s)", flush=True)
    return report


def _tune(task: Task, recipe: Recipe, out: Path, study_name: str, fresh: bool, seed: int, progress: bool) -> Any:
    import optuna

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
    task: Task, recipe: Recipe, best: dict[str, Any], method: str, logger: Any, seed: int, progress: bool
) -> tuple[LightningModule, LightningDataModule, tuple[Any, Any, Any, Any]]:
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
