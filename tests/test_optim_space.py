from __future__ import annotations

import math

import numpy as np
import pytest

from tetra_lightning.optim import Categorical, Float, Int, SearchSpace, TetraOpt, as_space


def test_categorical_round_trip() -> None:
    dim = Categorical(["relu", "gelu", 3, None])
    assert dim.size == 4
    for i, v in enumerate(dim.grid):
        assert dim.index(v) == i
        assert dim.value(i) == v
    with pytest.raises(ValueError, match="not one of the choices"):
        dim.index("tanh")


def test_int_grid_and_round_trip() -> None:
    dim = Int(2, 10, step=2)
    assert dim.grid == (2, 4, 6, 8, 10)
    assert [dim.index(v) for v in dim.grid] == [0, 1, 2, 3, 4]
    assert dim.index(np.int64(7)) in (2, 3)  # nearest grid point
    with pytest.raises(ValueError, match="outside the Int range"):
        dim.index(13)


def test_float_linear_and_log_grids() -> None:
    lin = Float(0.0, 1.0, grid=5)
    assert lin.grid == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert lin.index(0.3) == 1
    log = Float(1e-4, 1e-1, log=True, grid=4)
    np.testing.assert_allclose(log.grid, [1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-12)
    # nearest in log space: 4e-3 is closer to 1e-2 than 1e-3 in log10 (-2.40 vs -2.0/-3.0)
    assert log.index(4e-3) == 2
    assert log.index(2e-3) == 1
    explicit = Float(0.0, 1.0, grid=[0.0, 0.1, 0.9])
    assert explicit.index(0.8) == 2


def test_space_round_trip_all_types() -> None:
    space = SearchSpace({"act": Categorical(["relu", "gelu"]), "layers": Int(1, 4),
                         "lr": Float(1e-5, 1e-1, log=True, grid=5), "drop": Float(0.0, 0.5, grid=6)})
    assert space.sizes == (2, 4, 5, 6)
    assert space.size == 240
    rng = np.random.default_rng(0)
    for idx in space.sample_indices(rng, 50):
        params = space.from_index(idx)
        assert space.to_index(params) == tuple(int(v) for v in idx)
    params = space.from_index((1, 3, 2, 5))
    assert params["act"] == "gelu" and params["layers"] == 4 and params["drop"] == 0.5
    assert math.isclose(params["lr"], 1e-3, rel_tol=1e-12)


def test_plain_dict_is_a_space_and_lists_are_categorical() -> None:
    space = as_space({"x": Int(0, 3), "opt": ["sgd", "adam"]})
    assert isinstance(space, SearchSpace)
    assert space.sizes == (4, 2)
    opt = TetraOpt({"x": Int(0, 3), "opt": ["sgd", "adam"]}, budget=3)
    assert len(opt.ask(3)) == 3


def test_quantized_modes_round_trip() -> None:
    space = SearchSpace({"a": Float(0.0, 1.0, grid=16), "b": Int(0, 8), "c": ["x", "y", "z"]}, quantize=True)
    # 16 = 2**4 -> four binary modes, 9 = 3**2 -> two ternary modes, 3 stays one mode
    assert space.mode_sizes == (2, 2, 2, 2, 3, 3, 3)
    idx = space.sample_indices(np.random.default_rng(1), 100)
    modes = space.to_modes(idx)
    assert modes.shape == (100, 7)
    assert np.array_equal(space.from_modes(modes), idx)
    assert modes.max(axis=0).tolist() == [1, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: Categorical([]), ValueError, "at least one value"),
        (lambda: Categorical(["a", "a"]), ValueError, "must be distinct"),
        (lambda: Categorical("abc"), TypeError, "list or tuple"),
        (lambda: Int(5, 5), ValueError, "low < high"),
        (lambda: Int(5, 1), ValueError, "low < high"),
        (lambda: Int(0, 10, step=0), ValueError, "positive int"),
        (lambda: Int(0, 10, step=3), ValueError, "multiple of `step`"),
        (lambda: Int(0.5, 3), TypeError, "must be an int"),
        (lambda: Float(1.0, 1.0), ValueError, "low < high"),
        (lambda: Float(0.0, 1.0, log=True), ValueError, "needs `low > 0`"),
        (lambda: Float(-1.0, 1.0, log=True), ValueError, "needs `low > 0`"),
        (lambda: Float(0.0, 1.0, grid=1), ValueError, "int >= 2"),
        (lambda: Float(0.0, 1.0, grid=[0.5, 0.2]), ValueError, "strictly increasing"),
        (lambda: Float(0.0, 1.0, grid=[0.5, 2.0]), ValueError, r"lie in \[low, high\]"),
        (lambda: SearchSpace({}), ValueError, "at least one dimension"),
        (lambda: SearchSpace({"x": 3}), TypeError, "must be Categorical, Int or Float"),
    ],
)
def test_bad_spaces_raise_clear_errors(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make()


def test_to_index_errors_name_the_problem() -> None:
    space = SearchSpace({"x": Int(0, 3), "c": ["a", "b"]})
    with pytest.raises(KeyError, match="miss the dimension"):
        space.to_index({"x": 1})
    with pytest.raises(ValueError, match="not one of the choices"):
        space.to_index({"x": 1, "c": "z"})


def test_huge_int_range_is_never_materialized() -> None:
    seed = Int(0, 2**31 - 1)
    assert seed.n_values == 2**31 and seed.size == 128
    assert seed.grid[0] == 0 and seed.grid[-1] == 2**31 - 1
    assert seed.value(seed.index(2**30)) == pytest.approx(2**30, rel=0.01)  # nearest of the 128 levels
    opt = TetraOpt({"seed": seed, "x": Int(0, 3)}, budget=12, seed=0)
    while batch := opt.ask(3):
        opt.tell(batch, [float(p["seed"] % 7 + p["x"]) for p in batch])
    assert opt.n_evaluations == 12 and len({h["params"]["seed"] for h in opt.history}) > 1


def test_fine_float_step_keeps_128_levels_and_snaps_noisy_values() -> None:
    fine = Float(0.0, 100.0, step=0.001)  # 100001 values
    assert fine.size == 128 and fine.grid[0] == 0.0 and fine.grid[-1] == 100.0
    coarse = Float(0.0, 1.0, step=0.1)
    assert coarse.grid == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert coarse.index(0.30000000000000004) == 3 and coarse.index(0.3) == 3
    assert coarse.to_dict() == {"type": "float", "low": 0.0, "high": 1.0, "log": False, "step": 0.1}


def test_log_int_holds_every_small_integer_and_snaps_in_log_space() -> None:
    width = Int(1, 1024, log=True)
    assert width.size == 128 and width.grid[:10] == tuple(range(1, 11)) and width.grid[-1] == 1024
    assert width.value(width.index(37)) == 37  # on the grid: kept exactly
    small = Int(1, 20, log=True)
    assert small.grid == tuple(range(1, 21))


def test_categorical_choices_compare_with_their_type() -> None:
    dim = Categorical([0, 1, True, False])
    assert [dim.index(v) for v in (0, 1, True, False)] == [0, 1, 2, 3]
    assert dim.index(np.int64(1)) == 1 and dim.index(1.0) == 1
    with_nan = Categorical([math.nan, 1.0])
    assert with_nan.index(float("nan")) == 0
    many = Categorical(list(range(20000)))  # distinctness is checked by hashing, not pairwise
    assert many.index(19999) == 19999


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Categorical([math.nan, float("nan")]), "must be distinct"),
        (lambda: Categorical([1, 1.0]), "must be distinct"),
        (lambda: Int(0, 10, log=True), r"needs `low >= 1` and `step == 1`"),
        (lambda: Int(1, 9, step=2, log=True), r"needs `low >= 1` and `step == 1`"),
        (lambda: Float(0.0, 1.0, step=0.0), "`step` must be a positive number"),
        (lambda: Float(1e-3, 1.0, step=0.1, log=True), "`step` or `log=True`, not both"),
        (lambda: Float(0.0, 1.0, step=0.1, grid=5), "`step` or `grid`, not both"),
    ],
)
def test_bad_new_dimensions_raise_clear_errors(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_non_numbers_do_not_fit_numeric_dimensions() -> None:
    with pytest.raises(ValueError, match="not a number"):
        Int(0, 3).index("2")
    with pytest.raises(ValueError, match="not a number"):
        Float(0.0, 1.0).index(math.nan)


def test_nearest_levels_matches_the_scalar_snap_on_ties_and_outside_the_range() -> None:
    from tetra_lightning.optim.space import _nearest, nearest_levels

    coords = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
    values = np.array([-1.0, 0.0, 0.05, 0.06, 0.175, 0.3, 0.75, 0.9, 1.0, 2.0])
    got = nearest_levels(coords, values)
    assert got.tolist() == [_nearest(coords.tolist(), v) for v in values.tolist()]
    assert got.tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 4, 4]  # ties (0.05, 0.175, 0.75) take the lower level
    assert nearest_levels(np.array([0.5]), np.array([0.0, 3.0])).tolist() == [0, 0]
