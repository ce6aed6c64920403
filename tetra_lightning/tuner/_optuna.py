"""The one adapter to Optuna's private API: every access to an Optuna internal the tuner needs goes through here.

Optuna's public API has no call for a few things a sampler and a multi-worker tuner must do (write a system
attribute of a trial from the sampler, read the params an enqueued trial will take, suggest a param on a trial
claimed outside ``Study.optimize``, find the trials whose heartbeat stopped). Optuna's own samplers and tests use
the same private names; :data:`PRIVATE_API` lists them, and ``tests/test_optuna_private_api.py`` checks that the
installed Optuna still has every one (pyproject.toml pins the major version they were written for).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

# The system attribute under which Optuna keeps the params of an enqueued trial (``Study.enqueue_trial``).
FIXED_PARAMS_KEY = "fixed_params"

# The private attributes of Optuna objects the tuner relies on, by the kind of object that has them (a study's
# storage is a cache in front of the RDBStorage); tests/test_optuna_private_api.py asserts each still exists.
PRIVATE_API: dict[str, tuple[str, ...]] = {
    "Study": ("_storage", "_study_id"),
    "Trial": ("_trial_id", "_suggest", "_fixed_params"),
    "FrozenTrial": ("_trial_id",),
    "CachedStorage": ("_backend",),
    "RDBStorage": ("_get_stale_trial_ids",),
    "BaseSampler": ("_raise_error_if_multi_objective",),
}


def set_trial_system_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Writes a system attribute of a RUNNING trial from a sampler (which only gets a ``FrozenTrial``).

    Example:
        >>> study = optuna.create_study()
        >>> _ = study.ask()
        >>> set_trial_system_attr(study, study.trials[0], "tetra:note", [1, 2])
        >>> study.trials[0].system_attrs["tetra:note"]
        [1, 2]
    """
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def fixed_params(trial: FrozenTrial) -> Mapping[str, Any]:
    """The params an enqueued trial was given (``Study.enqueue_trial``), ``{}`` for others.

    Example:
        >>> study = optuna.create_study()
        >>> study.enqueue_trial({"x": 3})
        >>> fixed_params(study.trials[0])
        {'x': 3}
    """
    return trial.system_attrs.get(FIXED_PARAMS_KEY) or {}
