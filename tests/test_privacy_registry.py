"""The privacy registry: a new experiment is one module; the runner, report and CLI name none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from simulations.privacy import registry


def test_every_experiment_module_registers_under_its_own_name() -> None:
    """Each module of simulations/privacy/experiments/ defines EXPERIMENT named after the module."""
    # Execute
    found = registry.experiments()
    # Assert
    assert tuple(found) == registry.names() == ("curve", "items", "membership", "segment")
    assert all(exp.name == name for name, exp in found.items())
    assert [e.name for e in registry.run_order(registry.names())] == ["items", "segment", "curve", "membership"]


def _package(root: Path, modules: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = root / "fake_privacy_experiments"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in modules.items():
        (pkg / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(registry, "PACKAGE", "fake_privacy_experiments")
    registry.experiments.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "fake_privacy_experiments"]:
        monkeypatch.delitem(sys.modules, name)


NEW = '''
from simulations.privacy.registry import Experiment
EXPERIMENT = Experiment(name="{name}", setting="a new attack", run=lambda setup, runs: {{"rows": []}},
                        section=lambda result: ["## New"])
'''


def test_a_new_module_is_a_new_experiment_with_no_other_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping one module into the experiments package is all it takes; the CLI parser accepts its name."""
    # Prepare
    _package(tmp_path, {"novel": NEW.format(name="novel")}, monkeypatch)
    from cli.privacy import experiments_of

    try:
        # Execute
        found = registry.experiments()
        # Assert
        assert list(found) == ["novel"] and found["novel"].setting == "a new attack"
        assert experiments_of("all") == ("novel",)
    finally:
        registry.experiments.cache_clear()


@pytest.mark.parametrize(("text", "message"), [("x = 1\n", "defines no EXPERIMENT"),
                                               (NEW.format(name="other"), "registers its experiment as 'other'")])
def test_a_module_without_or_with_a_misnamed_experiment_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    """A module that forgets EXPERIMENT, or registers another name, is refused loudly instead of being skipped."""
    # Prepare
    _package(tmp_path, {"broken": text}, monkeypatch)
    try:
        # Execute / Assert
        with pytest.raises((TypeError, ValueError), match=message):
            registry.experiments()
    finally:
        registry.experiments.cache_clear()
