"""Factorized layers (SVD, Tucker-2, CP, TT) and the functional compression core.

No Lightning import here: callbacks wrap :func:`compress_`, :func:`restore_structure` and :func:`recompose_`.
"""

from __future__ import annotations

from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import (
    CPConfig,
    DecompositionConfig,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    config_from_dict,
)
from tetra_lightning.decompose.core import compress_, decompose_layer, recompose_, restore_structure
from tetra_lightning.decompose.cp import CPConv2d
from tetra_lightning.decompose.embedding import TTEmbedding
from tetra_lightning.decompose.ranks import factorized_param_count, resolve_ranks
from tetra_lightning.decompose.svd import SVDConv2d, SVDLinear
from tetra_lightning.decompose.tt import TTConv2d, TTLinear
from tetra_lightning.decompose.tucker import TuckerConv2d

__all__ = [
    "CPConfig",
    "CPConv2d",
    "DecompositionConfig",
    "FactorizedLayer",
    "SVDConfig",
    "SVDConv2d",
    "SVDLinear",
    "TTConfig",
    "TTConv2d",
    "TTEmbedding",
    "TTLinear",
    "TuckerConfig",
    "TuckerConv2d",
    "compress_",
    "config_from_dict",
    "decompose_layer",
    "factorized_param_count",
    "recompose_",
    "resolve_ranks",
    "restore_structure",
]
