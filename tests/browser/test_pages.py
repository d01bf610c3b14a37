"""The built book as a reader meets it, in headless Chromium: every chapter page complete.

Run after `make book` (the Makefile's `browser` target). Needs Debian's
`chromium` and the `playwright` Python package (which drives it; no browser
download). Each page must load with no unexpected console errors, show every
figure and explorer its notebook saved, hide nothing behind "Loading
widget...", and link to its own notebook on Colab; on pages with explorers,
moving a control must change what is drawn.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import nbformat
import pytest

from tools.book import ROOT, existing_chapters, repository

HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(not (HTML / "index.html").exists(), reason="build the book first: make book"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)"),
]

# The site serves its own plotly.js and MathJax (tools/sphinx_assets.py), and the
# theme's own console noise is fixed at its cause there. One message remains: MathJax 2's
# HTML-CSS output measures font loading against an @font-face whose source is
# about:blank, which Chromium reports as a blocked font plus one failed load. Math still
# renders; exactly those two messages, once per probe, are tolerated.
MATHJAX_PROBE = "Access to font at 'about:blank'"


def unexpected_errors(errors: list[str]) -> list[str]:
    """Console errors other than MathJax's font probe (and the failed load it causes)."""
    probes = sum(MATHJAX_PROBE in e for e in errors)
    rest = [e for e in errors if MATHJAX_PROBE not in e]
    failed = [i for i, e in enumerate(rest) if e == "Failed to load resource: net::ERR_FAILED"]
    drop = set(failed[:probes])
    return [e for i, e in enumerate(rest) if i not in drop]


@pytest.fixture(scope="module")
def server():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def saved_outputs(path: Path) -> tuple[int, int]:
    """(images, plotly figures) the notebook shows on its page (outputs not removed by tags)."""
    nb = nbformat.read(path, as_version=4)
    images = plots = 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "remove-output" in tags or "remove-cell" in tags:
            continue
        for out in cell.outputs:
            data = out.get("data", {})
            images += "image/png" in data
            plots += "application/vnd.plotly.v1+json" in data
    return images, plots


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(800)
    return page, errors


@pytest.mark.parametrize("chapter", existing_chapters(), ids=lambda c: c.stem)
def test_chapter_page_is_complete(server, browser, chapter):
    page, errors = open_page(browser, f"{server}/chapters/{chapter.stem}.html")
    try:
        assert not unexpected_errors(errors), unexpected_errors(errors)
        assert page.locator("h1").first.inner_text().startswith(f"{chapter.number}.")
        assert "Loading widget" not in page.inner_text("main")

        images, plots = saved_outputs(chapter.path)
        shown = page.locator("main .cell_output img")
        assert shown.count() == images
        for i in range(shown.count()):
            assert shown.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), f"image {i}"
        assert page.locator("main .js-plotly-plot").count() == plots

        url, branch = repository()
        slug = re.sub(r"^https://github\.com/", "", url)
        colab = page.locator('a[href*="colab.research.google.com"]').first.get_attribute("href")
        assert colab == (f"https://colab.research.google.com/github/{slug}/blob/{branch}/"
                         f"chapters/{chapter.stem}.ipynb")
    finally:
        page.close()


def _plots_state(page):
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(gd => JSON.stringify(gd.data.map(t => [t.y, t.z, t.marker && t.marker.color])))")


def test_explorers_respond_to_their_controls(server, browser):
    """Every slider and button of every explorer in the book changes what is drawn."""
    checked = 0
    for chapter in existing_chapters():
        if not saved_outputs(chapter.path)[1]:
            continue
        page, _ = open_page(browser, f"{server}/chapters/{chapter.stem}.html")
        try:
            for gd in page.locator("main .js-plotly-plot").all():
                gd.scroll_into_view_if_needed()
                for rail in gd.locator("rect.slider-rail-rect").all():
                    if not rail.is_visible():
                        continue
                    before = _plots_state(page)
                    box = rail.bounding_box()
                    page.mouse.click(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
                    page.wait_for_timeout(300)
                    assert _plots_state(page) != before, f"{chapter.stem}: a slider changed nothing"
                    checked += 1
                buttons = gd.locator("g.updatemenu-button")
                if buttons.count() > 1:
                    before = _plots_state(page)
                    buttons.nth(buttons.count() - 1).click()
                    page.wait_for_timeout(300)
                    assert _plots_state(page) != before, f"{chapter.stem}: a button changed nothing"
                    checked += 1
        finally:
            page.close()
    assert checked > 0, "no explorer controls found in the book"
