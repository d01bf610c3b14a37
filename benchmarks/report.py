"""Write the results in benchmarks/README.md and chapters 32 and 36 from the saved runs in benchmarks/results/.

    python benchmarks/report.py           # rewrite the results sections of both
    python benchmarks/report.py --check   # exit 1 if either does not show the saved results

A benchmark run with ``--json benchmarks/results/NAME.json`` saves its command,
environment and table. This script puts them into the README between the
markers ``<!-- results NAME ... -->`` and ``<!-- end of results NAME -->``, and
into the chapters' markdown between markers of the form
``<!-- results NAME columns: a | b | c -->`` (only those columns, with a line
saying where and when they were measured). So every table of results in the
repository is exactly what a script measured. ``tests/test_benchmarks.py``
runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import markdown_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
CHAPTERS = [HERE.parent / "chapters" / name for name in ("32-gpt2-to-llama.ipynb", "36-making-it-fast.ipynb")]
NAMES = ["generation-cpu", "generation-smollm2-cpu", "matvec-cpu", "train-step-cpu", "train-gpu", "bpe-cpu"]
ENVIRONMENT_KEYS = ["date", "gpu", "cuda", "cpu", "cpu bf16 instructions", "torch threads", "torch",
                    "transformers", "python"]


def load(name: str) -> dict | None:
    """The saved run ``benchmarks/results/NAME.json``, or None when there is none."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def render(name: str) -> str:
    """The markdown of one results section: command, environment, table and, if profiled, where the time went."""
    record = load(name)
    if record is None:
        return (f"**Not measured yet**: there is no `benchmarks/results/{name}.json`. Run the command above "
                f"with `--json benchmarks/results/{name}.json`, then `python benchmarks/report.py`.")
    env = record["environment"]
    keys = [k for k in ENVIRONMENT_KEYS if k in env]
    parts = ["Measured with:", "", "```bash", record["command"], "```", "",
             markdown_table(keys, [[env[k] for k in keys]]), "", record["title"] + ":", "",
             markdown_table(record["columns"], record["rows"])]
    if record.get("profiles"):
        from profiling import profile_markdown

        parts += ["", "Where the time goes (`--profile`):"]
        for variant, result in record["profiles"].items():
            parts += ["", profile_markdown(variant, result)]
    return "\n".join(parts)


def render_columns(name: str, columns: list[str]) -> str:
    """A short form for the chapter: a line saying where and when, and the table with only ``columns``."""
    record = load(name)
    if record is None:
        return f"*Not measured yet* (no `benchmarks/results/{name}.json`)."
    missing = [c for c in columns if c not in record["columns"]]
    if missing:
        raise SystemExit(f"benchmarks/results/{name}.json has no column(s) {missing}; it has {record['columns']}")
    env = record["environment"]
    threads = env["torch threads"]
    where = env.get("gpu") or f"{env['cpu']}, {threads} thread{'' if threads == '1' else 's'}"
    picks = [record["columns"].index(c) for c in columns]
    caption = (f"Measured {env['date'].split()[0]} on {where}, torch {env['torch']}, "
               f"transformers {env.get('transformers', 'n/a')}:")
    return caption + "\n\n" + markdown_table(columns, [[row[i] for i in picks] for row in record["rows"]])


_SECTION = re.compile(r"(<!-- results (?P<name>[\w-]+)(?P<spec>[^\n]*?)-->\n)(.*?)"
                      r"(\n<!-- end of results (?P=name) -->)", re.S)


def update(text: str, short: bool) -> tuple[str, list[str]]:
    """``text`` with every results section rewritten, and the names of the sections found.

    ``short`` (the chapter): each marker names its columns, ``columns: a | b``; otherwise (the README)
    the section gets the whole record.
    """
    found = []

    def replace(m: re.Match) -> str:
        name, spec = m.group("name"), m.group("spec").strip()
        if name not in NAMES:
            raise SystemExit(f"unknown results section {name!r}; known: {NAMES}")
        found.append(name)
        if short:
            if not spec.startswith("columns:"):
                raise SystemExit(f"the chapter's results section {name!r} must say 'columns: a | b | ...'")
            body = render_columns(name, [c.strip() for c in spec[len("columns:"):].split("|")])
        else:
            body = render(name)
        return m.group(1) + "\n" + body + "\n" + m.group(5)

    return _SECTION.sub(replace, text), found


def updated_readme(text: str) -> str:
    """``text`` (the README) with every results section rewritten from benchmarks/results/."""
    new, found = update(text, short=False)
    if sorted(found) != sorted(NAMES):
        raise SystemExit(f"README.md must have one results section for each of {NAMES}; found {found}")
    return new


def updated_chapter(nb, path: Path) -> bool:
    """Rewrite the results sections in the notebook's markdown cells; True if anything changed."""
    changed, found = False, []
    for cell in nb.cells:
        if cell.cell_type != "markdown" or "<!-- results " not in cell.source:
            continue
        new, names = update(cell.source, short=True)
        found += names
        if new != cell.source:
            cell.source, changed = new, True
    if not found:
        raise SystemExit(f"{path.name} has no results sections")
    return changed


def main(argv=None) -> int:
    import nbformat

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the README and chapters are up to date")
    args = p.parse_args(argv)
    text = README.read_text()
    new = updated_readme(text)
    notebooks = {path: nbformat.read(path, as_version=4) for path in CHAPTERS}
    changed = {path: updated_chapter(nb, path) for path, nb in notebooks.items()}
    if args.check:
        stale = [str(path.relative_to(HERE.parent)) for path, is_stale in ((README, new != text), *changed.items())
                 if is_stale]
        if stale:
            print(f"{', '.join(stale)} do(es) not show benchmarks/results/: run python benchmarks/report.py",
                  file=sys.stderr)
            return 1
        print("benchmarks/README.md and the chapters show benchmarks/results/")
        return 0
    README.write_text(new)
    for path, nb in notebooks.items():
        if changed[path]:
            nbformat.write(nb, path)
    rewritten = [path.name for path, is_changed in changed.items() if is_changed]
    print(f"wrote {README.relative_to(HERE.parent)}" + "".join(f" and {name}" for name in rewritten))
    return 0

if __name__ == "__main__":
    sys.exit(main())
