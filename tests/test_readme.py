"""The Python code blocks of the README and of the docs pages run as written.

Every ```python block of README.md, docs/techniques/*.md and docs/benchmarks.md is run
in a fresh namespace. A block that must not run is written as ```{code-block} python.
"""

import pathlib
import re

import optax
import pytest
from _compat import standard_promotion

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "techniques").glob("*.md")),
         ROOT / "docs" / "benchmarks.md"]
TECHNIQUES = ("losses", "long_tail", "regularizers", "estimators", "teaforn", "validation",
              "rnn")


def snippets(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE)


# The README's tour runs in the fast tier; the technique and benchmark pages' snippets
# (training loops, seconds each) in the slow one.
SNIPPETS = [pytest.param(path.relative_to(ROOT).as_posix(), index, code,
                         id=f"{path.relative_to(ROOT).as_posix()}:{index}",
                         marks=() if path.name == "README.md" else pytest.mark.slow)
            for path in PAGES for index, code in enumerate(snippets(path))]


def test_the_readme_has_a_tour():
    assert len(snippets(ROOT / "README.md")) >= 1


@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_page_has_snippets_for_optax_and_flax(name):
    code = snippets(ROOT / "docs" / "techniques" / f"{name}.md")
    assert len(code) >= 2
    assert any("flax" in block for block in code)


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS)
def test_snippet_runs(page, index, code, monkeypatch):
    # Adam's updates run under standard dtype promotion (see standard_promotion), the rest
    # of the snippet under the suite's strict promotion.
    for name in ("adam", "adamw"):
        monkeypatch.setattr(optax, name, _with_standard_promotion(getattr(optax, name)))
    exec(compile(code, f"{page} snippet {index}", "exec"), {})


def _with_standard_promotion(factory):
    return lambda *args, **kwargs: standard_promotion(factory(*args, **kwargs))


# ---- what `make test` runs: the Makefile, and every page that says it ------------------

# What the Makefile's `test` target runs, and the words a page uses for each part.
MAKE_TEST_PARTS = {
    "ruff": r"\bruff\b",
    "mypy": r"\bmypy\b",
    "fast tier": r"\bfast tier\b",
    "doctests": r"\bdoctests?\b",
    "docs build": r"\b(docs|documentation) build\b",
}
# The test commands every page that lists the commands names.
TEST_TARGETS = ("test", "test-slow", "test-bench", "test-floor", "check-dist")


def _makefile_targets():
    """`{target: (prerequisites, recipe lines)}` of the Makefile's rules."""
    rules, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([\w.$()/-]+):(?!=)\s*([^|#]*)", line)
        if rule:
            current = rule.group(1)
            rules[current] = (rule.group(2).split(), [])
        elif line.startswith("\t") and current:
            rules[current][1].append(line.strip())
        elif line.strip() == "":
            current = None
    return rules


def makefile_test_parts():
    """The parts of `make test`, read from the Makefile (and pytest's options)."""
    rules = _makefile_targets()
    prerequisites, recipe = rules["test"]
    commands = [*recipe, *(line for target in prerequisites for line in rules[target][1])]
    text = "\n".join(commands)
    parts = set()
    if "ruff check" in text:
        parts.add("ruff")
    if "mypy" in text:
        parts.add("mypy")
    if re.search(r'pytest -m "not slow"', text):
        parts.add("fast tier")
        if "--doctest-modules" in (ROOT / "pyproject.toml").read_text():
            parts.add("doctests")
    if "$(MAKE) docs" in text:
        parts.add("docs build")
    return parts


def make_test_statements(path):
    """Each statement of what `make test` runs in a page: the comment of a `make test`
    line in a ```bash block (with its continuation lines), or a sentence of prose
    starting "`make test` runs" or "`make test` creates"."""
    text = path.read_text()
    statements = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        lines = block.splitlines()
        for index, line in enumerate(lines):
            if re.match(r"make test\s+#", line):
                comment = [line.split("#", 1)[1]]
                for rest in lines[index + 1:]:
                    if not re.match(r"\s+#", rest):  # the next command
                        break
                    comment.append(rest.split("#", 1)[1])
                statements.append(" ".join(" ".join(comment).split()))
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for start in re.finditer(r"`make test` (runs|creates)", prose):
        depth, end = 0, start.start()
        for end in range(start.start(), len(prose)):
            char = prose[end]
            depth += (char == "(") - (char == ")")
            if depth == 0 and (prose.startswith(". ", end) or prose.startswith(".\n", end)
                               or prose.startswith("; ", end) or prose.startswith(";\n", end)):
                break
        statements.append(" ".join(prose[start.start():end].split()))
    return statements


STATEMENT_PAGES = ["README.md", "CONTRIBUTING.md", "docs/getting_started.md",
                   "docs/benchmarks.md"]


def test_the_makefile_test_target_is_read_as_lint_types_fast_tier_doctests_and_docs():
    assert makefile_test_parts() == set(MAKE_TEST_PARTS)


@pytest.mark.parametrize("page", STATEMENT_PAGES)
def test_every_statement_of_make_test_says_what_the_makefile_runs(page):
    statements = make_test_statements(ROOT / page)
    assert statements, f"{page} does not say what `make test` runs"
    expected = makefile_test_parts()
    for statement in statements:
        said = {part for part, words in MAKE_TEST_PARTS.items()
                if re.search(words, statement, re.IGNORECASE)}
        assert said == expected, (page, statement)
        installs = re.findall(r"jaxtricks\[([\w,]+)\]", statement)
        assert all(extras == "test,docs" for extras in installs), (page, statement)


@pytest.mark.parametrize("page", ["README.md", "docs/getting_started.md", "docs/benchmarks.md"])
def test_every_command_list_names_the_test_targets(page):
    blocks = "\n".join(re.findall(r"^```bash\n(.*?)^```", (ROOT / page).read_text(),
                                  re.DOTALL | re.MULTILINE))
    listed = set(re.findall(r"^make ([\w-]+)", blocks, re.MULTILINE))
    assert set(TEST_TARGETS) <= listed
    assert listed <= set(_makefile_targets())


def test_a_stale_statement_of_make_test_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nmake test    # creates .venv if missing, installs "
                    "jaxtricks[test], runs ruff and pytest (CPU)\nmake bench   # runs\n```\n")
    (statement,) = make_test_statements(page)
    said = {part for part, words in MAKE_TEST_PARTS.items() if re.search(words, statement)}
    assert said == {"ruff"} != makefile_test_parts()
