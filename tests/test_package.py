"""The public API: every exported name exists, is documented, and is listed once."""

import importlib
import inspect
import os
import pathlib
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import jaxtricks

SUBPACKAGES = ("estimators", "losses", "regularizers", "rnn", "teaforn", "validation")


@pytest.mark.parametrize("name", ("jaxtricks", *(f"jaxtricks.{s}" for s in SUBPACKAGES)))
def test_every_exported_name_exists_and_has_a_docstring(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__), "duplicates in __all__"
    for exported in module.__all__:
        obj = getattr(module, exported)
        assert obj.__doc__ and obj.__doc__.strip(), f"{name}.{exported} has no docstring"


@pytest.mark.parametrize("name", ("jaxtricks", *(f"jaxtricks.{s}" for s in SUBPACKAGES)))
def test_every_public_function_has_a_doctest_example(name):
    # The examples run as doctests (pytest --doctest-modules over jaxtricks/).
    module = importlib.import_module(name)
    for exported in module.__all__:
        obj = getattr(module, exported)
        if inspect.isfunction(obj):
            _, _, examples = obj.__doc__.partition("Examples:")
            assert ">>>" in examples, f"{name}.{exported} has no `Examples:` with `>>>` lines"


def test_top_level_reexports_the_regularizers():
    for exported in jaxtricks.regularizers.__all__:
        assert getattr(jaxtricks, exported) is getattr(jaxtricks.regularizers, exported)
        assert exported in jaxtricks.__all__


ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOOR_CONSTRAINTS = ROOT / ".ci" / "constraints-floor.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared_floor() -> dict[str, str]:
    """`{name: version}` from pyproject's runtime `name>=version` requirements."""
    floor = {}
    for requirement in map(Requirement, PYPROJECT["project"]["dependencies"]):
        (specifier,) = requirement.specifier
        assert specifier.operator == ">=", f"{requirement} must declare a floor with >="
        floor[requirement.name] = specifier.version
    return floor


def _pinned(path: pathlib.Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def test_the_floor_constraints_pin_the_declared_minimum_versions():
    pinned = {name: Version(v) for name, v in _pinned(FLOOR_CONSTRAINTS).items()}
    assert pinned == {name: Version(v) for name, v in _declared_floor().items()}


@pytest.mark.skipif(
    "JAXTRICKS_FLOOR_CONSTRAINTS" not in os.environ, reason="only in the floor run"
)
def test_the_floor_run_uses_the_pinned_versions():
    pins = _pinned(ROOT / os.environ["JAXTRICKS_FLOOR_CONSTRAINTS"])
    assert {name: metadata.version(name) for name in pins} == pins


def test_the_version_is_written_once_and_the_changelog_names_it():
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "jaxtricks.__version__"
    }
    assert metadata.version("jaxtricks") == jaxtricks.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{jaxtricks.__version__}] - " in changelog


def test_the_license_file_is_the_declared_apache_license():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
