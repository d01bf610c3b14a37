"""Every chapter notebook meets the book's standard: listed, executed, error-free, complete.

nbval (``make notebooks``) checks that the saved outputs still reproduce; this
file checks what a reader would notice without running anything.
"""

import re

import nbformat
import pytest

from tools.book import (
    CHAPTERS,
    INTERVIEW_PAGE,
    ROOT,
    existing_chapters,
    interview_page_text,
    setup_cell_source,
    toc_text,
)

CHAPTER_FILES = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 2_000_000


def test_chapter_1s_map_of_the_book_lists_every_chapter():
    nb = nbformat.read(ROOT / "chapters" / "01-series-introduction.ipynb", as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## A map of the book" in c.source)
    rows = [(int(n), title.strip()) for n, title in re.findall(r"^\|[^|\n]*\| (\d+) \|([^|\n]+)\|$", text, re.M)]
    assert rows == [(c.number, c.title) for c in CHAPTERS]
    assert f"{len(CHAPTERS)} chapters in all" in text


def test_toc_lists_exactly_the_existing_chapters():
    assert (ROOT / "_toc.yml").read_text() == toc_text(), "run `python -m tools.book`"
    for stem in re.findall(r"file:\s*(\S+)", toc_text()):
        assert list(ROOT.glob(stem + ".*")), f"_toc.yml names {stem}, which does not exist"


def test_interview_page_is_in_sync_with_the_chapters():
    assert INTERVIEW_PAGE.read_text() == interview_page_text(), "run `python -m tools.book`"


def test_every_notebook_is_a_syllabus_chapter():
    known = {c.path for c in CHAPTERS}
    strays = [p.name for p in CHAPTER_FILES if p not in known]
    assert not strays, f"notebooks not in tools/book.py's chapter list: {strays}"


def sections(nb):
    """[(level-2 heading, [cells or markdown fragments under it])] in book order.

    A markdown cell may hold several headings; it is split at each one, and
    its pieces are kept as markdown cells of their own.
    """
    out = [("", [])]
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            out[-1][1].append(cell)
            continue
        for i, piece in enumerate(re.split(r"^(?=## )", cell.source, flags=re.M)):
            fragment = nbformat.v4.new_markdown_cell(piece)
            if piece.startswith("## "):
                out.append((piece.splitlines()[0][3:].strip(), [fragment]))
            elif piece.strip() or i == 0:
                out[-1][1].append(fragment)
    return out


@pytest.fixture(params=existing_chapters(), ids=lambda c: c.stem)
def chapter(request):
    return request.param, nbformat.read(request.param.path, as_version=4)


def test_title_and_setup_cell(chapter):
    ch, nb = chapter
    assert nb.cells[0].cell_type == "markdown"
    assert nb.cells[0].source.splitlines()[0] == ch.heading
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source == setup_cell_source(ch), "run tools/execute_chapters.py"
    assert not first_code.outputs, "the set-up cell should print nothing"


def test_executed_without_errors(chapter):
    ch, nb = chapter
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code, "a chapter runs code"
    unexecuted = [i for i, c in enumerate(code) if not c.execution_count]
    assert not unexecuted, f"code cells saved without running: {unexecuted}"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "execute the notebook top to bottom in one go"
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error outputs saved: {errors}"
    assert ch.path.stat().st_size < MAX_NOTEBOOK_BYTES


def test_uses_the_library_and_its_data_loaders(chapter):
    ch, nb = chapter
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    body = code.replace(setup_cell_source(ch), "")
    assert re.search(r"^\s*(from llm_lib[\w.]* import|import llm_lib\.)", body, re.M), \
        "a chapter imports what it uses from llm_lib"
    for forbidden in ("urllib", "requests.get", "shared/data", "LLM_LIB_DATA_DIR"):
        assert forbidden not in body, f"data comes through llm_lib.data_sources, not {forbidden}"


def test_ends_with_summary_exercises_and_interview_questions(chapter):
    _, nb = chapter
    heads = [h for h, _ in sections(nb)]
    assert heads[-3:] == ["Summary", "Exercises", "Interview questions"], heads
    by_head = dict(sections(nb))

    exercise_cells = by_head["Exercises"]
    md = "\n".join(c.source for c in exercise_cells if c.cell_type == "markdown")
    n_exercises = len(re.findall(r"^### Exercise \d+", md, re.M))
    assert 2 <= n_exercises <= 4, f"{n_exercises} exercises"
    solutions = md.count("<summary>Solution</summary>") + sum(
        "solution" in c.metadata.get("tags", []) for c in exercise_cells if c.cell_type == "code")
    assert solutions >= n_exercises, "every exercise has a worked solution"
    for c in exercise_cells:
        if c.cell_type == "code":
            tags = set(c.metadata.get("tags", []))
            # a solution is hidden; the code a reader completes ("exercise") and the cell that
            # tests it ("check") are shown
            assert "hide-cell" in tags or tags & {"exercise", "check"}, "solutions are hidden behind a toggle"

    questions = "\n".join(c.source for c in by_head["Interview questions"])
    n_answers = questions.count("<summary>Answer</summary>")
    assert 3 <= n_answers <= 5, f"{n_answers} interview answers"
    assert questions.count("<details>") == questions.count("</details>") == n_answers


def test_figures_have_their_images(chapter):
    _, nb = chapter
    for c in nb.cells:
        for o in c.get("outputs", []):
            text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            if "<Figure size" in text:
                assert "image/png" in o.get("data", {}), "a figure saved without its image"


def test_widgets_only_where_a_kernel_runs(chapter):
    """A live widget's output is hidden from the static page (its explorer figure is shown instead)."""
    _, nb = chapter
    assert "widgets" not in nb.metadata, "saved widget state: run tools/execute_chapters.py"
    for c in nb.cells:
        if any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in c.get("outputs", [])):
            tags = c.metadata.get("tags", [])
            assert "remove-output" in tags and "nbval-ignore-output" in tags, c.source[:80]


