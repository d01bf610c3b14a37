"""Spelling of what readers read: every chapter's markdown cells and the book's pages.

codespell flags common misspellings; words it wrongly flags in this book (names,
code identifiers) go in tests/spelling-words.txt, one per line.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools.book import ROOT, existing_chapters

WORDS = Path(__file__).with_name("spelling-words.txt")


def test_markdown_has_no_misspellings(tmp_path):
    codespell = shutil.which("codespell", path=str(Path(sys.executable).parent)) or shutil.which("codespell")
    if codespell is None:
        pytest.skip("codespell is not installed")
    for chapter in existing_chapters():
        nb = nbformat.read(chapter.path, as_version=4)
        text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        (tmp_path / f"{chapter.stem}.md").write_text(text)
    for page in (ROOT / "chapters").glob("*.md"):
        shutil.copy(page, tmp_path / page.name)
    result = subprocess.run([codespell, "--ignore-words", str(WORDS), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout.replace(str(tmp_path) + "/", "")
