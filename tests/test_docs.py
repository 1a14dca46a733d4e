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
    automatic = set(re.findall(r"^\.\. auto\w+:: (\S+)", text, re.MULTILINE))
    # A name documented by hand: `.. py:data:: NAME` with its `:module:` option.
    by_hand = re.findall(r"^\.\. py:\w+:: (\S+)\n\s+:module: (\S+)", text, re.MULTILINE)
    return automatic | {f"{module}.{name}" for name, module in by_hand}


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


# ---- a References section in every public callable's docstring -----------------------


def _public_callables():
    """`{qualified name: object}` of every public function and class of jaxtricks."""
    import inspect

    import jaxtricks

    found = {}
    modules = [jaxtricks, *(value for value in vars(jaxtricks).values()
                            if inspect.ismodule(value) and value.__name__.startswith("jaxtricks.")
                            and value.__name__.split(".")[1] in jaxtricks.__all__)]
    for module in modules:
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not inspect.ismodule(value):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_public_callable_has_a_references_section():
    """CONTRIBUTING: every docstring gives its sources (post URL, arXiv id, paper, or the
    library whose convention a utility follows) under `References:`."""
    import inspect

    callables = _public_callables()
    assert len(callables) >= 60
    missing = sorted(name for name, value in callables.items()
                     if "\nReferences:\n" not in "\n" + (inspect.getdoc(value) or "") + "\n")
    assert missing == []


# ---- optax's docstring shape: short, with a doctested example ------------------------

MAX_DOCSTRING_LINES = 50


def _is_namedtuple(value):
    return isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")


@pytest.mark.parametrize("name", sorted(_public_callables()))
def test_every_public_docstring_is_at_most_50_lines(name):
    """A docstring holds the summary, formula, Args, Returns, Raises, an example and
    References; strategies, tables and derivations belong on the technique page."""
    import inspect

    lines = len((inspect.getdoc(_public_callables()[name]) or "").splitlines())
    assert lines <= MAX_DOCSTRING_LINES, (
        f"{name}'s docstring has {lines} lines (at most {MAX_DOCSTRING_LINES}): move the "
        "discussion to docs/techniques/ and link it")


def test_every_public_callable_has_a_doctest_example():
    """Every public function and class shows a `>>>` example with its printed output (run
    by `--doctest-modules`); NamedTuple states and results are shown by the examples of
    the functions that return them, as optax's states are."""
    import inspect

    callables = _public_callables()
    missing = sorted(name for name, value in callables.items()
                     if not _is_namedtuple(value) and ">>> " not in (inspect.getdoc(value) or ""))
    assert len(callables) >= 60
    assert missing == []


# ---- dead local links (docs/_ext/local_links.py) -------------------------------------

local_links = pytest.importorskip("local_links")


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_link_check_finds_dead_links_missing_anchors_and_remote_assets(tmp_path):
    _write(tmp_path, {
        "index.html": '<a id="top"></a><a href="api/losses.html#f">f</a>'
                      '<a href="#top">top</a><a href="https://arxiv.org/abs/1">paper</a>'
                      '<script src="_static/mathjax/tex-chtml.js"></script>'
                      '<img src="_static/figure.png"><a href="mailto:a@b.c">mail</a>',
        "api/losses.html": '<dt id="f">f</dt><a href="../_sources/api/losses.md">.md</a>'
                           '<a href="../index.html?v=1#top">home</a>',
        "_sources/api/losses.md": "# losses",
        "_static/mathjax/tex-chtml.js": "",
        "_static/figure.png": "",
        # A theme's template fragment in _static is not a page.
        "_static/webpack-macros.html": "<a href=\"{{ pathto('x', 1) }}\">x</a>",
    })
    assert local_links.dead_links(tmp_path) == []
    _write(tmp_path, {
        "broken.html": '<a href="api/missing.html">gone</a><a href="api/losses.html#g">g</a>'
                       '<a href="#nowhere">here</a><a href="_sources/">.md</a>'
                       '<script src="https://cdn.jsdelivr.net/npm/mathjax@4/tex.js"></script>'
                       '<a href="../../outside.html">up</a>',
    })
    assert local_links.dead_links(tmp_path) == [
        ("broken.html", "api/missing.html", "no such file"),
        ("broken.html", "api/losses.html#g", "no such anchor in the target page"),
        ("broken.html", "#nowhere", "no such anchor in the page"),
        ("broken.html", "_sources/", "a folder, not a file"),
        ("broken.html", "https://cdn.jsdelivr.net/npm/mathjax@4/tex.js",
         "<script src> loads a remote file"),
        ("broken.html", "../../outside.html", "points outside the built site"),
    ]


def _sphinx_build(tmp_path, page):
    from sphinx.cmd.build import build_main

    source = tmp_path / "source"
    _write(source, {
        "conf.py": f"import sys\nsys.path.insert(0, {str(ROOT / 'docs' / '_ext')!r})\n"
                   "extensions = ['local_links']\nhtml_theme = 'basic'\n",
        "index.rst": page,
    })
    return build_main(["-W", "-q", "-b", "html", str(source), str(tmp_path / "html")])


def test_a_dead_local_link_fails_the_docs_build(tmp_path, capsys):
    status = _sphinx_build(tmp_path, "Title\n=====\n\nA `dead link <missing.html>`_.\n")
    assert status != 0
    assert "dead local link in index.html: missing.html (no such file)" in capsys.readouterr().err


def test_the_docs_build_runs_the_link_check_and_ships_mathjax():
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert '"local_links"' in conf and '"offline_mathjax"' in conf
    assert 'mathjax_path = "mathjax/tex-chtml.js"' in conf
    offline_mathjax = pytest.importorskip("offline_mathjax")
    try:
        source = offline_mathjax.mathjax_source()
    except Exception:
        pytest.skip("sphinx-mathjax-offline (the docs extra) is not installed")
    for part in offline_mathjax.PARTS:
        assert (source / part).exists(), part
