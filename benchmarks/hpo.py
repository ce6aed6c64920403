"""TetraOptSampler vs Optuna's samplers on real hyperparameter spaces (issue #16), all through Optuna studies.

Problems (``benchmarks/hpo_problems.py``): Bayesmark's scikit-learn tuning problems (5-fold CV on the data sets
scikit-learn ships, Bayesmark's log/logit/int/bool spaces), a small Lightning CNN on the 8x8 digits (log floats,
a log int, a categorical optimizer and a momentum that only SGD trials have) and noiseless BBOB functions of
``coco-experiment`` at 2-10 dimensions. Every objective is deterministic given its params, and every run drives
one ``optuna.create_study(sampler=...)`` with ask/tell for ``--budget`` trials, one objective per trial.

Methods, each seeded per run: ``tetra`` = ``TetraOptSampler(seed=s)`` as a user writes it (no search space:
define-by-run; ``--tetra-kwargs`` adds constructor kwargs for ablations, stored under ``--label``), ``gp`` =
``GPSampler(seed=s, deterministic_objective=True)`` (the objectives are deterministic, so this is fair),
``tpe`` = ``TPESampler(seed=s)``, ``tpe_mv`` = ``TPESampler(seed=s, multivariate=True)`` (``group=True`` on
conditional spaces), ``tpe_indep`` = ``TPESampler(seed=s, multivariate=False)`` (not in the default run). Since
Optuna 5.0 ``TPESampler()`` is multivariate for one objective, so ``tpe`` and ``tpe_mv`` are the same sampler
except on conditional spaces; elsewhere ``tpe_mv``'s runs are copies of ``tpe``'s (marked ``same_as``; the runs
are bit-identical), not run twice. ``tpe_indep`` is the independent TPE, Optuna 4's default. ``cmaes`` = ``CmaEsSampler(seed=s)`` on the problems whose params are all floats and ints
in every trial (skipped on categorical or conditional spaces, where CMA-ES would sample those params at random),
``random`` = ``RandomSampler(seed=s)``. GP and both TPEs start with 10 trials of their independent sampler,
``RandomSampler(seed=s)``, so their first 10 trials are those of random search with the same seed (their score at
t=10 is random search's, exactly); CMA-ES and TetraOpt have designs of their own.

Score (Bayesmark's normalization): per problem and run, with ``b(t)`` the run's best value after ``t`` trials,
``R(t)`` the mean over the ``random`` runs of the same file of their ``b(t)``, and ``best`` the best value any run
of any method saw on the problem, ``score(t) = (R(t) - b(t)) / (R(t) - best)`` for minimization (mirrored for
maximization): 0 = random search, 1 = the best value ever seen. As in Bayesmark's mean score, one run's score is
clipped from below at -1 (a run that ends far behind random search on a problem where random search is close to
the best would otherwise dominate the mean); where ``R(t)`` equals ``best`` the score is 0 for a run that also
reached it and -1 otherwise. Reported: the mean over seeds per problem at 10/20/40/80 trials, the suite mean (the
mean over problems; its standard error over seeds, each seed's suite mean being one replicate), family means,
and the share of problems where a method's mean score at 40 trials is above random search's (0 before the clipping,
a little above 0 after it).

Cost, in CPU seconds (what other loads on a shared machine inflate least) next to wall seconds: the time per
evaluation of every problem, the time spent inside each sampler per trial (its ``infer_relative_search_space``,
``sample_relative``, ``sample_independent``, ``before_trial`` and ``after_trial`` wrapped with a timer), and an
estimate of the default run's wall time on 2 free cores from this run's CPU time per run. Separately
(``--overhead-trials``), ask + tell time per trial of each ``--overhead-methods`` sampler on a 10-dimensional
continuous space (a sphere) over 100 trials (issue #16's target: TetraOpt under 50 ms per trial at 100 trials;
GPSampler's time in the same run is the comparison).

Usage:
    python benchmarks/hpo.py --workers 2                     # default suite: 18 problems, 10 seeds, budget 80
    python benchmarks/hpo.py --quick --workers 2              # 4 problems, 3 seeds, budget 20 (~2 minutes)
    python benchmarks/hpo.py --methods tetra,gp,tpe,random --seeds 3 --budget 40 --workers 1 \\
        --out benchmarks/results/hpo_baseline_before.json
    # more seeds later, into the same file (runs are replaced by (problem, label, seed))
    python benchmarks/hpo.py --methods gp --seeds 5 --first-seed 5 --merge
    # ablation: a TetraOptSampler variant next to the stored runs, under its own label
    python benchmarks/hpo.py --methods tetra --tetra-kwargs '{"float_grid": 32}' --label "tetra grid32" --merge
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.hpo_problems import PROBLEMS, Problem, get_problem  # noqa: E402

METHODS = ("tetra", "gp", "tpe", "tpe_mv", "tpe_indep", "cmaes", "random")
DEFAULT_METHODS = ("tetra", "gp", "tpe", "tpe_mv", "cmaes", "random")
CHECKPOINTS = (10, 20, 40, 80)
DEFAULT_SEEDS = 10
DEFAULT_BUDGET = 80
DEFAULT_PROBLEMS = tuple(PROBLEMS)
# one plateau problem, one mixed space, two BBOB functions; the CNN (0.6 CPU s per trial) is left out for time
QUICK_PROBLEMS = ("DT-breast-acc", "lasso-reg-diabetes-mse", "bbob-f8-rosenbrock-2d", "bbob-f15-rastrigin-10d")
QUICK_OVERHEAD_TRIALS = 30
BEATS_RANDOM_AT = 40
SAMPLER_HOOKS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial",
                 "after_trial")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "hpo.json"


# ------------------------------------------------------------------------------------------------ samplers


def method_settings(method: str, problem: Problem, tetra_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The sampler class and keyword arguments (without the seed) of ``method`` on ``problem``.

    Returns:
        ``{"sampler": class name, "kwargs": {...}}``, or ``None`` where the method does not apply (CMA-ES on a
        space with a categorical or conditional param).

    Raises:
        ValueError: for an unknown method.
    """
    if method == "tetra":
        return {"sampler": "TetraOptSampler", "kwargs": dict(tetra_kwargs)}
    if method == "gp":
        return {"sampler": "GPSampler", "kwargs": {"deterministic_objective": True}}
    if method == "tpe":
        return {"sampler": "TPESampler", "kwargs": {}}
    if method == "tpe_mv":
        kwargs: dict[str, Any] = {"multivariate": True}
        if problem.conditional:
            kwargs["group"] = True
        return {"sampler": "TPESampler", "kwargs": kwargs}
    if method == "tpe_indep":
        return {"sampler": "TPESampler", "kwargs": {"multivariate": False}}
    if method == "cmaes":
        return {"sampler": "CmaEsSampler", "kwargs": {}} if problem.continuous_only else None
    if method == "random":
        return {"sampler": "RandomSampler", "kwargs": {}}
    raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}.")


