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
