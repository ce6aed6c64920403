"""TetraOptTuner: Lightning Trainer runs as black-box evaluations of a TetraOpt-driven, resumable study.

Public API: :class:`TetraOptTuner` (``fit`` -> :class:`TuneResult`), :class:`TetraOptSampler` (TetraOpt as an
``optuna.samplers.BaseSampler``) and :class:`TrialPruningCallback` (median early stopping of hopeless trials).
"""

from __future__ import annotations

from tetra_lightning.tuner.pruning import TrialPruningCallback
from tetra_lightning.tuner.result import TuneResult
from tetra_lightning.tuner.sampler import TetraOptSampler
from tetra_lightning.tuner.trial import TrialOutcome, run_trial
from tetra_lightning.tuner.tuner import TetraOptTuner

__all__ = ["TetraOptSampler", "TetraOptTuner", "TrialOutcome", "TrialPruningCallback", "TuneResult", "run_trial"]