def tpe_default_is_multivariate() -> bool:
    """Whether ``TPESampler()`` is the multivariate TPE for one objective (Optuna >= 5; before, independent)."""
    import optuna

    return int(optuna.__version__.split(".")[0]) >= 5


def same_sampler_as(method: str, problem: Problem) -> str | None:
    """The method whose runs ``method``'s runs repeat exactly on ``problem`` (same sampler, same seed), if any.

    In Optuna >= 5 ``TPESampler(seed=s)`` is already ``TPESampler(multivariate=True, seed=s)`` for one objective,
    so ``tpe_mv`` differs from ``tpe`` only where it adds ``group=True`` (conditional spaces); elsewhere its runs
    are copied from ``tpe``'s instead of being run again.
    """
    if method == "tpe_mv" and not problem.conditional and tpe_default_is_multivariate():
        return "tpe"
    return None


def make_sampler(method: str, seed: int, problem: Problem, tetra_kwargs: dict[str, Any] | None = None) -> Any:
    """A fresh seeded sampler for one run (see :func:`method_settings`).

    Raises:
        ValueError: for an unknown method, or a method that does not apply to ``problem``.
    """
    import optuna

    settings = method_settings(method, problem, dict(tetra_kwargs or {}))
    if settings is None:
        raise ValueError(f"method {method!r} does not apply to {problem.name!r} (categorical or conditional params).")
    kwargs = dict(settings["kwargs"], seed=seed)
    if method == "tetra":
        from tetra_lightning.tuner import TetraOptSampler

        return TetraOptSampler(**kwargs)
    return getattr(optuna.samplers, settings["sampler"])(**kwargs)


