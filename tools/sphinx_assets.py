"""Sphinx extension: serve plotly.js from the book itself, once per site, and keep pages clean.

Plotly outputs in the chapters carry only their figure (see
``llm_lib.viz.setup_plotly``); this extension copies the plotly.js of the
installed ``plotly`` package into ``_static/`` and loads it on every page,
so the explorers work from a local copy of the book with no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PLOTLY_JS = "plotly.min.js"


def _plotly_source() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / PLOTLY_JS


def _add_assets(app) -> None:
    if app.builder.format == "html":
        app.add_js_file(PLOTLY_JS, priority=400)  # before the pages' own scripts run


def _mathjax_source() -> Path | None:
    """MathJax 2.7 as shipped by the ``jupyter_server_mathjax`` package, if installed."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def _local_mathjax(app, config) -> None:
    """Load MathJax from the site instead of a CDN, so math renders offline too."""
    if _mathjax_source() is None:
        return  # keep Sphinx's default (MathJax 3 from a CDN)
    config.mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
    config.mathjax3_config = None
    config.myst_update_mathjax = False  # that setting writes a MathJax 3 configuration
    # Notebook pages are marked tex2jax_ignore as a whole; only the math Sphinx wrote is typeset.
    config.mathjax2_config = {
        "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                    "processEscapes": True, "processEnvironments": True,
                    "processClass": "tex2jax_process|mathjax_process|math|output_area",
                    "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
        # the package ships the STIX-Web fonts only
        "HTML-CSS": {"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web", "webFont": "STIX-Web",
                     "imageFont": None},
        "showMathMenu": False,
        "messageStyle": "none",
    }


def _copy_assets(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_plotly_source(), static / PLOTLY_JS)
        if (mathjax := _mathjax_source()) is not None:
            shutil.copytree(mathjax, static / "mathjax", dirs_exist_ok=True)


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep one copy of each inline script: sphinx-thebe's configuration arrives twice in
    Jupyter Book 1, and its second ``const THEBE_JS_URL`` is a console error on every page."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # an inline script is registered once with filename None and once with ""
        name = getattr(script, "filename", str(script)) or ""
        key = (name, tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if "script_files" in context:
        context["script_files"][:] = unique


def _default_colour_mode(app, config) -> None:
    """Follow the reader's system colour mode. Jupyter Book leaves the theme's
    ``default_mode`` empty, and a first visit then logs "Got invalid theme mode"."""
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "auto")
    config.html_context = context


def setup(app):
    app.connect("config-inited", _default_colour_mode)
    app.connect("config-inited", _local_mathjax)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    app.connect("builder-inited", _add_assets)
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
