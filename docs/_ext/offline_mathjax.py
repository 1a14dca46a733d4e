"""MathJax shipped with the pages, not loaded from a CDN: the formulas render offline.

The MathJax 3 files come from the `sphinx-mathjax-offline` package (in the `docs` extra).
That package's own Sphinx extension declares no parallel safety (a warning, so an error
under `-W -j auto`) and copies all its 24 MiB; this one copies what the TeX-to-HTML
component that `mathjax_path` names (`_static/mathjax/tex-chtml.js`, set in conf.py)
loads: the component, the TeX extensions it autoloads, the fonts of its HTML output, its
menu, the accessibility extensions and the speech rule engine's maps (loaded when a
reader turns speech on in the menu), about 7 MiB.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil

from sphinx.errors import ExtensionError

PACKAGE = "sphinx-mathjax-offline"
COMPONENT = "tex-chtml.js"
PARTS = (COMPONENT, "input/tex/extensions", "output/chtml", "a11y", "sre", "ui")


def mathjax_source() -> pathlib.Path:
    """The folder of the MathJax files in the installed `sphinx-mathjax-offline`."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError(f"{PACKAGE} is not installed: pip install -e '.[docs]'")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    target = pathlib.Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)


def check_path(app, config) -> None:
    if config.mathjax_path != f"mathjax/{COMPONENT}":
        raise ExtensionError(f"offline_mathjax: set mathjax_path = 'mathjax/{COMPONENT}' "
                             f"(got {config.mathjax_path!r})")
    mathjax_source()  # fails now, not after the build, when the package is missing


def setup(app):
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", check_path)
    # Before local_links (priority 900) reads the pages back.
    app.connect("build-finished", copy_mathjax, priority=400)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
