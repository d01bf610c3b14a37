"""Human evaluation (chapter 35): a person rates responses shown beside their instruction and reference.

``RatingSession`` records the ratings and saves them as JSON;
``rating_widget`` is its ipywidgets front end and ``comparison_table_html``
shows several models' responses side by side.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "RatingSession",
    "comparison_table_html",
    "rating_widget",
]


class RatingSession:
    """A person's ratings of model responses, one per entry (``{index: rating}``), saved as JSON.

    ``entries`` are dicts with ``"instruction"``, optionally ``"input"``, the
    reference answer under ``reference_key`` and the model's response under
    ``response_key``. ``position`` is the entry on show; ``rate`` records a
    rating for it and moves on.
    """

    def __init__(self, entries: Sequence[Mapping], response_key: str = "model_response",
                 reference_key: str = "output", scale: Sequence[int] = (1, 2, 3, 4, 5), rater: str = ""):
        if not entries:
            raise ValueError("nothing to rate: entries is empty")
        for i, entry in enumerate(entries):
            missing = [key for key in ("instruction", reference_key, response_key) if key not in entry]
            if missing:
                raise KeyError(f"entry {i} lacks {', '.join(missing)} (it has {', '.join(entry)})")
        if len(scale) < 2:
            raise ValueError(f"a rating scale needs at least two values, got {list(scale)}")
        self.entries = list(entries)
        self.response_key, self.reference_key = response_key, reference_key
        self.scale, self.rater = tuple(scale), rater
        self.ratings: dict[int, int] = {}
        self.notes: dict[int, str] = {}
        self.position = 0

    def __len__(self) -> int:
        return len(self.entries)

    def go_to(self, index: int) -> None:
        """Show entry ``index`` (clipped to the first and last entry)."""
        self.position = min(max(index, 0), len(self.entries) - 1)

    def rate(self, rating: int, index: int | None = None, note: str = "") -> None:
        """Record ``rating`` for entry ``index`` (the one on show by default), then show the next entry."""
        if rating not in self.scale:
            raise ValueError(f"rating {rating!r} is not on the scale {list(self.scale)}")
        index = self.position if index is None else index
        if not 0 <= index < len(self.entries):
            raise IndexError(f"entry {index} does not exist; there are {len(self.entries)} entries")
        self.ratings[index] = rating
        if note.strip():
            self.notes[index] = note.strip()
        else:
            self.notes.pop(index, None)
        self.go_to(index + 1)

    @property
    def done(self) -> bool:
        """Whether every entry has a rating."""
        return len(self.ratings) == len(self.entries)

    def mean(self) -> float:
        """Mean rating over the rated entries."""
        if not self.ratings:
            raise ValueError("no ratings yet")
        return sum(self.ratings.values()) / len(self.ratings)

    def records(self) -> list[dict]:
        """One dict per rated entry, in entry order: index, texts, rating and note."""
        return [{"index": i, "instruction": self.entries[i]["instruction"],
                 "input": self.entries[i].get("input", ""), "reference": self.entries[i][self.reference_key],
                 "response": self.entries[i][self.response_key], "rating": self.ratings[i],
                 "note": self.notes.get(i, "")} for i in sorted(self.ratings)]

    def to_json(self) -> str:
        """The session as JSON: rater, scale, number of entries and the ``records``."""
        return json.dumps({"rater": self.rater, "scale": list(self.scale), "num_entries": len(self.entries),
                           "ratings": self.records()}, indent=2, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``to_json()`` to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path


_CELL = "padding:6px 8px;vertical-align:top;white-space:pre-wrap;text-align:left;border-top:1px solid #ddd"


def _task_text(entry: Mapping) -> str:
    extra = entry.get("input", "")
    return entry["instruction"] + (f"\n\nInput: {extra}" if extra else "")


def comparison_table_html(entries: Sequence[Mapping], response_key: str = "model_response",
                          reference_key: str = "output", extra_columns: Mapping[str, Sequence] | None = None,
                          max_chars: int = 400) -> str:
    """An HTML table: instruction (with input), reference and response side by side, one row per entry.

    ``extra_columns`` adds columns such as ``{"rating": [...]}`` (one value per
    entry; ``None`` shows as a dash). Texts longer than ``max_chars`` are cut.
    """
    extra_columns = dict(extra_columns or {})
    for name, values in extra_columns.items():
        if len(values) != len(entries):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(entries)} entries")

    def cell(text) -> str:
        text = "–" if text is None else str(text)
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        return f'<td style="{_CELL}">{html.escape(text)}</td>'

    heads = ["#", "instruction", "reference", "model response", *extra_columns]
    rows = ["<tr>" + "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in heads) + "</tr>"]
    for i, entry in enumerate(entries):
        values = [i + 1, _task_text(entry), entry[reference_key], entry[response_key],
                  *(column[i] for column in extra_columns.values())]
        rows.append("<tr>" + "".join(cell(v) for v in values) + "</tr>")
    return ('<table style="border-collapse:collapse;width:100%;font-size:0.9em">'
            + "".join(rows) + "</table>")


def _entry_html(session: RatingSession) -> str:
    i = session.position
    entry = session.entries[i]
    rated = session.ratings.get(i)
    panels = [("Instruction", _task_text(entry)), ("Reference", entry[session.reference_key]),
              ("Model response", entry[session.response_key])]
    boxes = "".join(
        f'<div style="flex:1;min-width:0;padding:8px;border:1px solid #ccc;border-radius:4px">'
        f'<b>{title}</b><div style="white-space:pre-wrap;margin-top:4px">{html.escape(str(text))}</div></div>'
        for title, text in panels)
    status = f"rated {rated}" if rated is not None else "not rated yet"
    return (f"<div><b>Entry {i + 1} of {len(session)}</b> ({status}; {len(session.ratings)} rated in all)</div>"
            f'<div style="display:flex;gap:8px;margin-top:6px">{boxes}</div>')


def rating_widget(session: RatingSession):
    """An ipywidgets panel for ``session``: instruction, reference and response side by side, a button per rating.

    Clicking a rating records it (with the optional note) and shows the next
    entry; "back" and "next" move without rating. The ratings live in
    ``session`` (``session.ratings``, ``session.save(path)``).
    """
    import ipywidgets as widgets

    view = widgets.HTML()
    note = widgets.Text(placeholder="optional note on this response", layout=widgets.Layout(width="60%"))
    rate_buttons = [widgets.Button(description=str(value), layout=widgets.Layout(width="48px"),
                                   tooltip=f"rate {value} (scale {session.scale[0]} = worst, "
                                           f"{session.scale[-1]} = best)")
                    for value in session.scale]
    back = widgets.Button(description="◀ back", layout=widgets.Layout(width="80px"))
    forward = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))

    def show() -> None:
        view.value = _entry_html(session)
        note.value = session.notes.get(session.position, "")
        for button, value in zip(rate_buttons, session.scale, strict=True):
            button.button_style = "primary" if session.ratings.get(session.position) == value else ""

    def on_rate(value: int) -> None:
        session.rate(value, note=note.value)
        show()

    def on_move(step: int) -> None:
        session.go_to(session.position + step)
        show()

    for button, value in zip(rate_buttons, session.scale, strict=True):
        button.on_click(lambda _, value=value: on_rate(value))
    back.on_click(lambda _: on_move(-1))
    forward.on_click(lambda _: on_move(+1))
    show()
    label = widgets.Label(f"rating ({session.scale[0]} worst, {session.scale[-1]} best):")
    return widgets.VBox([view, widgets.HBox([label, *rate_buttons, back, forward]), note])
