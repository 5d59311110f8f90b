"""The one table printer: plain text for the terminal, Markdown for files."""

from __future__ import annotations

from collections.abc import Sequence


def text(header: Sequence, rows: Sequence[Sequence], right: Sequence[int] = ()) -> list[str]:
    """Aligned columns, a rule under the header; columns listed in `right` are right-aligned."""
    cells = [[str(x) for x in header]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row):
        return "  ".join(x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]


def markdown(header: Sequence, rows: Sequence[Sequence]) -> list[str]:
    """A GitHub Markdown table; a '|' inside a cell is escaped."""
    def line(row):
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]
