from __future__ import annotations

import math

import numpy as np
import pytest

from tetra_lightning.optim import METHODS, Categorical, Float, Int, SearchSpace, TetraOpt, maximize, minimize
from tetra_lightning.optim.tt import tt_eval, tt_random

SIX_BY_FIVE = SearchSpace({f"e{k}": Int(0, 4) for k in range(6)})


def _separable(params: dict) -> float:
    # unique maximum 0 at e_k = (k * 2) % 5
    return -float(sum(abs(params[f"e{k}"] - (k * 2) % 5) ** 1.5 for k in range(6)))


def _drive(opt: TetraOpt, f, n: int = 1) -> list[tuple]:
    seen = []
    while batch := opt.ask(n):
        seen.extend(tuple(p.values()) for p in batch)
        opt.tell(batch, [f(p) for p in batch])
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_sequence(method: str) -> None:
    a = _drive(TetraOpt(SIX_BY_FIVE, budget=40, seed=7, method=method), _separable, n=3)
    b = _drive(TetraOpt(SIX_BY_FIVE, budget=40, seed=7, method=method), _separable, n=3)
    c = _drive(TetraOpt(SIX_BY_FIVE, budget=40, seed=8, method=method), _separable, n=3)
    assert a == b
    assert a != c
    assert len(a) == 40 and len(set(a)) == 40  # distinct points, budget used exactly


@pytest.mark.parametrize("method", METHODS)
def test_budget_never_exceeded_with_pending_points(method: str) -> None:
    opt = TetraOpt(SIX_BY_FIVE, budget=10, seed=0, method=method)
    first = opt.ask(4)
    second = opt.ask(4)
    third = opt.ask(4)  # only 2 left: 8 are pending
    assert (len(first), len(second), len(third)) == (4, 4, 2)
    assert opt.ask(1) == []
    points = [tuple(p.values()) for p in first + second + third]
    assert len(set(points)) == 10
    opt.tell(first + second + third, [_separable(p) for p in first + second + third])
    assert opt.n_evaluations == 10
    assert opt.ask(5) == []


def test_cache_hits_are_not_counted() -> None:
    opt = TetraOpt(SIX_BY_FIVE, budget=5, seed=0)
    batch = opt.ask(2)
    opt.tell(batch, [1.0, 2.0])
    opt.tell(batch, [10.0, 20.0])  # repeated points: answered by the cache, value ignored
    assert opt.n_evaluations == 2
    assert opt.n_cache_hits == 2
    assert opt.best_value == 2.0
    assert len(opt.ask(10)) == 3


def test_ask_returns_distinct_unseen_points_until_the_space_is_exhausted() -> None:
    space = {"a": ["x", "y", "z"], "b": Int(0, 3)}
    opt = TetraOpt(space, seed=1)  # no budget: until the 12 points are used up
    sizes = []
    seen = set()
    while batch := opt.ask(5):
        sizes.append(len(batch))
        seen.update((p["a"], p["b"]) for p in batch)
        opt.tell(batch, [float(p["b"]) for p in batch])
    assert sizes == [5, 5, 2]
    assert len(seen) == 12


def test_finds_global_optimum_of_a_separable_tensor() -> None:
    # 15625 points, budget 80 (0.5 %): the TT surrogate + local search lands on the unique maximum
    for seed in range(3):
        res = maximize(_separable, SIX_BY_FIVE, budget=80, seed=seed)
        assert res.best_value == 0.0
        assert res.best_params == {f"e{k}": (k * 2) % 5 for k in range(6)}


def test_ttopt_cross_finds_separable_optimum() -> None:
    res = maximize(_separable, SIX_BY_FIVE, budget=150, seed=0, method="ttopt", rank=1)
    assert res.best_value == 0.0


