"""The one adapter to Optuna's private API: every access to an Optuna internal the tuner needs goes through here.

Optuna's public API has no call for a few things a sampler and a multi-worker tuner must do: reach a study's
storage and ids (to create, stamp, fail or beat for trials outside ``Study.optimize``), write a system attribute
of a trial from a sampler, read the params an enqueued trial will take, suggest a param on a trial claimed outside
``Study.optimize``, find the trials whose heartbeat stopped. Optuna's own samplers and tests use the same private
names. :data:`PRIVATE_API` lists them; ``tests/test_optuna_private_api.py`` checks that the installed Optuna still
has every one (pyproject.toml pins the major version they were written for), and
``tests/test_tuner_layout.py`` that no other module of the package touches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

# The system attribute under which Optuna keeps the params of an enqueued trial (``Study.enqueue_trial``).
FIXED_PARAMS_KEY = "fixed_params"

# The private attributes of Optuna objects the tuner relies on, by the kind of object that has them (a study's
# storage is a cache in front of the RDBStorage).
PRIVATE_API: dict[str, tuple[str, ...]] = {
    "Study": ("_storage", "_study_id"),
    "Trial": ("_trial_id", "_suggest", "_fixed_params"),
    "FrozenTrial": ("_trial_id",),
    "CachedStorage": ("_backend", "_get_stale_trial_ids"),
    "RDBStorage": ("_get_stale_trial_ids",),
}


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (for an RDB URL, Optuna's cache in front of the ``RDBStorage``).

    Example:
        >>> isinstance(storage_of(optuna.create_study()), BaseStorage)
        True
    """
    return study._storage


def backend_of(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache (the ``RDBStorage`` of a study's storage), or ``storage`` itself.

    Example:
        >>> from optuna.storages import RDBStorage
        >>> study = optuna.create_study(storage="sqlite:///:memory:")
        >>> isinstance(backend_of(storage_of(study)), RDBStorage)
        True
    """
    return getattr(storage, "_backend", storage)


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage.

    Example:
        >>> study = optuna.create_study()
        >>> storage_of(study).get_study_name_from_id(study_id_of(study)) == study.study_name
        True
    """
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (``trial.number`` counts within the study, the id within the storage).

    Example:
        >>> study = optuna.create_study()
        >>> trial = study.ask()
        >>> storage_of(study).get_trial(trial_id_of(trial)).number == trial.number
        True
    """
    return trial._trial_id


def live_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The ``optuna.Trial`` of a RUNNING trial created outside ``Study.ask`` (e.g. by a Ray executor), to tell it.

    Example:
        >>> study = optuna.create_study()
        >>> trial_id = storage_of(study).create_new_trial(study_id_of(study))
        >>> _ = study.tell(live_trial(study, trial_id), 1.0)
        >>> study.best_value
        1.0
    """
    return optuna.trial.Trial(study, trial_id)


def new_trial(study: optuna.Study, template: FrozenTrial) -> int:
    """Creates a trial in the study's storage from ``template`` (its state, params, distributions); returns its id.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> from optuna.trial import TrialState, create_trial
        >>> study = optuna.create_study()
        >>> template = create_trial(state=TrialState.RUNNING, params={"x": 3},
        ...                         distributions={"x": IntDistribution(0, 9)})
        >>> storage_of(study).get_trial(new_trial(study, template)).params
        {'x': 3}
    """
    return storage_of(study).create_new_trial(study_id_of(study), template_trial=template)


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Writes a system attribute of a RUNNING trial (a sampler only gets its ``FrozenTrial``).

    Example:
        >>> study = optuna.create_study()
        >>> _ = study.ask()
        >>> set_trial_system_attr(study, study.trials[0], "tetra:note", [1, 2])
        >>> study.trials[0].system_attrs["tetra:note"]
        [1, 2]
    """
    storage_of(study).set_trial_system_attr(trial_id_of(trial), key, value)


def fixed_params(trial: optuna.Trial | FrozenTrial) -> Mapping[str, Any]:
    """The params an enqueued trial was given (``Study.enqueue_trial``), ``{}`` for others.

    Example:
        >>> study = optuna.create_study()
        >>> study.enqueue_trial({"x": 3})
        >>> fixed_params(study.trials[0]), fixed_params(study.ask())
        ({'x': 3}, {'x': 3})
    """
    if isinstance(trial, FrozenTrial):
        return trial.system_attrs.get(FIXED_PARAMS_KEY) or {}
    return trial._fixed_params


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Suggests ``name`` from ``distribution`` on a claimed trial, as ``Study.ask(fixed_distributions=...)`` does.

    The relative sampler's proposal, an enqueued value, or an independent sample, like ``trial.suggest_*``.

    Example:
        >>> from optuna.distributions import IntDistribution
        >>> study = optuna.create_study()
        >>> study.enqueue_trial({"x": 3})
        >>> suggest(study.ask(), "x", IntDistribution(0, 9))
        3
    """
    return trial._suggest(name, distribution)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the storage's grace period.

    Example:
        >>> from tetra_lightning.tuner.storage import make_storage
        >>> stale_trial_ids(optuna.create_study(storage=make_storage("sqlite:///:memory:")))
        []
    """
    return list(storage_of(study)._get_stale_trial_ids(study_id_of(study)))  # type: ignore[attr-defined]