class SamplerTimer:
    """Accumulates the time spent inside a sampler's hooks (patched on the instance; the class is untouched).

    ``seconds`` is wall time, ``cpu_seconds`` this process's CPU time (what a shared machine does not inflate).

    Args:
        sampler: the sampler the study uses (``study.sampler`` stays this object).
    """

    def __init__(self, sampler: Any) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        for hook in SAMPLER_HOOKS:
            setattr(sampler, hook, self._timed(getattr(sampler, hook)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.process_time() - cpu

        return timed


# ------------------------------------------------------------------------------------------------ one run


def _quiet() -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "tetra_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


_WARM: set[str] = set()


def warm_up(problem: Problem) -> None:
    """Evaluates ``problem`` once per process, so that imports and data loading are not timed as an evaluation."""
    import optuna

    if problem.name in _WARM:
        return
    study = optuna.create_study(direction=problem.direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(problem.objective, n_trials=1, catch=(Exception,))
    _WARM.add(problem.name)


def _worker_init() -> Any:
    """One thread for torch and for the BLAS/OpenMP pools; returns the threadpoolctl limiter (to restore)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    _quiet()
    return threadpool_limits(limits=1)


def run_one(problem_name: str, method: str, seed: int, budget: int, tetra_kwargs: str = "{}") -> dict[str, Any]:
    """One study: ``budget`` trials of ``method`` on a problem, ask/tell, timed.

    Args:
        problem_name: a key of ``PROBLEMS``.
        method: one of :data:`METHODS`.
        seed: the sampler's seed.
        budget: trials.
        tetra_kwargs: JSON of TetraOptSampler constructor kwargs.

    Returns:
        The run's record: ``values`` (one per trial, ``None`` for a failed trial), the ``best`` so far after each
        trial, times in wall and CPU seconds (``eval``: the objective without the sampler calls inside it;
        ``sampler``: inside the sampler's hooks; ``overhead_cpu_s``: everything but the objective, i.e. ask,
        suggest and tell; ``sampler_cpu_s_at``: cumulative sampler CPU seconds at the checkpoints), the number of
        trials whose params repeat an earlier trial's, the number of distinct values each param took, failures.
    """
    import optuna

    _quiet()
    problem = get_problem(problem_name)
    warm_up(problem)
    sampler = make_sampler(method, seed, problem, json.loads(tetra_kwargs))
    timer = SamplerTimer(sampler)
    study = optuna.create_study(direction=problem.direction, sampler=sampler)
    sign = 1.0 if problem.direction == "minimize" else -1.0
    values: list[float | None] = []
    best: list[float | None] = []
    seen: set[tuple] = set()
    param_values: dict[str, set] = {}
    repeats = failures = 0
    errors: list[str] = []
    eval_s = eval_cpu_s = 0.0
    sampler_at: dict[str, float] = {}
    start, start_cpu = time.perf_counter(), time.process_time()
    incumbent = math.inf
    for number in range(1, budget + 1):
        trial = study.ask()
        t1, c1, inside, inside_cpu = time.perf_counter(), time.process_time(), timer.seconds, timer.cpu_seconds
        value: float | None
        try:
            value = float(problem.objective(trial))
        except Exception as err:  # an objective that fails is a failed trial, as in a user's study
            value = None
            if len(errors) < 3:
                errors.append(f"{type(err).__name__}: {err}")
        # the objective's time without the sampler calls inside it (define-by-run: suggest_* may sample)
        eval_s += time.perf_counter() - t1 - (timer.seconds - inside)
        eval_cpu_s += time.process_time() - c1 - (timer.cpu_seconds - inside_cpu)
        if value is None or not math.isfinite(value):
            value = None
            failures += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
        key = tuple(sorted((k, repr(v)) for k, v in trial.params.items()))
        repeats += key in seen
        seen.add(key)
        for name, param in trial.params.items():
            param_values.setdefault(name, set()).add(param)
        if value is not None:
            incumbent = min(incumbent, sign * value)
        values.append(value)
        best.append(None if math.isinf(incumbent) else sign * incumbent)
        if number in CHECKPOINTS or number == budget:
            sampler_at[str(number)] = round(timer.cpu_seconds, 4)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "problem": problem_name, "method": method, "seed": seed, "budget": budget,
        "values": [None if v is None else float(f"{v:.10g}") for v in values],
        "best": [None if v is None else float(f"{v:.10g}") for v in best],
        "wall_s": round(wall_s, 4), "cpu_s": round(cpu_s, 4),
        "eval_s": round(eval_s, 4), "eval_cpu_s": round(eval_cpu_s, 4),
        "sampler_s": round(timer.seconds, 4), "sampler_cpu_s": round(timer.cpu_seconds, 4),
        "overhead_cpu_s": round(cpu_s - eval_cpu_s, 4), "sampler_cpu_s_at": sampler_at,
        "repeated_params": int(repeats), "distinct_param_values": {k: len(v) for k, v in param_values.items()},
        "failures": int(failures), "errors": errors,
    }


def measure_overhead(method: str, trials: int = 100, dimension: int = 10, seed: int = 0,
                     tetra_kwargs: str = "{}") -> dict[str, Any]:
    """Ask + tell time per trial of one sampler on a ``dimension``-D continuous space (a sphere on [-5, 5]).

    The objective only suggests the params and sums squares, so the time is the sampler's and Optuna's.

    Returns:
        ``{"method", "trials", "dimension", "ms_per_trial": [...], "ms_at_end": mean of the last 10 trials,
        "ms_mean": mean over all trials}`` in wall milliseconds, and the same in CPU milliseconds (``cpu_ms_*``).
    """
    import optuna

    _quiet()
    problem = Problem(name=f"sphere-{dimension}d", family="overhead", direction="minimize",
                      objective=lambda t: 0.0, params={})
    sampler = make_sampler(method, seed, problem, json.loads(tetra_kwargs))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    ms, cpu_ms = [], []
    for _ in range(trials):
        t0, c0 = time.perf_counter(), time.process_time()
        trial = study.ask()
        x = np.array([trial.suggest_float(f"x{i}", -5.0, 5.0) for i in range(dimension)])
        value = float(np.sum((x - 1.0) ** 2))
        study.tell(trial, value)
        ms.append(1e3 * (time.perf_counter() - t0))
        cpu_ms.append(1e3 * (time.process_time() - c0))
    tail = slice(-min(10, len(ms)), None)
    return {"method": method, "trials": trials, "dimension": dimension, "seed": seed,
            "ms_per_trial": [round(v, 3) for v in ms], "cpu_ms_per_trial": [round(v, 3) for v in cpu_ms],
            "ms_at_end": round(float(np.mean(ms[tail])), 3), "cpu_ms_at_end": round(float(np.mean(cpu_ms[tail])), 3),
            "ms_mean": round(float(np.mean(ms)), 3), "cpu_ms_mean": round(float(np.mean(cpu_ms)), 3),
            "best_value": round(study.best_value, 6)}


def _job(job: tuple) -> dict[str, Any]:
    kind, *args = job
    if kind == "overhead":
        return {"overhead": measure_overhead(*args)}
    return {"run": run_one(*args)}


def run_jobs(jobs: list[tuple], workers: int, progress: bool = True) -> list[dict[str, Any]]:
    """Runs the jobs, in a process pool (spawned, one torch thread each) when ``workers > 1``."""
    out: list[dict[str, Any]] = []

    def report(result: dict[str, Any]) -> None:
        out.append(result)
        if progress:
            if "run" in result:
                r = result["run"]
                b = r["best"][-1]
                print(f"[{len(out)}/{len(jobs)}] {r['problem']:26s} {r['method']:8s} seed {r['seed']:2d}  "
                      f"best {b if b is None else f'{b:.6g}'}  {r['wall_s']:.1f}s "
                      f"(CPU {r['cpu_s']:.1f}s, sampler {r['sampler_cpu_s']:.1f}s)", flush=True)
            else:
                o = result["overhead"]
                print(f"[{len(out)}/{len(jobs)}] overhead {o['method']:8s} {o['cpu_ms_at_end']:.1f} CPU ms/trial at "
                      f"{o['trials']} trials", flush=True)

    if workers <= 1:
        import optuna
        import torch

        threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
        limiter = None
        try:  # in this process: leave the caller's settings as they were
            with warnings.catch_warnings():
                limiter = _worker_init()
                for job in jobs:
                    report(_job(job))
        finally:
            torch.set_num_threads(threads)
            optuna.logging.set_verbosity(verbosity)
            if limiter is not None:
                limiter.restore_original_limits()
        return out
    import multiprocessing as mp

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")  # the spawned workers' BLAS pools, before they import numpy
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        for result in pool.imap_unordered(_job, jobs, chunksize=1):
            report(result)
    return out


# ------------------------------------------------------------------------------------------------ scores


def normalized_scores(runs: Sequence[dict[str, Any]], direction: str, checkpoints: Sequence[int],
                      random_label: str = "random") -> dict[str, np.ndarray]:
    """Bayesmark's normalized score of every run of one problem at each checkpoint.

    Args:
        runs: the problem's runs (each with ``label``, ``seed`` and the ``best`` so far after each trial).
        direction: ``"minimize"`` or ``"maximize"``.
        checkpoints: trial counts, each at most every run's budget.
        random_label: the label of the random-search runs that define ``R(t)``.

    Returns:
        ``{label: array (runs of that label in seed order, len(checkpoints))}``.

    Raises:
        ValueError: without random-search runs, or a checkpoint beyond a run's budget.
    """
    sign = 1.0 if direction == "minimize" else -1.0

    def curve(run: dict[str, Any]) -> np.ndarray:
        if max(checkpoints) > len(run["best"]):
            raise ValueError(f"checkpoint {max(checkpoints)} is beyond the budget {len(run['best'])} of a "
                             f"{run['label']!r} run; use checkpoints up to the smallest budget.")
        b = np.array([math.inf if v is None else sign * v for v in run["best"]], dtype=float)
        return b[[t - 1 for t in checkpoints]]

    randoms = [curve(r) for r in runs if r["label"] == random_label]
    if not randoms:
        raise ValueError(f"no {random_label!r} runs: the normalized score needs random search as its 0.")
    reference = np.mean(randoms, axis=0)  # R(t), in minimization sign
    best_ever = min(sign * v for r in runs for v in r["values"] if v is not None)
    gap = reference - best_ever
    out: dict[str, list[np.ndarray]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        b = curve(run)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(gap > 0, (reference - b) / np.where(gap > 0, gap, 1.0),
                             np.where(b <= reference, 0.0, -1.0))
        out.setdefault(run["label"], []).append(np.clip(score, -1.0, 1.0))
    return {label: np.array(rows) for label, rows in out.items()}


def _ordered_labels(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Labels in :data:`METHODS` order; a TetraOpt variant's label goes right after ``tetra``."""
    rank = {m: i for i, m in enumerate(METHODS)}
    first = {r["label"]: rank.get(r["method"], len(METHODS)) + (0.5 if r["label"] != r["method"] else 0.0)
             for r in runs}
    return sorted(first, key=lambda label: (first[label], label))


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Scores, times and the suite means of a results file (recomputed from its runs).

    Returns:
        ``{"checkpoints", "problems": {problem: {"best_ever", "eval_ms", "methods": {label: {...}}}},
        "suite": {label: {...}}, "families": {family: {label: [...]}}}``.
    """
    runs = results["runs"]
    budget = min(len(r["best"]) for r in runs)
    checkpoints = [t for t in CHECKPOINTS if t <= budget] or [budget]
    labels = _ordered_labels(runs)
    problems = list(dict.fromkeys(r["problem"] for r in runs))
    per_problem: dict[str, Any] = {}
    by_seed: dict[str, dict[int, list[np.ndarray]]] = {}
    family_scores: dict[str, dict[str, list[np.ndarray]]] = {}
    for name in problems:
        mine = [r for r in runs if r["problem"] == name]
        info = results["problems"][name]
        scores = normalized_scores(mine, info["direction"], checkpoints)
        sign = 1.0 if info["direction"] == "minimize" else -1.0
        best_ever = sign * min(sign * v for r in mine for v in r["values"] if v is not None)
        evals = sum(len(r["values"]) for r in mine)
        entry: dict[str, Any] = {"best_ever": best_ever, "family": info["family"],
                                 "eval_ms": round(1e3 * sum(r["eval_cpu_s"] for r in mine) / evals, 2),
                                 "eval_wall_ms": round(1e3 * sum(r["eval_s"] for r in mine) / evals, 2),
                                 "methods": {}}
        for label in labels:
            if label not in scores:
                continue
            rows = scores[label]
            lruns = sorted((r for r in mine if r["label"] == label), key=lambda r: r["seed"])
            n = len(lruns)
            entry["methods"][label] = {
                "score_mean": [round(float(v), 4) for v in rows.mean(axis=0)],
                "score_se": [round(float(v), 4) for v in (rows.std(axis=0, ddof=1) / math.sqrt(n) if n > 1
                                                          else np.zeros(len(checkpoints)))],
                "best_mean": [round(float(np.mean([r["best"][t - 1] for r in lruns])), 6) for t in checkpoints],
                "sampler_ms_per_trial": round(1e3 * sum(r["sampler_cpu_s"] for r in lruns)
                                              / sum(len(r["values"]) for r in lruns), 2),
                "sampler_wall_ms_per_trial": round(1e3 * sum(r["sampler_s"] for r in lruns)
                                                   / sum(len(r["values"]) for r in lruns), 2),
                "cpu_s_per_run": round(sum(r["cpu_s"] for r in lruns) / n, 3),
                "wall_s_per_run": round(sum(r["wall_s"] for r in lruns) / n, 3),
                "repeated_params_per_run": round(sum(r["repeated_params"] for r in lruns) / n, 2),
                "failures_per_run": round(sum(r["failures"] for r in lruns) / n, 2),
                "runs": n,
            }
            for run, row in zip(lruns, rows, strict=True):
                by_seed.setdefault(label, {}).setdefault(run["seed"], []).append(row)
            family_scores.setdefault(info["family"], {}).setdefault(label, []).append(rows.mean(axis=0))
        per_problem[name] = entry
    suite: dict[str, Any] = {}
    k = checkpoints.index(BEATS_RANDOM_AT) if BEATS_RANDOM_AT in checkpoints else len(checkpoints) - 1
    for label in labels:
        means = [p["methods"][label]["score_mean"] for p in per_problem.values() if label in p["methods"]]
        seeds = by_seed.get(label, {})
        complete = [np.mean(rows, axis=0) for rows in seeds.values() if len(rows) == len(means)]
        se = (np.std(complete, axis=0, ddof=1) / math.sqrt(len(complete)) if len(complete) > 1
              else np.zeros(len(checkpoints)))
        # above random search's own mean score, which is 0 before the clipping at -1 and a little above after it
        beats = [p["methods"][label]["score_mean"][k] > p["methods"]["random"]["score_mean"][k]
                 for p in per_problem.values() if label in p["methods"]]
        suite[label] = {
            "score_mean": [round(float(v), 4) for v in np.mean(means, axis=0)],
            "score_se": [round(float(v), 4) for v in se],
            "problems": len(means),
            "beats_random_share": round(float(np.mean(beats)), 3),
            "beats_random_at": checkpoints[k],
            "sampler_ms_per_trial": round(float(np.mean(
                [p["methods"][label]["sampler_ms_per_trial"] for p in per_problem.values()
                 if label in p["methods"]])), 2),
        }
    families = {fam: {label: [round(float(v), 4) for v in np.mean(rows, axis=0)] for label, rows in d.items()}
                for fam, d in family_scores.items()}
    return {"checkpoints": checkpoints, "problems": per_problem, "suite": suite, "families": families}


def estimate_wall(results: dict[str, Any], workers: int = 2, seeds: int = DEFAULT_SEEDS) -> dict[str, Any]:
    """Wall time of a run with ``seeds`` seeds of every (problem, method) of ``results`` on ``workers`` processes.

    Scaled from the mean CPU time per run measured here (at this file's budget; CPU time, not wall time, so that
    other loads on a shared machine do not inflate it); the pool keeps every worker busy, so the wall time on
    ``workers`` free cores is the total CPU time of the runs divided by the workers, plus the longest run.
    """
    totals: dict[str, list[float]] = {}
    for run in results["runs"]:
        if run.get("same_as"):
            continue  # copied from an identical run, not run
        totals.setdefault(f"{run['problem']}|{run['label']}", []).append(run["cpu_s"])
    per_pair = {k: float(np.mean(v)) for k, v in totals.items()}
    cpu = seeds * sum(per_pair.values())
    longest = max(max(v) for v in totals.values())
    by_problem: dict[str, float] = {}
    by_method: dict[str, float] = {}
    for key, seconds in per_pair.items():
        problem, label = key.split("|")
        by_problem[problem] = by_problem.get(problem, 0.0) + seeds * seconds
        by_method[label] = by_method.get(label, 0.0) + seeds * seconds
    return {"workers": workers, "seeds": seeds, "budget": min(len(r["best"]) for r in results["runs"]),
            "cpu_s": round(cpu, 1), "wall_s": round(cpu / workers + longest, 1),
            "cpu_s_by_problem": {k: round(v, 1) for k, v in by_problem.items()},
            "cpu_s_by_method": {k: round(by_method.get(k, 0.0), 1) for k in _ordered_labels(results["runs"])}}


# ------------------------------------------------------------------------------------------------ report


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """The report: suite means, family means, per-problem tables, costs and the overhead measurement."""
    checkpoints = summary["checkpoints"]
    head = "| method | " + " | ".join(f"t={t}" for t in checkpoints)
    lines = ["# HPO benchmark: normalized score (0 = random search, 1 = best value seen by any run)", ""]
    lines.append("Bayesmark's normalization per problem and run, clipped below at -1, mean over seeds; "
                 "`benchmarks/hpo.py` docstring has the protocol.")
    for run in results["meta"].get("invocations", []):
        lines.append(f"- `python benchmarks/hpo.py {' '.join(run['argv'])}`: {', '.join(run['labels'])}; "
                     f"{run['wall_s']:.0f} s wall on {run['workers']} worker(s), {run.get('cpus', '?')} CPUs"
                     + (f". {run['note']}" if run.get("note") else ""))
    at = BEATS_RANDOM_AT if BEATS_RANDOM_AT in checkpoints else checkpoints[-1]
    lines += ["", "## Suite", "", "Mean over problems ± standard error over seeds; 'beats random': share of "
              f"problems where the mean score at t={at} is above random search's (random search's mean score is 0 "
              "before the clipping at -1, a little above 0 after it).", "",
              head + " | problems | beats random | sampler CPU ms/trial |",
              "|---" * (len(checkpoints) + 4) + "|"]
    for label, s in summary["suite"].items():
        cells = [f"{m:.2f} ± {e:.2f}" for m, e in zip(s["score_mean"], s["score_se"], strict=True)]
        beats = "-" if label == "random" else f"{100 * s['beats_random_share']:.0f}%"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {s['problems']} | {beats} | "
                     f"{s['sampler_ms_per_trial']:.1f} |")
    lines += ["", "## Families", "", "| family | method | " + " | ".join(f"t={t}" for t in checkpoints) + " |",
              "|---" * (len(checkpoints) + 2) + "|"]
    for family, rows in summary["families"].items():
        for label, means in rows.items():
            lines.append(f"| {family} | {label} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines += ["", "## Problems", ""]
    for name, p in summary["problems"].items():
        info = results["problems"][name]
        lines.append(f"### {name} ({info['direction']}; best seen {p['best_ever']:.6g}; "
                     f"{p['eval_ms']:.1f} CPU ms per evaluation)")
        lines.append("")
        lines.append(info["description"] + ". Params: " + ", ".join(f"{k} {v}" for k, v in info["params"].items()))
        lines.append("")
        lines.append(head + f" | mean best at t={checkpoints[-1]} | sampler CPU ms/trial | repeated params/run |")
        lines.append("|---" * (len(checkpoints) + 4) + "|")
        for label, m in p["methods"].items():
            cells = [f"{a:.2f} ± {e:.2f}" for a, e in zip(m["score_mean"], m["score_se"], strict=True)]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {m['best_mean'][-1]:.6g} | "
                         f"{m['sampler_ms_per_trial']:.1f} | {m['repeated_params_per_run']:.1f} |")
        lines.append("")
    overhead = results.get("overhead", {})
    if overhead:
        lines += ["## Ask + tell time per trial (10-D continuous space, trivial objective)", "",
                  "CPU milliseconds (wall milliseconds on this shared machine in parentheses).", "",
                  "| method | trials | ms/trial, last 10 trials | ms/trial, mean |", "|---|---|---|---|"]
        for label, o in overhead.items():
            lines.append(f"| {label} | {o['trials']} | {o['cpu_ms_at_end']:.1f} ({o['ms_at_end']:.1f}) | "
                         f"{o['cpu_ms_mean']:.1f} ({o['ms_mean']:.1f}) |")
        lines.append("")
    est = results.get("estimate")
    if est:
        lines += [f"## Cost of the default run ({est['seeds']} seeds, budget {est['budget']}, "
                  f"{est['workers']} workers)", "",
                  f"Estimated from this file's CPU time per run: {est['cpu_s'] / 3600:.2f} CPU hours, "
                  f"{est['wall_s'] / 3600:.2f} hours wall on {est['workers']} free cores.", "",
                  "| method | CPU s |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in est["cpu_s_by_method"].items()]
        lines += ["", "| problem | CPU s |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in est["cpu_s_by_problem"].items()]
        lines.append("")
    return "\n".join(lines)


def _table(summary: dict[str, Any]) -> str:
    checkpoints = summary["checkpoints"]
    lines = []
    for name, p in summary["problems"].items():
        lines.append(f"{name}  ({p['eval_ms']:.1f} ms/eval, best seen {p['best_ever']:.6g})")
        for label, m in p["methods"].items():
            cells = "  ".join(f"t={t}: {a:+.2f}±{e:.2f}" for t, a, e in
                              zip(checkpoints, m["score_mean"], m["score_se"], strict=True))
            lines.append(f"    {label:14s} {cells}   sampler {m['sampler_ms_per_trial']:.1f} ms/trial, "
                         f"repeats {m['repeated_params_per_run']:.1f}/run")
    lines.append("SUITE (mean over problems ± s.e. over seeds)")
    for label, s in summary["suite"].items():
        cells = "  ".join(f"t={t}: {a:+.2f}±{e:.2f}" for t, a, e in
                          zip(checkpoints, s["score_mean"], s["score_se"], strict=True))
        beats = "" if label == "random" else (f"   beats random at t={s['beats_random_at']} on "
                                              f"{100 * s['beats_random_share']:.0f}% of {s['problems']} problems")
        lines.append(f"    {label:14s} {cells}{beats}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("optuna", "scikit-learn", "torch", "lightning", "numpy", "scipy", "coco-experiment", "cmaes",
                    "tetra-lightning"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "tetra_lightning"],
                               capture_output=True, text=True, check=True).stdout.strip()
        out["tetra_lightning_commit"] = commit + (" (tetra_lightning/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["tetra_lightning_commit"] = "unknown"
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}


def _dumps(results: dict[str, Any]) -> str:
    """JSON with one line per run (the curves stay readable and the file small)."""
    runs = results["runs"]
    body = json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2)
    run_lines = ",\n".join("    " + json.dumps(r, separators=(",", ":")) for r in runs)
    return body[:-2] + ',\n  "runs": [\n' + run_lines + "\n  ]\n}\n"


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS),
                        help="comma-separated problem names, or a family: sklearn, lightning, bbob")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)} (default: all but tpe_indep)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds per (problem, method)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="trials per run")
    parser.add_argument("--tetra-kwargs", default="{}", help="JSON of TetraOptSampler constructor kwargs, e.g. "
                        "'{\"float_grid\": 32, \"optimizer_kwargs\": {\"rank\": 2}}'")
    parser.add_argument("--label", default=None, help="store the tetra runs under this name (ablations)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1: the CPU is shared)")
    parser.add_argument("--merge", action="store_true", help="update an existing --out: replace the runs of the "
                        "(problem, method label, seed) triples run now, keep the others")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_PROBLEMS)} problems, 3 seeds, budget 20, "
                        f"ask+tell timing over {QUICK_OVERHEAD_TRIALS} trials")
    parser.add_argument("--overhead-trials", type=int, default=100,
                        help="ask+tell timing on a 10-D continuous space for this many trials (0: skip)")
    parser.add_argument("--overhead-methods", default="tetra,gp", help="samplers timed by --overhead-trials")
    parser.add_argument("--out", default=None,
                        help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)}; with --quick, hpo_quick.json)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: recompute the scores, tables and estimate of --out from its runs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems = ",".join(QUICK_PROBLEMS)
        args.seeds, args.budget = min(args.seeds, 3), min(args.budget, 20)
        args.overhead_trials = min(args.overhead_trials, QUICK_OVERHEAD_TRIALS)
    if args.out is None:
        args.out = str(DEFAULT_OUT.with_name("hpo_quick.json") if args.quick else DEFAULT_OUT)
    return args


def _resolve_problems(spec: str) -> list[str]:
    from benchmarks.hpo_problems import FAMILIES, problem_names

    names: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if item in FAMILIES:
            names.extend(problem_names(item))
        elif item in PROBLEMS:
            names.append(item)
        else:
            raise SystemExit(f"--problems: unknown problem {item!r}; use a family ({', '.join(FAMILIES)}) or one "
                             f"of: {', '.join(PROBLEMS)}")
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; writes ``--out`` (JSON) and the markdown next to it; returns the results."""
    args = parse_args(argv)
    problems = _resolve_problems(args.problems)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown method(s) {bad}; choose from {', '.join(METHODS)}.")
    tetra_kwargs = json.loads(args.tetra_kwargs)
    if not isinstance(tetra_kwargs, dict):
        raise SystemExit(f"--tetra-kwargs must be a JSON object, got {args.tetra_kwargs!r}.")
    label = {m: m for m in methods}
    if args.label:
        label["tetra"] = args.label
    out = Path(args.out)
    if args.report:
        if not out.is_file():
            raise SystemExit(f"--report: {out} does not exist; run the benchmark first or pass --out FILE.")
        return write_report(json.loads(out.read_text()), out, quiet=args.quiet)
    results: dict[str, Any] = {"meta": {}, "problems": {}, "methods": {}, "overhead": {}, "runs": []}
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        if old["meta"]["budget"] != args.budget:
            raise SystemExit(f"--merge: {out} has budget {old['meta']['budget']}, not {args.budget}; use the same "
                             "--budget or another --out.")
        results = old
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    redo = {(p, label[m], seed) for p in problems for m in methods for seed in seeds}
    results["runs"] = [r for r in results["runs"] if (r["problem"], r["label"], r["seed"]) not in redo]

    jobs: list[tuple] = []
    skipped: list[str] = []
    copies: list[tuple[str, str, str]] = []  # (problem, method, method whose runs it repeats)
    for name in problems:
        problem = get_problem(name)
        results["problems"][name] = {"family": problem.family, "direction": problem.direction,
                                     "params": problem.params, "description": problem.description,
                                     "categorical": problem.categorical, "conditional": problem.conditional}
        for method in methods:
            settings = method_settings(method, problem, tetra_kwargs)
            if settings is None:
                skipped.append(f"{method} on {name}")
                continue
            results["methods"].setdefault(label[method], {}).update({"method": method, **settings})
            twin = same_sampler_as(method, problem)
            if twin is not None and twin in methods:
                copies.append((name, method, twin))
                continue
            jobs.extend(("run", name, method, seed, args.budget, json.dumps(tetra_kwargs)) for seed in seeds)
    # longest first, so that the pool does not end waiting on one slow run
    slow = {"CNN-digits-acc": 3, "gp": 2, "tetra": 1}
    jobs.sort(key=lambda j: -(slow.get(j[1], 0) * 10 + slow.get(j[2], 0)))
    overhead_methods = [m for m in args.overhead_methods.split(",") if m] if args.overhead_trials > 0 else []
    jobs = [("overhead", m, args.overhead_trials, 10, 0, json.dumps(tetra_kwargs if m == "tetra" else {}))
            for m in overhead_methods] + jobs
    if skipped and not args.quiet:
        print("skipped (method does not apply): " + "; ".join(skipped))
    start = time.perf_counter()
    load = [round(v, 2) for v in os.getloadavg()]
    for result in run_jobs(jobs, args.workers, progress=not args.quiet):
        if "run" in result:
            run = result["run"]
            run["label"] = label[run["method"]]
            results["runs"].append(run)
        else:
            o = result["overhead"]
            results["overhead"][label.get(o["method"], o["method"])] = o
    wall = time.perf_counter() - start
    for name, method, twin in copies:
        for run in [r for r in results["runs"] if r["problem"] == name and r["label"] == label[twin]
                    and r["seed"] in seeds]:
            results["runs"].append({**run, "method": method, "label": label[method], "same_as": twin})
    order = {name: i for i, name in enumerate(PROBLEMS)}
    results["runs"].sort(key=lambda r: (order.get(r["problem"], 99), r["label"], r["seed"]))
    meta = results["meta"]
    meta.update({"budget": args.budget, "checkpoints": [t for t in CHECKPOINTS if t <= args.budget],
                 "versions": _versions(), "machine": {**_machine(), "load_avg_at_start": load}})
    meta.setdefault("invocations", []).append({
        "argv": list(sys.argv[1:] if argv is None else argv), "labels": [label[m] for m in methods],
        "problems": problems, "seeds": list(seeds), "workers": args.workers, "cpus": os.cpu_count(),
        "wall_s": round(wall, 1), "skipped": skipped, "tetra_kwargs": tetra_kwargs,
        "copied": [f"{method} on {name} = {twin} (the same sampler in Optuna {_versions()['optuna']})"
                   for name, method, twin in copies]})
    return write_report(results, out, quiet=args.quiet, wall=wall)


def write_report(results: dict[str, Any], out: Path, quiet: bool = False, wall: float | None = None) -> dict[str, Any]:
    """Recomputes the summary and the cost estimate from the runs, writes ``out`` and its markdown, prints."""
    summary = summarize(results)
    results["summary"] = summary
    results["estimate"] = estimate_wall(results, workers=2, seeds=DEFAULT_SEEDS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dumps(results))
    out.with_suffix(".md").write_text(markdown(results, summary))
    if not quiet:
        print(_table(summary))
        for lab, o in results["overhead"].items():
            print(f"ask+tell {lab:8s} {o['cpu_ms_at_end']:7.1f} CPU ms/trial over the last 10 of {o['trials']} "
                  f"trials (mean {o['cpu_ms_mean']:.1f}; wall {o['ms_at_end']:.1f})")
        est = results["estimate"]
        print(f"{DEFAULT_SEEDS} seeds of this file's (problem, method) pairs at budget {est['budget']}: "
              f"{est['cpu_s'] / 3600:.2f} CPU h, ~{est['wall_s'] / 3600:.2f} h on 2 free cores"
              + ("" if wall is None else f"; this run: {wall:.0f} s"))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
