"""Optuna's own conformance suites for third-party samplers, run on TetraOptSampler.

``optuna.testing.pytest_samplers`` is what Optuna runs on its built-in samplers; subclassing it here makes every
Optuna upgrade re-check that TetraOptSampler still behaves as an Optuna sampler must (values inside their
distributions and of the right Python type, NaN objectives, conditional and dynamic spaces, fixed params,
single-objective only).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)

from tetra_lightning.tuner import TetraOptSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestTetraOptSampler(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], TetraOptSampler]:
        return lambda: TetraOptSampler(seed=0)
