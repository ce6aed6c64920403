"""tetra-lightning: tensor-network AutoML for PyTorch Lightning.

Public names are imported lazily (PEP 562), so ``import tetra_lightning.optim`` stays a pure numpy import and
``import tetra_lightning`` does not pull in Lightning until a callback is used.

Example:
    >>> import torch
    >>> from tetra_lightning import SVDConfig, compress_
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    >>> history = compress_(model, SVDConfig(rank=8))
    >>> [(entry["name"], entry["ranks"]) for entry in history]
    [('0', [8]), ('2', [8])]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tetra_lightning.__about__ import __version__

_EXPORTS: dict[str, str] = {
    # functional compression core
    "DecompositionConfig": "tetra_lightning.decompose",
    "SVDConfig": "tetra_lightning.decompose",
    "CPConfig": "tetra_lightning.decompose",
    "TuckerConfig": "tetra_lightning.decompose",
    "TTConfig": "tetra_lightning.decompose",
    "config_from_dict": "tetra_lightning.decompose",
    "compress_": "tetra_lightning.decompose",
    "restore_structure": "tetra_lightning.decompose",
    "recompose_": "tetra_lightning.decompose",
    "decompose_layer": "tetra_lightning.decompose",
    "resolve_ranks": "tetra_lightning.decompose",
    "factorized_param_count": "tetra_lightning.decompose",
    "FactorizedLayer": "tetra_lightning.decompose",
    "SVDLinear": "tetra_lightning.decompose",
    "SVDConv2d": "tetra_lightning.decompose",
    "TuckerConv2d": "tetra_lightning.decompose",
    "CPConv2d": "tetra_lightning.decompose",
    "TTLinear": "tetra_lightning.decompose",
    "TTConv2d": "tetra_lightning.decompose",
    "allocate_ranks": "tetra_lightning.decompose.allocation",
    # measuring
    "ModelReport": "tetra_lightning.report",
    "model_report": "tetra_lightning.report",
    "compare": "tetra_lightning.report",
    "count_parameters": "tetra_lightning.report",
    "count_bytes": "tetra_lightning.report",
    "count_macs": "tetra_lightning.report",
    "measure_latency": "tetra_lightning.report",
    "tied_parameters": "tetra_lightning.report",
    # data
    "CIFAR10DataModule": "tetra_lightning.data",
    "DigitsDataModule": "tetra_lightning.data",
    "HeldOutDigitsDataModule": "tetra_lightning.data",
    "load_cifar10": "tetra_lightning.data",
    # black-box tensor-train optimizer
    "TetraOpt": "tetra_lightning.optim",
    "maximize": "tetra_lightning.optim",
    "minimize": "tetra_lightning.optim",
    "OptimizeResult": "tetra_lightning.optim",
    "SearchSpace": "tetra_lightning.optim",
    "Categorical": "tetra_lightning.optim",
    "Int": "tetra_lightning.optim",
    "Float": "tetra_lightning.optim",
    "NASBench201Objective": "tetra_lightning.nas",
    "NATSBenchObjective": "tetra_lightning.nas",
    "NATSTopologySpace": "tetra_lightning.nas",
    "NATSSizeSpace": "tetra_lightning.nas",
    "build_nats_network": "tetra_lightning.nas",
    "NATSLightningModule": "tetra_lightning.nas",
    # tuner
    "TetraOptTuner": "tetra_lightning.tuner",
    "TuneResult": "tetra_lightning.tuner",
    "TetraOptSampler": "tetra_lightning.tuner",
    "TrialPruningCallback": "tetra_lightning.tuner",
    "TetraOptSearch": "tetra_lightning.tuner.ray",  # needs the [ray] extra
    # reference models
    "cifar_resnet18": "tetra_lightning.models",
    "DigitsCNN": "tetra_lightning.models",
    "CIFARResNet18": "tetra_lightning.models",
    # callbacks and checkpoints
    "TensorCompressionCallback": "tetra_lightning.callbacks",
    "PruningCallback": "tetra_lightning.callbacks",
    "QuantizationCallback": "tetra_lightning.callbacks",
    "LowRankCallback": "tetra_lightning.callbacks",
    "DistillationCallback": "tetra_lightning.callbacks",
    "LRRewarmCallback": "tetra_lightning.callbacks",
    # pruning and quantization cores
    "prune_": "tetra_lightning.prune",
    "PruneConfig": "tetra_lightning.prune",
    "restore_pruned_structure": "tetra_lightning.prune",
    "quantize_": "tetra_lightning.quantize",
    "quantize_int8": "tetra_lightning.quantize",
    "export_model": "tetra_lightning.quantize",
    # tensorized layers trained from scratch and rank-shrinking priors
    "TTEmbedding": "tetra_lightning.lowrank",
    "TTGRUCell": "tetra_lightning.lowrank",
    "TTLSTMCell": "tetra_lightning.lowrank",
    "tt_linear": "tetra_lightning.lowrank",
    "tt_conv2d": "tetra_lightning.lowrank",
    "tt_embedding_from": "tetra_lightning.lowrank",
    "GammaGaussianPrior": "tetra_lightning.lowrank",
    "SVDTrainingRegularizer": "tetra_lightning.lowrank",
    "lowrank_penalty": "tetra_lightning.lowrank",
    "shrink_": "tetra_lightning.lowrank",
    "CompressibleMixin": "tetra_lightning.checkpoint",
    "restore_from_checkpoint": "tetra_lightning.checkpoint",
    "check_checkpoint_fits": "tetra_lightning.checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tetra_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - static analysers see the real imports
    from tetra_lightning.callbacks import (
        DistillationCallback,
        LowRankCallback,
        LRRewarmCallback,
        PruningCallback,
        QuantizationCallback,
        TensorCompressionCallback,
    )
    from tetra_lightning.checkpoint import CompressibleMixin, check_checkpoint_fits, restore_from_checkpoint
    from tetra_lightning.data import (
        CIFAR10DataModule,
        DigitsDataModule,
        HeldOutDigitsDataModule,
        load_cifar10,
    )
    from tetra_lightning.decompose import (
        CPConfig,
        CPConv2d,
        DecompositionConfig,
        FactorizedLayer,
        SVDConfig,
        SVDConv2d,
        SVDLinear,
        TTConfig,
        TTConv2d,
        TTLinear,
        TuckerConfig,
        TuckerConv2d,
        compress_,
        config_from_dict,
        decompose_layer,
        factorized_param_count,
        recompose_,
        resolve_ranks,
        restore_structure,
    )
    from tetra_lightning.decompose.allocation import allocate_ranks
    from tetra_lightning.lowrank import (
        GammaGaussianPrior,
        SVDTrainingRegularizer,
        TTEmbedding,
        TTGRUCell,
        TTLSTMCell,
        lowrank_penalty,
        shrink_,
        tt_conv2d,
        tt_embedding_from,
        tt_linear,
    )
    from tetra_lightning.models import CIFARResNet18, DigitsCNN, cifar_resnet18
    from tetra_lightning.nas import (
        NASBench201Objective,
        NATSBenchObjective,
        NATSLightningModule,
        NATSSizeSpace,
        NATSTopologySpace,
        build_nats_network,
    )
    from tetra_lightning.optim import (
        Categorical,
        Float,
        Int,
        OptimizeResult,
        SearchSpace,
        TetraOpt,
        maximize,
        minimize,
    )
    from tetra_lightning.prune import PruneConfig, prune_, restore_pruned_structure
    from tetra_lightning.quantize import export_model, quantize_, quantize_int8
    from tetra_lightning.report import (
        ModelReport,
        compare,
        count_bytes,
        count_macs,
        count_parameters,
        measure_latency,
        model_report,
        tied_parameters,
    )
    from tetra_lightning.tuner import TetraOptSampler, TetraOptTuner, TrialPruningCallback, TuneResult
    from tetra_lightning.tuner.ray import TetraOptSearch
