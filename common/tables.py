"""The one table printer: rich for the terminal, Markdown for files."""

from __future__ import annotations

import io
from collections.abc import Sequence


def render(header: Sequence, rows: Sequence[Sequence], right: Sequence[int] = (), *, title: str | None = None,
           width: int | None = None, color: bool = False) -> str:
    """The table as rich draws it: the header, a rule under it, aligned columns (those in `right`
    right-aligned), no cell wrapped or cut. Plain text unless `color` (then ANSI styles: a terminal's).
    Cells are text, never rich markup ("[0.1, 0.2]" stays as it is)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left",
                  header_style="bold" if color else "", title_style="bold" if color else "")
    for i, name in enumerate(header):
        table.add_column(Text(str(name)), justify="right" if i in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(x)) for x in row))
    cells = [[str(x) for x in header]] + [[str(x) for x in row] for row in rows]
    natural = sum(max(len(line) for r in cells for line in (r[i].splitlines() or [""])) + 3  # + padding, rule
                  for i in range(len(cells[0]))) if cells[0] else 0
    out = io.StringIO()
    console = Console(file=out, width=max(width or 0, natural + 8, 80), color_system="standard" if color else None,
                      force_terminal=color, no_color=not color, highlight=False, emoji=False, markup=False,
                      legacy_windows=False, _environ={})
    console.print(table)
    return out.getvalue()


def text(header: Sequence, rows: Sequence[Sequence], right: Sequence[int] = ()) -> list[str]:
    """render()'s lines, plain, trailing spaces removed: for print, for a log and for tests alike."""
    return [line.rstrip() for line in render(header, rows, right).rstrip("\n").splitlines()]


def markdown(header: Sequence, rows: Sequence[Sequence]) -> list[str]:
    """A GitHub Markdown table; a '|' inside a cell is escaped."""
    def line(row):
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]
