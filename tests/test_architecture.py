"""The import contracts of pyproject.toml ([tool.importlinter]): layers point one way and nothing imports in a cycle.

The same check as `lint-imports` (`make lint`); docs/ARCHITECTURE.md explains the layers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    # importing the CLI module configures import-linter; its `lint_imports` command is not called because it
    # reconfigures logging for the whole process (disabling the loggers other tests capture)
    pytest.importorskip("importlinter.cli", reason="the [dev] extra installs import-linter")
    from importlinter.application import use_cases

    monkeypatch.chdir(config.parent)
    monkeypatch.setattr(sys, "path", [str(config.parent), *sys.path])
    return use_cases.lint_imports(config_filename=str(config), cache_dir=None, no_logo=True)


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kept = _lint(ROOT / "pyproject.toml", monkeypatch)
    report = capsys.readouterr().out
    assert kept, report
    assert "4 kept, 0 broken" in report


def test_contracts_catch_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A function-level import that points back up is found too (the checker reads every import statement)."""
    package = tmp_path / "house"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from house import high  # hidden in a function\n")
    (package / "high.py").write_text("from house import low\n")
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "house"\n\n[[tool.importlinter.contracts]]\nname = "acyclic"\n'
        'type = "acyclic_siblings"\nancestors = ["house"]\n'
    )
    assert not _lint(config, monkeypatch)
    assert "No cycles are allowed in house" in capsys.readouterr().out