PAGE_COLUMNS = 79  # what the page's code column shows at 1280 px (see below)


def test_code_shown_from_the_library_fits_the_page(chapter):
    """``show_source`` listings render as code blocks: their lines must fit the page's code column too."""
    _, nb = chapter
    for c in nb.cells:
        for o in c.get("outputs", []):
            listing = o.get("data", {}).get("text/markdown", "")
            if listing.startswith("```python"):
                wide = [line for line in listing.splitlines() if len(line) > PAGE_COLUMNS]
                assert not wide, (f"library code shown in the chapter is wider than {PAGE_COLUMNS} "
                                  f"columns: {wide[:2]}")


# At 1280 px the page's code column shows 79 characters; a wider line scrolls sideways, and an
# 80th character is cut off (seen in Chromium on chapter 10's page). These
# chapters still have visible code lines wider than that (issue 16, item 8), counted here so that
# the number can only go down: the test fails if a chapter gains one, and asks for the count to be
# lowered (or the chapter removed) once lines are rewrapped. Hidden inputs count (a reader can
# open them); removed ones and the set-up cell (its install command is one unbreakable URL) do not.
WIDE_CODE_LINES_LEFT: dict[int, int] = {}


def _wide_visible_code_lines(nb) -> list[str]:
    wide = []
    for c in nb.cells:
        tags = set(c.metadata.get("tags", []))
        if c.cell_type == "code" and not tags & {"setup", "remove-input"}:
            wide += [line for line in c.source.splitlines() if len(line) > PAGE_COLUMNS]
    return wide


def test_visible_code_fits_the_page_or_is_counted(chapter):
    ch, nb = chapter
    wide = _wide_visible_code_lines(nb)
    allowed = WIDE_CODE_LINES_LEFT.get(ch.number, 0)
    assert len(wide) <= allowed, f"code lines wider than {PAGE_COLUMNS} columns: {wide[:3]}"
    assert len(wide) == allowed, (f"chapter {ch.number} now has {len(wide)} wide lines: lower its count "
                                  f"in WIDE_CODE_LINES_LEFT (or remove it at 0)")


# ---------------------------------------------------------------- the code the book builds (issue 16)

# Each piece a chapter of Parts II-IV builds, shown in that chapter by show_source: the
# library's own code, so book and package cannot drift apart. Chapter 36 shows its fast path,
# which is code of its own (cached_attention, cached_block, FastGPTModel) around these classes.
PIECES_SHOWN = {
    7: ["tokenizer.SimpleTokenizerV1", "tokenizer.SimpleTokenizerV2"],
    8: ["tokenizer.get_pair_counts tokenizer.merge_pair", "tokenizer.reference_merges"],
    9: ["data.GPTDataset"],
    14: ["attention.simple_attention"],
    15: ["attention.SelfAttentionV1", "attention.SelfAttentionV2"],
    16: ["attention.CausalAttention"],
    17: ["attention.MultiHeadAttentionWrapper.__init__ attention.MultiHeadAttentionWrapper.forward"],
    18: ["attention.MultiHeadAttention"],
    20: ["layers.LayerNorm"],
    21: ["layers.GELU", "layers.FeedForward"],
    23: ["layers.TransformerBlock"],
    24: ["model.GPTModel"],
    25: ["generate.generate_text_simple"],
    36: ["layers.FusedLayerNorm layers.FusedGELU", "attention.cached_attention",
         "layers.cached_block fast.FastGPTModel.backbone"],
}


