"""The public API: every name in ``tetra_lightning.__all__`` resolves, lazily, to the real object."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tetra_lightning


@pytest.mark.parametrize("name", [n for n in tetra_lightning.__all__ if n != "__version__"])
def test_public_name_resolves(name: str) -> None:
    assert getattr(tetra_lightning, name) is not None
    assert name in dir(tetra_lightning)


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        tetra_lightning.nope  # noqa: B018


def test_version_is_single_sourced() -> None:
    from tetra_lightning.__about__ import __version__

    assert tetra_lightning.__version__ == __version__
    assert __version__.count(".") >= 2


def test_optim_import_does_not_pull_in_lightning() -> None:
    code = "import sys, tetra_lightning.optim; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# A machine with only torch, Lightning, numpy and scipy (plus tensorly and torch-pruning, which the structural
# callbacks need) must be able to import the callbacks: the GPU machine the benchmarks run on has no Optuna, W&B,
# torchao or Ray.
_BLOCK_OPTIONAL = """
import importlib.abc, importlib.machinery, sys

class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"optuna", "wandb", "torchao", "ray"}:
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

sys.meta_path.insert(0, _Block())
import tetra_lightning.callbacks, tetra_lightning.data, tetra_lightning.models
from tetra_lightning.callbacks import DistillationCallback, LRRewarmCallback, PruningCallback
print(sorted({m.split(".")[0] for m in sys.modules} & {"optuna", "wandb", "torchao", "ray"}))
"""


def test_callbacks_import_without_optuna_wandb_torchao_or_ray() -> None:
    out = subprocess.run([sys.executable, "-c", _BLOCK_OPTIONAL], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
