"""Re-execute chapter notebooks and save their outputs the way CI will reproduce them.

    python tools/execute_chapters.py chapters/07-*.ipynb

Before running, the first code cell is replaced by the current set-up cell
(from ``tools.book``); afterwards, per-run metadata (timings, versions) is
stripped so a re-run that changes nothing leaves the file unchanged, and the
table of contents is regenerated.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.book import CHAPTERS, ROOT, setup_cell_source, write_generated  # noqa: E402


def sync_setup_cell(nb, path: Path) -> None:
    first = next(c for c in nb.cells if c.cell_type == "code")
    chapter = next((c for c in CHAPTERS if c.path == path), None)
    first.source = setup_cell_source(chapter)
    first.metadata.setdefault("tags", [])
    if "setup" not in first.metadata.tags:
        first.metadata.tags.append("setup")


def coalesce_streams(outputs: list) -> list:
    joined = []
    for out in outputs:
        prev = joined[-1] if joined else None
        if (out.output_type == "stream" and prev is not None
                and prev.output_type == "stream" and prev.name == out.name):
            prev.text = "".join(prev.text) + "".join(out.text)
        else:
            joined.append(out)
    return joined


def clean(nb) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        # A progress bar's hundreds of redraws, which the page hides anyway (remove-stderr)
        if "remove-stderr" in cell.metadata.get("tags", []):
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.output_type == "stream" and o.name == "stderr")]
        # Print calls flushed at different moments arrive as separate stream outputs; join
        # neighbours of the same stream so the saved file does not depend on that timing.
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    nb.metadata.pop("papermill", None)
    # Live widgets need a kernel; a saved snapshot would only show "Loading widget..." or a
    # frozen control on the static page. Cells that show one are tagged remove-output.
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    sync_setup_cell(nb, path)
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    clean(nb)
    nbformat.write(nb, path)
    return elapsed


def main(paths: list[str]) -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as `make notebooks` runs them
    shared = ROOT.parent / "shared" / "data"
    if shared.is_dir():
        os.environ.setdefault("LLM_LIB_DATA_DIR", str(shared))
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken_cache"))
    total = 0.0
    for p in paths:
        elapsed = execute(Path(p).resolve())
        total += elapsed
        print(f"{p}: {elapsed:.1f} s")
    write_generated()  # the table of contents and the interview-questions page
    print(f"total {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
