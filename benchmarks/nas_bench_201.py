"""TetraOpt vs random search, regularized evolution and Optuna TPE on NAS-Bench-201 (NATS-Bench tss).

Protocol: the search signal is the 12-epoch validation accuracy; reported is the 200-epoch test accuracy of the
cell with the best search signal among the first B unique evaluations (repeated cells are answered from a cache
and do not count), mean and std over seeds, plus how often that cell is a top-0.1% cell by test accuracy
(test accuracy >= that of the 16th best of 15625 cells).

Random search, regularized evolution and TPE do not know the budget, so one run to the largest budget gives all
smaller budgets by prefix. TetraOpt does not use the budget either (its proposals do not depend on it), so the
same prefix rule holds; ``--per-budget`` runs it once per budget instead, as a check.

Usage:
    python benchmarks/nas_bench_201.py                 # full: 100 seeds, 3 datasets, budgets 25/50/100/200
    python benchmarks/nas_bench_201.py --quick         # 5 seeds, cifar10 only, no TPE
    python benchmarks/nas_bench_201.py --seeds 20 --tpe-seeds 10 --methods tetra,random,evolution
    # ablation: TetraOpt variants side by side, each under its own label, in one file
    python benchmarks/nas_bench_201.py --methods tetra --tetra-kwargs '{"restart": 0}' --label "restart=0" \
        --merge --out benchmarks/results/nas_bench_201_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_lightning.nas import DATASETS, EDGES, NB201_OPS, NASBench201Objective  # noqa: E402
from tetra_lightning.optim import TetraOpt  # noqa: E402

DEFAULT_TABLE = ROOT.parent / "shared" / "data" / "nas-bench-201" / "nb201_accuracy.csv"
BUDGETS = (25, 50, 100, 200)


class Bench:
    """Array view of one dataset: product index (base-5 digits over EDGES) -> validation / test accuracy."""

    def __init__(self, dataset: str, table: Path) -> None:
        obj = NASBench201Objective(dataset, table=table)
        val, test = obj.table_arrays()
        self.val = np.zeros(5 ** 6)
        self.test = np.zeros(5 ** 6)
        for i in range(len(obj)):
            ops = obj.ops(i)
            code = 0
            for op in ops:
                code = code * 5 + NB201_OPS.index(op)
            self.val[code] = val[i]
            self.test[code] = test[i]
        self.threshold = obj.top_fraction_threshold(0.001)
        self.space = obj.space

    @staticmethod
    def code(idx: tuple[int, ...] | np.ndarray) -> int:
        c = 0
        for v in idx:
            c = c * 5 + int(v)
        return c

    def code_of_params(self, params: dict[str, str]) -> int:
        return self.code([NB201_OPS.index(params[e]) for e in EDGES])


def run_tetra(bench: Bench, seed: int, budget: int, **kw: object) -> list[int]:
    opt = TetraOpt(bench.space, budget=budget, seed=seed, **kw)  # type: ignore[arg-type]
    codes: list[int] = []
    while batch := opt.ask(1):
        c = [bench.code_of_params(p) for p in batch]
        codes.extend(c)
        opt.tell(batch, [bench.val[x] for x in c])
    return codes


def run_random(bench: Bench, seed: int, budget: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(c) for c in rng.permutation(5 ** 6)[:budget]]


def run_evolution(bench: Bench, seed: int, budget: int, population: int = 10, tournament: int = 3) -> list[int]:
    """Regularized evolution (Real et al.): age-based removal, tournament selection, one-edge mutation."""
    rng = np.random.default_rng(seed)
    seen: dict[int, float] = {}
    order: list[int] = []

    def evaluate(code: int) -> float:
        if code not in seen:
            seen[code] = bench.val[code]
            order.append(code)
        return seen[code]

    pop: list[tuple[np.ndarray, float]] = []
    while len(pop) < population and len(order) < budget:
        x = rng.integers(0, 5, size=6)
        pop.append((x, evaluate(bench.code(x))))
    steps = 0
    while len(order) < budget and steps < 50 * budget:
        steps += 1
        picks = rng.choice(len(pop), size=tournament, replace=False)
        parent = max((pop[i] for i in picks), key=lambda t: t[1])[0]
        child = parent.copy()
        e = int(rng.integers(6))
        child[e] = rng.choice([o for o in range(5) if o != child[e]])
        pop.append((child, evaluate(bench.code(child))))
        pop.pop(0)
    return order


def run_tpe(bench: Bench, seed: int, budget: int, multivariate: bool = False) -> list[int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=multivariate)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen: dict[int, float] = {}
    order: list[int] = []
    trials = 0
    while len(order) < budget and trials < 20 * budget:
        trials += 1
        trial = study.ask()
        idx = [NB201_OPS.index(trial.suggest_categorical(e, list(NB201_OPS))) for e in EDGES]
        code = bench.code(idx)
        if code not in seen:  # repeated cells come from the cache and are not counted
            seen[code] = bench.val[code]
            order.append(code)
        study.tell(trial, seen[code])
    return order


_BENCHES: dict[tuple[str, str], Bench] = {}


def _bench(dataset: str, table: str) -> Bench:
    key = (dataset, table)
    if key not in _BENCHES:
        _BENCHES[key] = Bench(dataset, Path(table))
    return _BENCHES[key]


def _job(job: tuple[str, str, str, int, int, str]) -> tuple[list[int], float]:
    dataset, table, method, seed, budget, tetra_kwargs = job
    bench = _bench(dataset, table)
    t0 = time.perf_counter()
    if method == "tetra":
        codes = run_tetra(bench, seed, budget, **json.loads(tetra_kwargs))
    elif method == "random":
        codes = run_random(bench, seed, budget)
    elif method == "evolution":
        codes = run_evolution(bench, seed, budget)
    elif method in ("tpe", "tpe_multivariate"):
        codes = run_tpe(bench, seed, budget, multivariate=method == "tpe_multivariate")
    else:
        raise ValueError(f"unknown method {method!r}")
    return codes, time.perf_counter() - t0


def run_jobs(jobs: list[tuple[str, str, str, int, int, str]], workers: int) -> list[tuple[list[int], float]]:
    """Run benchmark jobs, in a process pool when ``workers > 1`` (one process otherwise)."""
    if workers <= 1:
        return [_job(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(_job, jobs, chunksize=1)


def summarize(bench: Bench, runs: list[list[int]], budgets: tuple[int, ...]) -> dict[str, dict[str, float]]:
    out = {}
    for b in budgets:
        finals, hits = [], []
        for codes in runs:
            pre = codes[:b]
            best = max(pre, key=lambda c: bench.val[c])
            finals.append(bench.test[best])
            hits.append(bench.test[best] >= bench.threshold)
        out[str(b)] = {"mean": float(np.mean(finals)), "std": float(np.std(finals)),
                       "top0.1%_rate": float(np.mean(hits)), "n_runs": len(runs)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--tpe-seeds", type=int, default=None, help="seeds for TPE (default: --seeds)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default="tetra,random,evolution,tpe,tpe_multivariate")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--per-budget", action="store_true", help="run TetraOpt once per budget")
    parser.add_argument("--quick", action="store_true", help="5 seeds, cifar10, no TPE")
    parser.add_argument("--table", default=os.environ.get("TETRA_NB201_TABLE", str(DEFAULT_TABLE)))
    parser.add_argument("--tetra-kwargs", default="{}", help="JSON kwargs for TetraOpt")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--label", default=None, help="store TetraOpt's results under this name (ablations)")
    parser.add_argument("--merge", action="store_true",
                        help="update an existing --out JSON: replace only the methods run now, keep the others")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nas_bench_201.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.methods = "cifar10", "tetra,random,evolution"
        args.seeds = min(args.seeds, 5)
    budgets = tuple(int(b) for b in args.budgets.split(","))
    tpe_seeds = args.tpe_seeds or args.seeds
    tetra_kwargs = json.loads(args.tetra_kwargs)
    methods = args.methods.split(",")
    results: dict[str, Any] = {
        "protocol": {
            "search_signal": "12-epoch validation accuracy (cifar10-valid x-valid / x-valid)",
            "reported": "200-epoch test accuracy of the cell with the best search signal among the first B unique "
                        "evaluations",
            "top0.1%": "test accuracy >= the 16th best of 15625 cells",
            "budgets": list(budgets),
            "prefix_rule": "random/evolution/TPE/TetraOpt do not depend on the budget: one run to the largest budget "
                           "gives all budgets by prefix" + (" (TetraOpt run per budget)" if args.per_budget else ""),
            "seeds": args.seeds,
            "tpe_seeds": tpe_seeds,
            "tetra_kwargs": tetra_kwargs,
            "evolution": "population 10, tournament 3, one-edge mutation",
            "table": "shared/data/nas-bench-201/nb201_accuracy.csv",
        },
        "results": {},
    }
    if args.merge and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        if old["protocol"]["budgets"] != list(budgets):
            raise SystemExit(f"--merge: {args.out} has budgets {old['protocol']['budgets']}, not {list(budgets)}; "
                             "use the same --budgets or another --out.")
        results["results"] = old["results"]
        results["protocol"]["runs"] = old["protocol"].get("runs", [])
    label = {"tetra": args.label or "tetra"}
    datasets = args.datasets.split(",")
    jobs = []
    for dataset in datasets:
        for method in methods:
            n_seeds = tpe_seeds if method.startswith("tpe") else args.seeds
            per_budget = budgets if (method == "tetra" and args.per_budget) else (max(budgets),)
            for b in per_budget:
                jobs.extend((dataset, args.table, method, s, b, args.tetra_kwargs) for s in range(n_seeds))
    t_all = time.perf_counter()
    outputs = dict(zip(jobs, run_jobs(jobs, args.workers), strict=True))
    for dataset in datasets:
        bench = _bench(dataset, args.table)
        res: dict[str, Any] = results["results"].get(dataset, {})
        res.update({"top0.1%_threshold": bench.threshold, "optimum_test": float(bench.test.max())})
        for method in methods:
            summary: dict[str, dict[str, float]] = {}
            seconds = 0.0
            per_budget = budgets if (method == "tetra" and args.per_budget) else (max(budgets),)
            for b in per_budget:
                mine = [v for k, v in outputs.items() if k[0] == dataset and k[2] == method and k[4] == b]
                seconds += sum(t for _, t in mine)
                summary.update(summarize(bench, [c for c, _ in mine], (b,) if len(per_budget) > 1 else budgets))
            n_runs = next(iter(summary.values()))["n_runs"]
            res[label.get(method, method)] = {
                "budgets": summary, "seconds_per_run": round(seconds / max(1, n_runs * len(per_budget)), 3),
                "seeds": n_runs, "tetra_kwargs": tetra_kwargs if method == "tetra" else None}
            line = "  ".join(f"B={b}: {v['mean']:.2f}±{v['std']:.2f} ({100 * v['top0.1%_rate']:.0f}%)"
                             for b, v in summary.items())
            print(f"{dataset:15s} {label.get(method, method):17s} {line}   [{seconds / max(1, n_runs):.2f}s/run]", flush=True)
        results["results"][dataset] = res
    wall = round(time.perf_counter() - t_all, 1)
    results["protocol"]["wall_seconds"] = wall
    results["protocol"].setdefault("runs", []).append({
        "argv": sys.argv[1:] if argv is None else argv, "methods": [label.get(m, m) for m in methods],
        "datasets": datasets, "wall_seconds": wall, "workers": args.workers, "cpus": os.cpu_count()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    Path(args.out).with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out}")


def markdown(results: dict) -> str:
    proto = results["protocol"]
    lines = ["# NAS-Bench-201: final 200-epoch test accuracy (%) of the best-by-12-epoch-validation cell", "",
             f"mean ± std over {proto['seeds']} seeds (TPE: {proto['tpe_seeds']}); in parentheses: share of runs "
             "ending on a top-0.1% cell. " + proto["prefix_rule"] + ".", ""]
    for run in proto.get("runs", []):
        lines.append(f"- run `{' '.join(run['argv'])}` ({run.get('cpus', '?')} CPUs): {', '.join(run['methods'])}"
                     + (f". {run['note']}" if run.get("note") else ""))
    lines.append("")
    for dataset, res in results["results"].items():
        budgets = proto["budgets"]
        lines.append(f"## {dataset} (optimum {res['optimum_test']:.2f}, top-0.1% threshold "
                     f"{res['top0.1%_threshold']:.2f})")
        lines.append("")
        lines.append("| method | " + " | ".join(f"B={b}" for b in budgets) + " |")
        lines.append("|---" * (len(budgets) + 1) + "|")
        for method, r in res.items():
            if not isinstance(r, dict):
                continue
            cells = []
            for b in budgets:
                v = r["budgets"][str(b)]
                cells.append(f"{v['mean']:.2f} ± {v['std']:.2f} ({100 * v['top0.1%_rate']:.0f}%)")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        kwargs = {m: r["tetra_kwargs"] for m, r in res.items() if isinstance(r, dict) and r.get("tetra_kwargs")}
        if kwargs:
            lines.append("TetraOpt options: " + "; ".join(f"{m}: `{json.dumps(k)}`" for m, k in kwargs.items()))
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
