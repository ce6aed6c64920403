"""Factorized layers (SVD, Tucker-2, CP, TT), split attention and recurrent modules, and the compression core.

No Lightning import here: callbacks wrap :func:`compress_`, :func:`restore_structure` and :func:`recompose_`.
"""

from __future__ import annotations

from tetra_lightning.decompose.attention import FactorizedMultiheadAttention, split_attention
from tetra_lightning.decompose.base import FactorizedLayer
from tetra_lightning.decompose.configs import (
    CPConfig,
    DecompositionConfig,
    SVDConfig,
    TTConfig,
    TuckerConfig,
    config_from_dict,
)
from tetra_lightning.decompose.conv1d import FactorizedConv1d
from tetra_lightning.decompose.core import compress_, decompose_layer, recompose_, restore_structure
from tetra_lightning.decompose.cp import CPConv2d
from tetra_lightning.decompose.embedding import TTEmbedding
from tetra_lightning.decompose.ranks import factorized_param_count, resolve_ranks
from tetra_lightning.decompose.recurrent import FactorizedRNN, RecurrentCell, split_recurrent
from tetra_lightning.decompose.svd import CPLinear, SVDConv2d, SVDLinear
from tetra_lightning.decompose.tt import TTConv2d, TTLinear
from tetra_lightning.decompose.tucker import TuckerConv2d, TuckerLinear
from tetra_lightning.decompose.unfuse import unfuse_
from tetra_lightning.decompose.weight_reads import direct_weight_reads

__all__ = [
    "CPConfig",
    "CPConv2d",
    "CPLinear",
    "DecompositionConfig",
    "FactorizedConv1d",
    "FactorizedLayer",
    "FactorizedMultiheadAttention",
    "FactorizedRNN",
    "RecurrentCell",
    "SVDConfig",
    "SVDConv2d",
    "SVDLinear",
    "TTConfig",
    "TTConv2d",
    "TTEmbedding",
    "TTLinear",
    "TuckerConfig",
    "TuckerConv2d",
    "TuckerLinear",
    "compress_",
    "config_from_dict",
    "decompose_layer",
    "direct_weight_reads",
    "factorized_param_count",
    "recompose_",
    "resolve_ranks",
    "restore_structure",
    "split_attention",
    "split_recurrent",
    "unfuse_",
]
