"""TetraOptTuner: Lightning Trainer runs as black-box evaluations of a TetraOpt-driven, resumable study.

Public API: :class:`TetraOptTuner` (``fit`` -> :class:`TuneResult`), :class:`TetraOptSampler` (TetraOpt as an
``optuna.samplers.BaseSampler``) and :class:`TrialPruningCallback` (median early stopping of hopeless trials);
``tetra_lightning.tuner.ray.TetraOptSearch`` (TetraOpt as a Ray Tune searcher) with the ``ray`` extra.

Modules, imports pointing down the list (none inside functions, no cycle: ``tests/test_tuner_layout.py``):

- ``tuner``: :class:`TetraOptTuner`, arguments, the study's checks, the choice of executor;
- ``local``, ``processes``, ``_ray_backend``: the executors (this process, ``n_jobs`` worker processes, Ray), behind
  ``executor.Executor``; they get a ``context.StudyContext``, never the tuner;
- ``executor``: the interface and what every executor does with a trial's outcome;
- ``context``: ``StudyContext`` and ``open_study``;
- ``ray``: ``TetraOptSearch``; ``sampler``: ``TetraOptSampler``; ``observation``: a finished trial as TetraOpt
  evidence; ``space``: TetraOpt dimensions <-> Optuna distributions;
- ``result`` (``TuneResult``), ``worker`` (claiming a budget slot, heartbeats), ``storage`` (storages, stale
  trials), ``trial`` (one ``Trainer.fit``), ``pruning``;
- ``_optuna``: the only module that touches Optuna's private API.
"""

from __future__ import annotations

from tetra_lightning.tuner.pruning import TrialPruningCallback
from tetra_lightning.tuner.result import TuneResult
from tetra_lightning.tuner.sampler import TetraOptSampler
from tetra_lightning.tuner.trial import TrialOutcome, run_trial
from tetra_lightning.tuner.tuner import TetraOptTuner

__all__ = ["TetraOptSampler", "TetraOptTuner", "TrialOutcome", "TrialPruningCallback", "TuneResult", "run_trial"]
