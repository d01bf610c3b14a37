"""The library's own code, shown in a chapter: ``show_source(RMSNorm)``.

In the book the code appears as a highlighted listing (the output's markdown);
its plain-text form is the source itself, which nbval compares on every run, so
a chapter cannot go on showing code that the library no longer has.
"""

from __future__ import annotations

import inspect
import textwrap

__all__ = ["SourceListing", "show_source"]


class SourceListing:
    """Source code for display: markdown for the rendered page, plain text for nbval."""

    def __init__(self, source: str):
        self.source = source

    def _repr_markdown_(self) -> str:
        return f"```python\n{self.source}```"

    def __repr__(self) -> str:
        return self.source


def show_source(*objects) -> SourceListing:
    """The source of each function, class or method, one after another, as the library has it."""
    if not objects:
        raise TypeError("show_source needs at least one function, class or method")
    parts = []
    for obj in objects:
        try:
            # inspect.unwrap: a decorated function (torch.no_grad) shows its own code
            parts.append(textwrap.dedent(inspect.getsource(inspect.unwrap(obj))))
        except (TypeError, OSError) as exc:
            raise TypeError(f"cannot show the source of {obj!r}: {exc}") from None
    return SourceListing("\n\n".join(part.rstrip("\n") for part in parts) + "\n")
