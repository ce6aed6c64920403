"""TetraOptSampler overhead: wall time per Optuna trial with a free objective, on large and stepped spaces.

Target: < 0.2 s per trial (the sampler rebuilds TetraOpt from the study's history at every trial), including a
``suggest_int("seed", 0, 2**31 - 1)`` and a step float of 10^5 values, which are searched on 128 levels and never
materialized. Each space runs ``--trials`` trials in an in-memory study; the objective itself costs nothing.

Usage:
    python benchmarks/sampler_overhead.py [--trials 60] [--out benchmarks/results/sampler_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_lightning.tuner import TetraOptSampler  # noqa: E402

TARGET_S = 0.2


def _seed(trial: optuna.Trial) -> float:
    return float(trial.suggest_int("seed", 0, 2**31 - 1) % 1000)


def _fine_step(trial: optuna.Trial) -> float:
    return abs(trial.suggest_float("share", 0.0, 1.0, step=1e-5) - 0.5)


def _log_int(trial: optuna.Trial) -> float:
    return abs(trial.suggest_int("width", 1, 1024, log=True) - 37)


def _mixed(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    width = trial.suggest_int("width", 8, 1024, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.05)
    act = trial.suggest_categorical("act", ["relu", "gelu", "silu"])
    seed = trial.suggest_int("seed", 0, 2**31 - 1)
    return abs(lr - 1e-3) + abs(width - 256) / 1024 + dropout + (act == "gelu") + (seed % 3) / 10


SPACES: dict[str, Callable[[optuna.Trial], float]] = {
    "seed int [0, 2^31)": _seed,
    "step float 1e5 values": _fine_step,
    "log int [1, 1024]": _log_int,
    "mixed 5-d (seed, step, log)": _mixed,
}


def measure(objective: Callable[[optuna.Trial], float], trials: int) -> dict[str, float]:
    study = optuna.create_study(sampler=TetraOptSampler(seed=0))
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"mean_s": sum(times) / len(times), "median_s": times[len(times) // 2], "max_s": times[-1],
            "trials": trials, "complete": sum(t.state.name == "COMPLETE" for t in study.trials)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_overhead.json"))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = {}
    print(f"{'space':30s} {'mean s':>8s} {'median s':>9s} {'max s':>7s}  complete")
    for name, objective in SPACES.items():
        row = measure(objective, args.trials)
        rows[name] = row
        verdict = "OK" if row["mean_s"] < TARGET_S else "SLOW"
        print(f"{name:30s} {row['mean_s']:8.3f} {row['median_s']:9.3f} {row['max_s']:7.3f}  "
              f"{row['complete']}/{row['trials']}  {verdict}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target_s": TARGET_S, "trials": args.trials, "spaces": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
