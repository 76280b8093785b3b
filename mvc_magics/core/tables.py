"""Plain tables that render as text in a terminal and as HTML in Jupyter.

API result objects (logs, reports, comparisons) hold their data and use this to show it; nothing
here decides what to show.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    """Rows of cells with a header; ``highlight`` marks rows to emphasise (HEAD, best...)."""

    header: Sequence[str]
    rows: list[Sequence[object]]
    title: str = ""
    highlight: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        cells = [[str(c) for c in self.header]] + [[_text(c) for c in row] for row in self.rows]
        widths = [max(display_width(row[i]) for row in cells) for i in range(len(self.header))]
        lines = [self.title] if self.title else []
        lines.append(("  " + "  ".join(pad(h, w) for h, w in zip(cells[0], widths))).rstrip())
        lines.append("  " + "  ".join("-" * w for w in widths))
        for index, row in enumerate(cells[1:]):
            mark = "*" if index in self.highlight else " "
            lines.append((mark + " " + "  ".join(pad(c, w) for c, w in zip(row, widths))).rstrip())
        if not self.rows:
            lines.append("  (nothing to show)")
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.to_text())

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_html(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in self.header)
        body = []
        for index, row in enumerate(self.rows):
            style = " style='font-weight:bold;background:#e8f4ea'" if index in self.highlight else ""
            cells = "".join(f"<td style='text-align:left'>{html.escape(_text(c))}</td>" for c in row)
            body.append(f"<tr{style}>{cells}</tr>")
        title = f"<caption style='text-align:left'>{html.escape(self.title)}</caption>" if self.title else ""
        notes = "".join(f"<div><small>{html.escape(n)}</small></div>" for n in self.notes)
        return (f"<table class='mvc-table'>{title}<thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{notes}")


class TableView:
    """Mixin for results that show as a :class:`Table`: text in a terminal, HTML in Jupyter."""

    def table(self) -> Table:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.table().to_text()

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return self.table().to_html()


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK, fullwidth) characters take two, combining
    marks and zero-width characters none (what ``wcwidth`` computes, for the characters tables show)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` terminal columns (``str.ljust`` counts characters, not columns)."""
    return text + " " * max(0, width - display_width(text))


def _text(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def format_number(value: float) -> str:
    """Compact, readable numbers: 0.9812, 1.234e-05, nan, inf."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return f"{value:.3e}"


def format_bytes(count: int) -> str:
    """Human-readable byte count (B, KiB, MiB, GiB)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
