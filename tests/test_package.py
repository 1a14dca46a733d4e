"""The public API: every exported name exists, is documented, and is listed once."""

import importlib

import pytest

import jaxtricks

SUBPACKAGES = ("estimators", "losses", "regularizers", "rnn", "teaforn", "validation")


@pytest.mark.parametrize("name", ("jaxtricks", *(f"jaxtricks.{s}" for s in SUBPACKAGES)))
def test_every_exported_name_exists_and_has_a_docstring(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__), "duplicates in __all__"
    for exported in module.__all__:
        obj = getattr(module, exported)
        assert obj.__doc__ and obj.__doc__.strip(), f"{name}.{exported} has no docstring"


def test_top_level_reexports_the_regularizers():
    for exported in jaxtricks.regularizers.__all__:
        assert getattr(jaxtricks, exported) is getattr(jaxtricks.regularizers, exported)
        assert exported in jaxtricks.__all__