def test_finds_global_optimum_of_a_low_rank_tensor() -> None:
    # a non-negative rank-2 TT on 6**5 = 7776 points: not separable, one peak of height 22.40
    rng = np.random.default_rng(5)
    cores = [np.abs(c) for c in tt_random([6] * 5, 2, rng)]
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 5, indexing="ij"), -1).reshape(-1, 5)
    optimum = float(tt_eval(cores, grid).max())
    assert optimum == pytest.approx(22.4006, abs=1e-4)
    space = {f"x{k}": Int(0, 5) for k in range(5)}

    def f(p: dict) -> float:
        return float(tt_eval(cores, np.array([[p[f"x{k}"] for k in range(5)]]))[0])

    for seed in range(3):
        # budget 60 = 0.8 % of the tensor
        assert maximize(f, space, budget=60, seed=seed).best_value == pytest.approx(optimum, abs=1e-9)


def test_minimize_and_float_log_space() -> None:
    space = {"lr": Float(1e-5, 1e-1, log=True, grid=9), "wd": Float(0.0, 0.1, grid=11)}

    def loss(p: dict) -> float:
        return (math.log10(p["lr"]) + 3.0) ** 2 + (p["wd"] - 0.03) ** 2

    res = minimize(loss, space, budget=40, seed=0)
    assert math.isclose(res.best_params["lr"], 1e-3, rel_tol=1e-9)
    assert math.isclose(res.best_params["wd"], 0.03, abs_tol=1e-12)
    assert res.best_value < 1e-20


def test_failed_evaluations_are_recorded_and_the_search_goes_on() -> None:
    calls = []

    def f(p: dict) -> float:
        calls.append(p)
        if p["e0"] == 1:
            raise RuntimeError("diverged")
        if p["e1"] == 2:
            return float("nan")
        if p["e2"] == 3:
            return float("inf")
        return _separable(p)

    res = maximize(f, SIX_BY_FIVE, budget=60, seed=0)
    assert res.n_evaluations == 60 == len(calls)
    failed = [h for h in res.history if h["state"] == "failed"]
    assert res.n_failed == len(failed) > 0
    assert all(h["value"] is None for h in failed)
    assert any("diverged" in (h["error"] or "") for h in failed)
    ok = [h["value"] for h in res.history if h["state"] == "complete"]
    assert res.best_value == max(ok)
    assert res.best_params["e0"] != 1


