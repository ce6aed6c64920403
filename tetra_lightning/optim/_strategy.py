"""The interface between :class:`~tetra_lightning.optim.TetraOpt` and its search strategies, and what they share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tetra_lightning.optim.tetraopt import TetraOpt

__all__ = ["MAX_FIT_POINTS", "Strategy", "normal_scores"]

# points a surrogate is fitted on at most (the best half and a random sample of the rest on long runs)
MAX_FIT_POINTS = 400


class Strategy:
    """How :class:`~tetra_lightning.optim.TetraOpt` proposes points: ``propose`` grid points (multi-indices), and
    ``observe`` the told ones. The optimizer filters proposals (never a cached or pending point) and fills up with
    random points; the base class proposes nothing (``method="random"``)."""

    def __init__(self, opt: TetraOpt) -> None:
        self.opt = opt

    def propose(self, n: int) -> list[np.ndarray]:
        """Up to ``n`` candidate multi-indices, best first."""
        return []

    def observe(self, indices: list[tuple[int, ...]], scores: list[float]) -> None:
        """Called after every ``tell`` with the newly recorded successful points and their scores."""
        return None


def normal_scores(y: np.ndarray) -> np.ndarray:
    """Rank transform to roughly standard-normal scores (robust to outliers such as broken networks)."""
    m = len(y)
    ranks = np.empty(m)
    order = np.argsort(y, kind="stable")
    ranks[order] = np.arange(m)
    # average ranks of ties so equal values get equal scores
    _, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    u = (ranks + 0.5) / m
    return 1.6 * np.log(u / (1.0 - u)) / 2.0  # logistic approximation of the probit
