"""Parallel trials on Ray: wall-clock speed-up of 1, 2, 4 concurrent trials with TetraOptSearch, and the quality
that batching keeps at an equal budget.

The objective is synthetic: a coupled quadratic on a 4-dimensional grid of 8 values per dimension (4096 points)
whose maximum, 0, lies at a known point; every trial sleeps ``--sleep`` seconds, standing in for a training run.
For each number of workers ``w``, ``ray.tune.Tuner`` runs ``--budget`` trials with ``TetraOptSearch`` and
``max_concurrent_trials=w`` (trials request a fraction of a CPU: they sleep) over ``--ray-seeds`` seeds.

Quality is compared at the same budget against sequential TetraOpt (``tetra_lightning.optim.maximize``, one
point at a time) over ``--seeds`` seeds. Since Ray runs are few and their interleaving is not reproducible, the
same searcher is also driven without Ray by an event simulation of ``w`` asynchronous workers whose trials last
``sleep * U(0.8, 1.2)`` (``--seeds`` seeds): the quality columns to read for "does batching cost accuracy".

Reported: the wall time of ``Tuner.fit`` (what a user waits, Ray's start-up of ``w`` trial processes included)
and the trial span (first trial start to last trial end), each with its speed-up over one worker and the
efficiency ``speed-up / w``.

Usage:
    python benchmarks/parallel_trials.py [--budget 40] [--sleep 1.0] [--workers 1,2,4] [--ray-seeds 2] [--seeds 50]
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_lightning.optim import Int, maximize  # noqa: E402

D, N = 4, 8
TARGET = np.array([5, 2, 6, 1])
COUPLING = np.eye(D) + 0.45 * (np.eye(D, k=1) + np.eye(D, k=-1))  # positive definite: one maximum, at TARGET
SPACE = {f"x{k}": Int(0, N - 1) for k in range(D)}


def objective(params: dict[str, Any]) -> float:
    """The coupled quadratic; 0 at TARGET, negative elsewhere."""
    d = np.array([params[f"x{k}"] for k in range(D)]) - TARGET
    return -float(d @ COUPLING @ d) / 4


def ray_run(workers: int, budget: int, sleep: float, seed: int, storage: str) -> tuple[float, float, float]:
    """One Ray Tune study: wall seconds of ``Tuner.fit``, seconds from the first trial's start to the last
    trial's end (without Ray's start-up of the trial processes), best value."""
    from ray import tune

    from tetra_lightning.tuner.ray import TetraOptSearch

    def trainable(config: dict[str, Any]) -> None:
        started = time.time()
        time.sleep(sleep)
        tune.report({"score": objective(config), "started": started, "ended": time.time()})

    search = TetraOptSearch(SPACE, metric="score", mode="max", budget=budget, seed=seed)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.25}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=-1, max_concurrent_trials=workers,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"w{workers}-s{seed}", storage_path=storage, verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    assert len(results) == budget and not results.errors, (len(results), results.errors)
    span = max(r.metrics["ended"] for r in results) - min(r.metrics["started"] for r in results)
    return wall, span, search.best_value


def simulated_async(workers: int, budget: int, seed: int) -> float:
    """TetraOptSearch driven as Ray drives it, by ``workers`` asynchronous workers with random trial lengths."""
    from ray.tune.search import Searcher

    from tetra_lightning.tuner.ray import TetraOptSearch

    rng = np.random.default_rng(1000 + seed)
    search = TetraOptSearch(SPACE, metric="score", mode="max", budget=budget, seed=seed)
    search.set_max_concurrency(workers)
    running: list[tuple[float, str, dict[str, Any]]] = []
    now, number, finished = 0.0, 0, False
    while True:
        while not finished and len(running) < workers:
            config = search.suggest(f"t{number}")
            if config == Searcher.FINISHED:
                finished = True
            elif config is None:
                break
            else:
                heapq.heappush(running, (now + rng.uniform(0.8, 1.2), f"t{number}", config))
                number += 1
        if not running:
            break
        now, trial_id, config = heapq.heappop(running)
        search.on_trial_complete(trial_id, {"score": objective(config)})
    assert search.n_suggested == budget
    return search.best_value


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each trial sleeps")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--ray-seeds", type=int, default=2, help="Ray studies per number of workers")
    parser.add_argument("--seeds", type=int, default=50, help="seeds of the sequential and simulated runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parallel_trials.json"))
    args = parser.parse_args(argv)
    import ray

    workers_list = [int(w) for w in args.workers.split(",")]
    sequential = [maximize(objective, SPACE, budget=args.budget, seed=s).best_value for s in range(args.seeds)]
    rows: dict[int, dict[str, Any]] = {}
    # logical CPUs: the trials sleep, so four of them share the machine's cores without slowing each other
    ray.init(num_cpus=max(workers_list), include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            for workers in workers_list:
                # warm-up: Ray starts worker processes slowly (two at a time, seconds each on a busy machine) and
                # keeps some idle afterwards, so the measured studies find `workers` processes ready
                ray_run(workers, 2 * workers, 0.1, 0, storage)
                runs = [ray_run(workers, args.budget, args.sleep, seed, storage) for seed in range(args.ray_seeds)]
                rows[workers] = {
                    "wall_s": [w for w, _, _ in runs],
                    "span_s": [s for _, s, _ in runs],
                    "best_ray": [b for _, _, b in runs],
                    "best_simulated": [simulated_async(workers, args.budget, s) for s in range(args.seeds)],
                }
                print(f"workers={workers}: wall {np.mean(rows[workers]['wall_s']):.1f}s, best (Ray) "
                      f"{mean_sd(rows[workers]['best_ray'])}", flush=True)
    finally:
        ray.shutdown()

    base = np.mean(rows[workers_list[0]]["wall_s"]) * workers_list[0]
    base_span = np.mean(rows[workers_list[0]]["span_s"]) * workers_list[0]
    lines = [
        f"Budget {args.budget} trials of {args.sleep}s on a {N}^{D} grid (optimum 0); Ray: {args.ray_seeds} seeds, "
        f"sequential TetraOpt and simulated async workers: {args.seeds} seeds.",
        "",
        "| workers | wall s | trial span s | ideal s | speed-up (wall) | efficiency (wall) | speed-up (span) | "
        "efficiency (span) | best (Ray) | best (simulated async) | simulated - sequential (paired ± se) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workers, row in rows.items():
        wall, span = float(np.mean(row["wall_s"])), float(np.mean(row["span_s"]))
        speedup, span_speedup = base / wall, base_span / span
        # the same seed gives the same initial design: pair each simulated run with its sequential run
        diff = np.array(row["best_simulated"]) - np.array(sequential)
        diff_se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        row.update({"wall_mean_s": wall, "span_mean_s": span, "ideal_s": args.budget * args.sleep / workers,
                    "speedup": speedup, "efficiency": speedup / workers, "span_speedup": span_speedup,
                    "span_efficiency": span_speedup / workers, "paired_diff_mean": float(diff.mean()),
                    "paired_diff_se": diff_se})
        lines.append(f"| {workers} | {wall:.1f} | {span:.1f} | {row['ideal_s']:.1f} | {speedup:.2f} | "
                     f"{speedup / workers:.0%} | {span_speedup:.2f} | {span_speedup / workers:.0%} | "
                     f"{mean_sd(row['best_ray'])} | {mean_sd(row['best_simulated'])} | "
                     f"{diff.mean():+.3f} ± {diff_se:.3f} |")
    lines.append(f"| sequential TetraOpt | | | | | | | | | {mean_sd(sequential)} | |")
    table = "\n".join(lines)
    print(table)
    report = {
        "settings": vars(args) | {"grid": [N] * D, "target": TARGET.tolist(), "optimum": 0.0},
        "sequential_best": sequential,
        "workers": {str(w): row for w, row in rows.items()},
        "table": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