def test_warm_start_points_are_used_but_not_counted() -> None:
    best = {f"e{k}": (k * 2) % 5 for k in range(6)}
    opt = TetraOpt(SIX_BY_FIVE, budget=5, seed=0, warm_start=[(best, 0.0)])
    assert opt.best_value == 0.0 and opt.n_evaluations == 0
    asked = []
    while batch := opt.ask(2):
        asked.extend(batch)
        opt.tell(batch, [_separable(p) for p in batch])
    assert len(asked) == 5 and best not in asked
    assert opt.best_params == best


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "`budget` must be a positive int"),
        ({"method": "cma"}, "`method` must be one of"),
        ({"direction": "up"}, "`direction` must be"),
        ({"rank": 0}, "`rank` must be a positive int"),
        ({"local_fraction": 1.5}, r"`local_fraction` must be in \[0, 1\]"),
        ({"n_init": 0}, "`n_init` must be a positive int"),
        ({"learning_rate": 0.1}, "unknown option"),
        ({"restart": -1}, "`restart` must be a non-negative int"),
        ({"restart": 2.5}, "`restart` must be a non-negative int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TetraOpt(SIX_BY_FIVE, **kwargs)


def _two_basins(p: dict) -> float:
    # a wide basin peaking at 0.6 around all-zeros and a narrow one peaking at 1.0 around all-fours
    x = np.array([p[f"e{k}"] for k in range(6)])
    return max(0.6 - 0.05 * float((x != 0).sum()), 1.0 - 0.25 * float((x != 4).sum()))


def test_restarts_escape_a_deceptive_basin() -> None:
    found = {}
    for restart in (0, 40):
        hits = []
        for seed in range(6):
            res = maximize(_two_basins, SIX_BY_FIVE, budget=200, seed=seed, restart=restart)
            hits.append(res.best_value == 1.0)
        found[restart] = sum(hits)
    # without restarts most runs stay in the wide basin; with them, most find the narrow optimum
    assert found[0] <= 2
    assert found[40] >= 4


@pytest.mark.parametrize("fail", [False, True])
def test_restart_after_stale_evaluations(fail: bool) -> None:
    opt = TetraOpt(SIX_BY_FIVE, budget=100, seed=0, restart=10)
    while params := opt.ask(3):
        opt.tell(params, [math.nan if fail else 1.0] * len(params))
    # constant values: each epoch is its first evaluation plus 10 without improvement; failures never improve
    assert opt.n_restarts == (10 if fail else 9)
    assert opt.n_evaluations == 100 and len(opt._cache) == 100
    # replaying the history in one tell (as TetraOptSampler does) restarts at the same points
    replay = TetraOpt(SIX_BY_FIVE, seed=1, restart=10)
    replay.tell([h["params"] for h in opt.history], [h["value"] for h in opt.history])
    assert replay.n_restarts == opt.n_restarts
    off = TetraOpt(SIX_BY_FIVE, budget=100, seed=0, restart=0)
    while params := off.ask(3):
        off.tell(params, [1.0] * len(params))
    assert off.n_restarts == 0


def test_ask_and_tell_argument_errors() -> None:
    opt = TetraOpt({"c": Categorical(["a", "b"])}, budget=2)
    with pytest.raises(ValueError, match="`n` must be a positive int"):
        opt.ask(0)
    with pytest.raises(ValueError, match="same length"):
        opt.tell([{"c": "a"}], [1.0, 2.0])
    with pytest.raises(TypeError, match="list of params dicts"):
        opt.tell({"c": "a"}, [1.0])  # type: ignore[arg-type]


def test_quantized_space_optimization() -> None:
    # 16 = 2**4 grid points per dimension -> a chain of 12 binary TT modes
    space = SearchSpace({f"x{k}": Float(-1.0, 1.0, grid=16) for k in range(3)}, quantize=True)
    assert len(space.mode_sizes) == 12
    target = np.linspace(-1.0, 1.0, 16)[[3, 12, 7]]
    res = maximize(lambda p: -float(sum((p[f"x{k}"] - target[k]) ** 2 for k in range(3))), space, budget=80)
    step = 2.0 / 15
    assert res.best_value >= -(step ** 2) - 1e-12  # at most one grid step off in one coordinate
    assert res.n_evaluations == 80


def test_off_grid_tells_keep_their_exact_params() -> None:
    opt = TetraOpt({"x": Float(0.0, 1.0, grid=5), "c": Categorical(["a", "b"])}, budget=10, seed=0)
    opt.tell([{"x": 0.3, "c": "a"}], [5.0])  # 0.3 lies between the grid points 0.25 and 0.5
    assert opt.history[0]["params"] == {"x": 0.3, "c": "a"}
    assert opt.best_params == {"x": 0.3, "c": "a"} and opt.best_value == 5.0
    asked = []
    while batch := opt.ask(3):
        asked.extend(batch)
        opt.tell(batch, [0.0] * len(batch))
    assert {"x": 0.25, "c": "a"} not in asked  # the model filed 0.3 under 0.25: not proposed again
    assert len(asked) == 9


def test_a_told_value_that_is_not_a_number_raises_and_records_nothing() -> None:
    opt = TetraOpt({"c": Categorical(["a", "b", "c"])}, budget=3)
    with pytest.raises(TypeError, match="must be a number or None"):
        opt.tell([{"c": "a"}, {"c": "b"}], [1.0, "oops"])
    with pytest.raises(TypeError, match="must be a number or None"):
        opt.tell([{"c": "a"}], [[1.0]])
    assert opt.n_evaluations == 0 and opt.history == []
    opt.tell([{"c": "a"}, {"c": "b"}], [np.float32(1.5), None])  # numbers of any kind, None for a failure
    assert [h["state"] for h in opt.history] == ["complete", "failed"] and opt.best_value == 1.5
