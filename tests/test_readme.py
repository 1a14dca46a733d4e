"""The Python code blocks of the README and of the docs pages run as written.

Every ```python block of README.md, docs/techniques/*.md and docs/benchmarks.md is run
in a fresh namespace. A block that must not run is written as ```{code-block} python.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "techniques").glob("*.md")),
         ROOT / "docs" / "benchmarks.md"]
TECHNIQUES = ("losses", "long_tail", "regularizers", "estimators", "teaforn", "validation",
              "rnn")


def snippets(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE)


SNIPPETS = [(path.relative_to(ROOT).as_posix(), index, code)
            for path in PAGES for index, code in enumerate(snippets(path))]


def test_the_readme_has_a_tour():
    assert len(snippets(ROOT / "README.md")) >= 1


@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_page_has_snippets_for_optax_and_flax(name):
    code = snippets(ROOT / "docs" / "techniques" / f"{name}.md")
    assert len(code) >= 2
    assert any("flax" in block for block in code)


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS,
                         ids=[f"{page}:{index}" for page, index, _ in SNIPPETS])
def test_snippet_runs(page, index, code):
    exec(compile(code, f"{page} snippet {index}", "exec"), {})
