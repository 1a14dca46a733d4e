"""Sphinx configuration of the jaxtricks documentation.

Build: `python -m sphinx -W --keep-going -b html docs docs/_build/html` (warnings are
errors). Pages are MyST markdown; the worked examples in `examples/` and the
getting-started page are MyST notebooks executed at every build on the CPU. Nothing here
needs a network, to build or to read: no intersphinx, no remote images, MathJax copied
into `_static/mathjax` (docs/_ext/offline_mathjax.py), and docs/_ext/local_links.py fails
the build on a dead local link or a page that loads a remote file.
"""

import os
import pathlib
import re
import sys

# Executed cells (the Jupyter kernel inherits this environment) and autodoc's imports
# run on the CPU, compile cheaply and print no accelerator warnings.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the source tree, when jaxtricks is not installed

import jaxtricks  # noqa: E402

project = "jaxtricks"
author = "the jaxtricks authors"
copyright = "the jaxtricks authors"
release = jaxtricks.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "api_coverage",  # docs/_ext/api_coverage.py: every public name is in the reference
    "offline_mathjax",  # docs/_ext/offline_mathjax.py: MathJax from the docs extra, no CDN
    "local_links",  # docs/_ext/local_links.py: no dead local link, no remote asset
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**/.ipynb_checkpoints", "README.md"]
templates_path: list[str] = []

# Docstrings: Google style; a single-backquoted `x` is code, as in the source.
default_role = "code"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
# Signatures name the aliases as the source writes them, not their expanded unions.
autodoc_type_aliases = {
    name: name for name in ("jax.typing.ArrayLike", "optax.ScalarOrSchedule",
                            "optax.Params", "optax.Updates", "Mask", "Axis", "_common.Axis")
}
add_module_names = False
python_maximum_signature_line_length = 88
python_display_short_literal_types = True

# MyST: $...$ and $$...$$ math, amsmath environments, ::: fences, heading anchors.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "smartquotes"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
# MathJax 3 from the sphinx-mathjax-offline package, copied into _static/mathjax.
mathjax_path = "mathjax/tex-chtml.js"

# Notebooks: executed at every build; an exception in a cell fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 120
nb_execution_allow_errors = False
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}

html_theme = "sphinx_book_theme"
html_title = f"jaxtricks {release}"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": True,
}
html_last_updated_fmt = None
# The pages' sources are copied into _sources/: the download button's ".md" entry links
# there (sphinx-book-theme sets html_sourcelink_suffix to "", so the file keeps its name).
html_copy_source = True


def _alias_names(app, what, name, obj, options, signature, return_annotation):
    """Shows an alias inside a union as written (Sphinx prints `TypeAliasForwardRef('X')`)."""
    def clean(text):
        return None if text is None else re.sub(r"TypeAliasForwardRef\('([^']+)'\)", r"\1", text)

    return clean(signature), clean(return_annotation)


def _viewcode_module(app, modname, fullname):
    """The module whose source viewcode shows for `fullname`, where Python's is not one.

    A NamedTuple's generated `__new__` says it comes from a module `namedtuple_<Class>`
    that does not exist: viewcode listed it in `_modules/index.html` with a link to no
    page. Its class's module is used instead. `None` keeps viewcode's own answer.
    """
    module = sys.modules.get(modname)
    owner = modname
    obj = module
    for part in fullname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
        name = getattr(obj, "__module__", None)
        if isinstance(name, str) and name not in sys.modules:
            return owner
        if isinstance(name, str):
            owner = name
    return None


def setup(app):
    app.connect("autodoc-process-signature", _alias_names)
    app.connect("viewcode-follow-imported", _viewcode_module)
