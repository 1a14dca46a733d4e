"""The documentation's API reference: every public name is in it, and the build check
(docs/_ext/api_coverage.py) fails on a missing one."""

import pathlib
import re
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
api_coverage = pytest.importorskip("api_coverage")  # needs sphinx (the docs extra)


def _documented_in_the_api_pages():
    text = "\n".join(path.read_text() for path in (ROOT / "docs" / "api").glob("*.md"))
    return set(re.findall(r"^\.\. auto\w+:: (\S+)", text, re.MULTILINE))


def _warnings(monkeypatch, documented):
    warned = []
    monkeypatch.setattr(api_coverage.logger, "warning",
                        lambda message, name, **kwargs: warned.append(name))
    domain = types.SimpleNamespace(objects=dict.fromkeys(documented))
    env = types.SimpleNamespace(get_domain=lambda name: domain)
    app = types.SimpleNamespace(config=types.SimpleNamespace(api_coverage_package="jaxtricks"))
    api_coverage.check_coverage(app, env)
    return warned


def test_every_public_name_has_an_autodoc_entry_in_docs_api():
    names = api_coverage.public_names()
    assert len(names) >= 60
    documented = _documented_in_the_api_pages()
    missing = [name for name, accepted in names.items() if not documented & set(accepted)]
    assert not missing


def test_the_build_check_warns_once_for_each_undocumented_public_name(monkeypatch):
    everything = {name for accepted in api_coverage.public_names().values() for name in accepted}
    assert _warnings(monkeypatch, everything) == []
    without = everything - {"jaxtricks.regularizers.weissi", "jaxtricks.weissi"}
    assert sorted(_warnings(monkeypatch, without)) == [
        "jaxtricks.regularizers.weissi", "jaxtricks.weissi"]
    assert _warnings(monkeypatch, everything - {"jaxtricks.losses"}) == ["jaxtricks.losses"]
