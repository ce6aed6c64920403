"""Automatic rank selection and tensorized layers trained from scratch.

* :mod:`~tetra_lightning.lowrank.priors`: the low-rank Gamma-Gaussian prior (Hawkins & Zhang) and the SVD-training
  regularizers (L1 on singular values + orthogonality), as penalties on each rank component.
* :mod:`~tetra_lightning.lowrank.shrink`: remove the components whose scale fell below a threshold, for real.
* :mod:`~tetra_lightning.lowrank.layers`: TT linear/conv built from shapes (Khrulkov initialization),
  ``TTEmbedding``, ``TTGRUCell``, ``TTLSTMCell``.

No Lightning import here: :class:`~tetra_lightning.callbacks.lowrank.LowRankCallback` wraps these.
"""

from __future__ import annotations

from tetra_lightning.lowrank.layers import (
    TTEmbedding,
    TTGRUCell,
    TTLSTMCell,
    khrulkov_init_,
    tt_conv2d,
    tt_embedding_from,
    tt_linear,
)
from tetra_lightning.lowrank.priors import (
    GammaGaussianPrior,
    SVDTrainingRegularizer,
    bond_groups,
    component_scales,
    lowrank_penalty,
    shrinkable_layers,
)
from tetra_lightning.lowrank.shrink import kept_components, layer_ranks, shrink_, shrink_layer

__all__ = [
    "GammaGaussianPrior",
    "SVDTrainingRegularizer",
    "TTEmbedding",
    "TTGRUCell",
    "TTLSTMCell",
    "bond_groups",
    "component_scales",
    "kept_components",
    "khrulkov_init_",
    "layer_ranks",
    "lowrank_penalty",
    "shrink_",
    "shrink_layer",
    "shrinkable_layers",
    "tt_conv2d",
    "tt_embedding_from",
    "tt_linear",
]
