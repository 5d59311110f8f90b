"""The topics side by side in a wide terminal: one column per framework, rows aligned as on the page.

A rich Table per topic: the frameworks as columns, a row per definition's title, then a row per run of
lines (idioms.align): the lines the same in every framework, and the runs where they differ, marked
`≠` in the left margin (and shaded when colour is on). Each cell is rich's Syntax of the whole segment
cropped to its lines, so a docstring split across rows keeps its highlighting. render.to_text calls
this only when the terminal is at least render.SIDE_BY_SIDE characters wide; narrower, the frameworks
follow one another there.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from . import align, source
from .topics import PACKAGES

THEME = "ansi_dark"  # the terminal's own colours
DIFFERS = "≠"
SHADE = "on grey15"  # the runs where the frameworks differ, when colour is on


def _syntax(text: str, first: int, end: int) -> Syntax:
    return Syntax(text, "python", theme=THEME, line_range=(first + 1, end), word_wrap=True,
                  background_color="default")


def _rows(concept: align.Concept) -> list[tuple[str, list, bool]]:
    """(margin mark, a cell per framework, differs) for each table row of one concept."""
    cells = {p: (segs[0] if segs else None) for p, segs in concept.cells.items()}
    if concept.key == align.HELPERS:
        helpers = [Group(*[Group(Text(f"{s.name} (used above) {s.file}", style="dim"), _syntax(s.text, 0, 10 ** 6))
                           for s in segs]) if segs else Text("") for segs in concept.cells.values()]
        return [("", [Text("the helpers they use", style="bold") if s else Text("") for s in
                      concept.cells.values()], False), ("", helpers, False)]
    out = [("", [Text.assemble((s.name, "bold"), f" {s.file}") if s else Text(f"no {concept.key}", style="dim italic")
                 for s in cells.values()], False)]
    for chunk in concept.chunks:
        row = []
        for package, seg in cells.items():
            first, end = chunk.lines.get(package, (0, 0))
            row.append(_syntax(seg.text, first, end) if seg and end > first else Text(""))
        out.append(("" if chunk.same else DIFFERS, row, not chunk.same))
    return out


def table(columns: dict[str, list[source.Segment]], *, color: bool) -> Table:
    """One topic's code as a table: a column per framework, rows aligned by concept and by line."""
    t = Table(box=box.SIMPLE_HEAD, show_lines=False, padding=(0, 1), expand=True, pad_edge=False)
    t.add_column("", width=1, no_wrap=True)
    for package in columns:
        t.add_column(PACKAGES[package], ratio=1, overflow="fold")
    for concept in align.concepts(columns):
        t.add_section()
        for mark, cells, differs in _rows(concept):
            t.add_row(mark, *cells, style=SHADE if differs and color else None)
    return t


def code(columns: dict[str, list[source.Segment]], *, color: bool, width: int) -> str:
    """The table as text `width` characters wide, with ANSI colours or none at all."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color, color_system="standard" if color else None,
                      no_color=not color, highlight=False, emoji=False)
    console.print(table(columns, color=color))
    return "\n".join(line.rstrip() for line in out.getvalue().split("\n"))
