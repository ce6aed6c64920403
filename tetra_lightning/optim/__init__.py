"""Black-box tensor-train optimizers over finite search spaces (pure numpy, no Lightning import)."""

from __future__ import annotations

from tetra_lightning.optim.space import Categorical, Dimension, Float, Int, SearchSpace, as_space
from tetra_lightning.optim.tetraopt import METHODS, OptimizeResult, TetraOpt, maximize, minimize

__all__ = [
    "METHODS",
    "Categorical",
    "Dimension",
    "Float",
    "Int",
    "OptimizeResult",
    "SearchSpace",
    "TetraOpt",
    "as_space",
    "maximize",
    "minimize",
]
