"""Sphinx extension: serve plotly.js from the book itself, once per site.

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


def _copy_assets(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_plotly_source(), static / PLOTLY_JS)


def setup(app):
    app.connect("builder-inited", _add_assets)
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