def _library_object(dotted: str):
    import importlib

    module, *attrs = dotted.split(".")
    obj = importlib.import_module(f"llm_lib.{module}")
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("number", sorted(PIECES_SHOWN))
def test_the_pieces_a_chapter_builds_are_shown_as_the_library_has_them(number):
    from llm_lib.source import show_source

    ch = next(c for c in CHAPTERS if c.number == number)
    nb = nbformat.read(ch.path, as_version=4)
    shown = ["".join(o.get("data", {}).get("text/plain", "")).rstrip("\n") for c in nb.cells
             if c.cell_type == "code" and c.source.startswith("show_source(") for o in c.outputs]
    for listing in PIECES_SHOWN[number]:
        current = repr(show_source(*[_library_object(name) for name in listing.split()])).rstrip("\n")
        assert current in shown, f"chapter {number} does not show {listing} as llm_lib has it now"


@pytest.mark.parametrize("number", range(7, 26))
def test_parts_ii_to_iv_have_an_exercise_the_reader_writes_and_a_check(number):
    """Issue 16, item 2: the reader writes a piece, and a check cell tests it against llm_lib."""
    ch = next(c for c in CHAPTERS if c.number == number)
    nb = nbformat.read(ch.path, as_version=4)
    tagged = [(set(c.metadata.get("tags", [])), c) for c in nb.cells if c.cell_type == "code"]
    stubs = [c for tags, c in tagged if "exercise" in tags]
    checks = [c for tags, c in tagged if "check" in tags]
    assert stubs and checks, f"chapter {number} has no exercise the reader writes with a check cell"
    assert all("return None" in c.source for c in stubs), "the stub the reader completes returns None"
    saved = ["".join(o.get("text", "")) for c in checks for o in c.outputs]
    assert any("complete it" in text for text in saved), "the check cell tells the reader what to do"
    solutions = ["".join(o.get("text", "")) for tags, c in tagged if "solution" in tags for o in c.outputs]
    assert any("match" in text for text in solutions), "the hidden solution passes the check"


# ---------------------------------------------------------------- figures drawn for the chapters

FIGURES_DIR = ROOT / "chapters" / "figures"
# ```{figure} path (or :::{figure} path) and ![alt](path), as a chapter's markdown writes them
IMAGE_REFERENCE = re.compile(r"^(?:```|:::)\{figure\}[ \t]+(\S+)|!\[[^\]]*\]\((?:<([^>]+)>|([^)\s]+))", re.M)


def _chapter_markdown() -> dict[str, str]:
    """Every chapter's markdown, notebooks and pages, by file name."""
    texts = {p.name: "\n".join(c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "markdown")
             for p in CHAPTER_FILES}
    texts.update({p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "chapters").glob("*.md"))})
    return texts


def _images_shown() -> list[tuple[str, str]]:
    """(chapter file, path as written) for every figure or image in the chapters' markdown."""
    paths = [(name, "".join(groups)) for name, text in _chapter_markdown().items()
             for groups in IMAGE_REFERENCE.findall(text)]
    return [(name, path) for name, path in paths if "://" not in path]


def test_every_figure_or_image_a_chapter_shows_exists():
    shown = _images_shown()
    missing = [(name, path) for name, path in shown if not (ROOT / "chapters" / path).is_file()]
    assert not missing, f"figures or images that are not in the repository: {missing}"


@pytest.mark.parametrize("svg", sorted(FIGURES_DIR.glob("*.svg")), ids=lambda p: p.name)
def test_figure_svg_is_valid_has_a_viewbox_and_is_shown(svg):
    import xml.etree.ElementTree as ET

    root = ET.parse(svg).getroot()  # raises on anything that is not well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg", f"{svg.name}: the root element is {root.tag}, not an SVG"
    assert len((root.get("viewBox") or "").split()) == 4, f"{svg.name} needs a viewBox, so that it scales"
    assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc") is not None, \
        f"{svg.name} needs a <title> and a <desc> for screen readers"
    shown = {(ROOT / "chapters" / path).resolve() for _, path in _images_shown()}
    assert svg.resolve() in shown, f"{svg.name} is not shown by any chapter"
