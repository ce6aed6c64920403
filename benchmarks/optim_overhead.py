"""Optimizer overhead: wall time of ask + tell per point, without the objective.

Target: < 5 ms per point at 20 dimensions of 10 choices. Every method is driven for ``--budget`` points with a
cheap objective, asking ``--batch`` points at a time; the objective's own time is excluded.

Usage:
    python benchmarks/optim_overhead.py [--dims 20] [--choices 10] [--budget 300] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_lightning.optim import METHODS, Int, TetraOpt  # noqa: E402


def measure(method: str, dims: int, choices: int, budget: int, batch: int, seed: int = 0) -> dict[str, float]:
    space = {f"x{k}": Int(0, choices - 1) for k in range(dims)}
    target = np.random.default_rng(seed).integers(0, choices, size=dims)
    opt = TetraOpt(space, budget=budget, seed=seed, method=method)
    t_ask = t_tell = 0.0
    while True:
        t0 = time.perf_counter()
        params = opt.ask(batch)
        t_ask += time.perf_counter() - t0
        if not params:
            break
        values = [-float(np.sum((np.array(list(p.values())) - target) ** 2)) for p in params]
        t0 = time.perf_counter()
        opt.tell(params, values)
        t_tell += time.perf_counter() - t0
    n = opt.n_evaluations
    return {"ms_per_point": 1e3 * (t_ask + t_tell) / n, "ask_ms": 1e3 * t_ask / n, "tell_ms": 1e3 * t_tell / n,
            "n": n, "best_value": opt.best_value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=20)
    parser.add_argument("--choices", type=int, default=10)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=None, help="optional JSON output path")
    args = parser.parse_args(argv)
    rows = {}
    for method in args.methods.split(","):
        r = measure(method, args.dims, args.choices, args.budget, args.batch)
        rows[method] = r
        print(f"{method:8s} {r['ms_per_point']:7.2f} ms/point (ask {r['ask_ms']:.2f}, tell {r['tell_ms']:.2f}) "
              f"over {r['n']} points, best {r['best_value']:.0f}  {'OK' if r['ms_per_point'] < 5 else 'SLOW'}",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
