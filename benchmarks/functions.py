"""TetraOpt vs the `ttopt` (TTOpt) and `protes` (PROTES) packages on analytic functions.

Each function is minimized over a 10-dimensional grid of 16 points per dimension (16**10 ~ 1.1e12 points) with
the same budget of unique evaluations for every method (repeated points come from a cache and are free:
``ttopt`` with ``with_cache=True``; ``protes`` through an outer cache that stops it when the budget is spent).
Reported: mean and median of the best value found over seeds, and the grid minimum where it is known exactly
(separable functions). The in-house TT methods of TetraOpt (``method="ttopt"``/``"protes"``) run too.

Usage:
    python benchmarks/functions.py [--budgets 500,2000] [--seeds 3] [--methods tetra,ttopt_pkg,protes_pkg]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_lightning.optim import Float, TetraOpt  # noqa: E402

D, N = 10, 16


def ackley(x: np.ndarray) -> np.ndarray:
    return (-20 * np.exp(-0.2 * np.sqrt(np.mean(x ** 2, axis=-1))) - np.exp(np.mean(np.cos(2 * np.pi * x), axis=-1))
            + 20 + np.e)


def rastrigin(x: np.ndarray) -> np.ndarray:
    return 10 * x.shape[-1] + np.sum(x ** 2 - 10 * np.cos(2 * np.pi * x), axis=-1)


def alpine(x: np.ndarray) -> np.ndarray:
    return np.sum(np.abs(x * np.sin(x) + 0.1 * x), axis=-1)


def schwefel(x: np.ndarray) -> np.ndarray:
    return 418.9829 * x.shape[-1] - np.sum(x * np.sin(np.sqrt(np.abs(x))), axis=-1)


def griewank(x: np.ndarray) -> np.ndarray:
    i = np.arange(1, x.shape[-1] + 1)
    return np.sum(x ** 2, axis=-1) / 4000 - np.prod(np.cos(x / np.sqrt(i)), axis=-1) + 1


def rosenbrock(x: np.ndarray) -> np.ndarray:
    return np.sum(100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2, axis=-1)


FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float, float, bool]] = {
    # name: (f, low, high, separable)
    "ackley": (ackley, -32.768, 32.768, False),
    "rastrigin": (rastrigin, -5.12, 5.12, True),
    "alpine": (alpine, -10.0, 10.0, True),
    "schwefel": (schwefel, -500.0, 500.0, True),
    "griewank": (griewank, -600.0, 600.0, False),
    "rosenbrock": (rosenbrock, -2.048, 2.048, False),
}


def grid(low: float, high: float) -> np.ndarray:
    return np.linspace(low, high, N)


def grid_minimum(name: str) -> float | None:
    f, low, high, separable = FUNCTIONS[name]
    if not separable:
        return None
    g = grid(low, high)
    per_dim = f(g[:, None])  # 1-D values; separable sums: total = sum over dims - constant offsets
    if name == "rastrigin":
        return float(D * per_dim.min())
    if name == "alpine":
        return float(D * per_dim.min())
    if name == "schwefel":
        return float(D * per_dim.min())
    return None


def run_tetra(name: str, budget: int, seed: int, method: str = "tetra") -> float:
    f, low, high, _ = FUNCTIONS[name]
    g = grid(low, high)
    space = {f"x{k}": Float(low, high, grid=N) for k in range(D)}
    opt = TetraOpt(space, budget=budget, seed=seed, direction="minimize", method=method)
    while batch := opt.ask(10):
        x = np.array([[p[f"x{k}"] for k in range(D)] for p in batch])
        opt.tell(batch, list(f(x)))
    assert np.allclose(g, space["x0"].grid)
    return float(opt.best_value)


def run_ttopt_pkg(name: str, budget: int, seed: int) -> float:
    from ttopt import TTOpt

    f, low, high, _ = FUNCTIONS[name]
    g = grid(low, high)
    tto = TTOpt(lambda idx: f(g[np.asarray(idx, dtype=int)]), d=D, n=N, evals=budget, is_func=False,
                with_cache=True, with_wrn=False)
    tto.optimize(rank=4, seed=seed)
    return float(tto.y_opt)


def run_protes_pkg(name: str, budget: int, seed: int) -> float:
    from protes import protes

    f, low, high, _ = FUNCTIONS[name]
    g = grid(low, high)
    cache: dict[tuple[int, ...], float] = {}
    best = [np.inf]

    def wrapped(idx: np.ndarray) -> np.ndarray | None:
        idx = np.asarray(idx, dtype=int)
        out = np.empty(len(idx))
        for j, row in enumerate(idx):
            key = tuple(row.tolist())
            if key not in cache:
                if len(cache) >= budget:
                    return None
                cache[key] = float(f(g[row]))
                best[0] = min(best[0], cache[key])
            out[j] = cache[key]
        return out

    protes(wrapped, d=D, n=N, m=100 * budget, seed=seed, log=False)
    return float(best[0])


RUNNERS: dict[str, Callable[[str, int, int], float]] = {
    "tetra": run_tetra,
    "tetra_ttopt": lambda n, b, s: run_tetra(n, b, s, method="ttopt"),
    "tetra_protes": lambda n, b, s: run_tetra(n, b, s, method="protes"),
    "ttopt_pkg": run_ttopt_pkg,
    "protes_pkg": run_protes_pkg,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="500,2000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--methods", default="tetra,tetra_ttopt,tetra_protes,ttopt_pkg,protes_pkg")
    parser.add_argument("--merge", action="store_true",
                        help="update an existing --out JSON (e.g. methods run on different machines)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "functions.json"))
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    results: dict[str, Any] = {"settings": {"dims": D, "grid": N, "budgets": budgets, "seeds": args.seeds,
                                            "direction": "minimize", "budget_counts": "unique evaluations"},
                               "results": {}, "unavailable": {}, "runs": []}
    if args.merge and Path(args.out).is_file():
        results = json.loads(Path(args.out).read_text())
    results.setdefault("runs", []).append({"argv": sys.argv[1:] if argv is None else argv})
    for method in args.methods.split(","):
        try:
            if method == "ttopt_pkg":
                import ttopt  # noqa: F401
            if method == "protes_pkg":
                import protes  # noqa: F401
        except ImportError as err:
            results["unavailable"][method] = str(err)
            print(f"skip {method}: {err}")
    methods = [m for m in args.methods.split(",") if m not in results["unavailable"]]
    for name in args.functions.split(","):
        res = results["results"].setdefault(name, {})
        res["grid_minimum"] = grid_minimum(name)
        for b in budgets:
            row = res.setdefault(str(b), {})
            for method in methods:
                t0 = time.perf_counter()
                vals = [RUNNERS[method](name, b, s) for s in range(args.seeds)]
                row[method] = {"mean": float(np.mean(vals)), "median": float(np.median(vals)), "values": vals,
                               "seconds_per_run": round((time.perf_counter() - t0) / args.seeds, 2)}
            winner = min(row, key=lambda m: row[m]["mean"])
            print(f"{name:10s} B={b:5d} " + "  ".join(f"{m}={v['mean']:.4g}" for m, v in row.items())
                  + f"   best: {winner}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
