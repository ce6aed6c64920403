"""The demo's W&B run: offline unless you are logged in; trials, stages, plot and the callbacks' tables."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tetra_lightning.demo.measure import tuning_summary
from tetra_lightning.demo.recipe import Recipe

__all__ = ["log_report_to_wandb", "wandb_logger", "wandb_mode"]


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


def wandb_logger(out: Path, data: str, best: Mapping[str, Any], recipe: Recipe) -> Any:
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


def log_report_to_wandb(logger: Any, result: Any, stages: Sequence[Mapping[str, Any]], png: Path) -> str:
    import wandb

    summary = tuning_summary(result)
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
