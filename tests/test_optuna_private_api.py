"""The private parts of Optuna the tuner relies on still exist in the installed Optuna.

``tetra_lightning.tuner._optuna.PRIVATE_API`` lists them; pyproject.toml pins Optuna's major version. When an
Optuna upgrade removes one, this test names it, instead of a tuner run failing halfway.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import RDBStorage

from tetra_lightning.tuner._optuna import FIXED_PARAMS_KEY, PRIVATE_API, fixed_params
from tetra_lightning.tuner.storage import make_storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_every_private_attribute_the_tuner_uses_exists() -> None:
    study = optuna.create_study(storage=make_storage("sqlite:///:memory:"))
    trial = study.ask()
    owners = {
        "Study": study,
        "Trial": trial,
        "FrozenTrial": study.trials[0],
        "CachedStorage": study._storage,
        "RDBStorage": study._storage._backend,
    }
    assert set(owners) == set(PRIVATE_API)
    assert isinstance(owners["RDBStorage"], RDBStorage)
    missing = [f"{kind}.{name}" for kind, names in PRIVATE_API.items() for name in names
               if not hasattr(owners[kind], name)]
    assert missing == [], f"optuna {optuna.__version__} lacks {missing}"


def test_an_enqueued_trial_keeps_its_params_under_the_known_system_attribute() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 3, "act": "relu"})
    waiting = study.trials[0]
    assert FIXED_PARAMS_KEY in waiting.system_attrs
    assert fixed_params(waiting) == {"x": 3, "act": "relu"}
    assert study.ask()._fixed_params == {"x": 3, "act": "relu"}
