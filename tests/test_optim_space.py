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
