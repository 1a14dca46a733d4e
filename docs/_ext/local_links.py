"""Fail the build on a dead local link or a remote asset in the built HTML pages.

After an HTML build, every page under the output folder is read back and each `href` and
`src` is checked:

- a local link (no scheme: `../api/losses.html#jaxtricks.losses.class_priors`,
  `_static/figures/x.png`, the download button's `_sources/page.md`) must name a file
  that the build wrote (not a folder), and its `#fragment`, when the target is a page, an
  `id` (or `name`) in that page;
- an asset that the browser loads by itself (`<script src>`, `<link href>`, `<img src>`,
  ...) must be local: the pages read offline, so nothing may come from a CDN.

Links to other sites (`<a href="https://arxiv.org/...">`) are not fetched. Each problem is
a Sphinx warning, an error under `-W`. `python docs/_ext/local_links.py docs/_build/html`
runs the same check on a built site.
"""

from __future__ import annotations

import pathlib
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

# Tags whose `src`/`href` the browser fetches while it shows the page (not on a click).
ASSET_TAGS = frozenset({"script", "link", "img", "iframe", "source", "video", "audio",
                        "embed", "track", "input"})
# Schemes that point outside the site or are not addresses at all.
NON_FILE_SCHEMES = frozenset({"mailto", "tel", "data", "javascript", "about"})


class _Page(HTMLParser):
    """The ids and the `(tag, attribute, value)` links of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)
            elif name in ("href", "src"):
                self.links.append((tag, name, value))

    handle_startendtag = handle_starttag


def _parse(path: pathlib.Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    page.close()
    return page


def dead_links(outdir: str | pathlib.Path) -> list[tuple[str, str, str]]:
    """`(page, link, why)` for every dead local link and remote asset under `outdir`."""
    root = pathlib.Path(outdir).resolve()
    # `_static/` holds the theme's template fragments (`webpack-macros.html`), not pages.
    pages = {path.resolve(): _parse(path) for path in sorted(root.rglob("*.html"))
             if not path.relative_to(root).as_posix().startswith("_static/")}
    problems = []
    for path, page in pages.items():
        where = path.relative_to(root).as_posix()
        for tag, attribute, value in page.links:
            url = urlsplit(value.strip())
            if url.scheme in NON_FILE_SCHEMES:
                continue
            if url.scheme or url.netloc:
                if tag in ASSET_TAGS:
                    problems.append((where, value, f"<{tag} {attribute}> loads a remote file"))
                continue
            if not url.path:
                if url.fragment and unquote(url.fragment) not in page.ids:
                    problems.append((where, value, "no such anchor in the page"))
                continue
            target = (path.parent / unquote(url.path)).resolve()
            if not target.is_relative_to(root):
                problems.append((where, value, "points outside the built site"))
            elif not target.exists():
                problems.append((where, value, "no such file"))
            elif not target.is_file():
                problems.append((where, value, "a folder, not a file"))
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(url.fragment) not in ids:
                    problems.append((where, value, "no such anchor in the target page"))
    return problems


def check_links(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for page, link, why in dead_links(app.outdir):
        logger.warning("dead local link in %s: %s (%s)", page, link, why,
                       type="local_links", subtype="dead")


def setup(app):
    app.connect("build-finished", check_links, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    found = dead_links(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    for page, link, why in found:
        print(f"{page}: {link} ({why})")
    sys.exit(1 if found else 0)
