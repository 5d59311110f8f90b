"""The four columns of a topic aligned by concept and by line, as Flax's documentation does for two
(its `codediff`: a table whose rows line up across the frameworks, the lines that differ marked).

A topic's rows are its concepts: each definition the topic cuts (the contract gives every backend the
same public functions, so `nin_block` sits beside `nin_block`), then one row for the private helpers
those definitions use. Within a concept, the lines that are the same in every framework that has the
concept (the same text, indentation aside) are anchors: they are put on one row across the columns,
and the runs of lines between them are the differences, put side by side and marked. The anchors are
the lines every other column's difflib match (SequenceMatcher, against the first column) keeps, so
they come in the same order in every column.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .source import Segment

HELPERS = "helpers"  # the key of the row of private helpers


@dataclass(frozen=True)
class Chunk:
    """A run of lines of each column: `same` (identical in every column, one row) or a difference.
    lines[package] = (first, end): line indices into that column's segment, end exclusive."""
    same: bool
    lines: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Concept:
    """One row of a topic: the same definition in each framework (or the helpers), and its chunks."""
    key: str  # the definition's name, or HELPERS
    cells: dict[str, list[Segment]]  # package -> its segments in this row (none: it has no such definition)
    chunks: tuple[Chunk, ...]  # empty for the helpers, whose lines are not aligned


def _norm(line: str) -> str:
    return " ".join(line.split())


def _matched(base: list[str], other: list[str]) -> dict[int, int]:
    """base line index -> other line index, for the non-blank lines difflib matches between the two."""
    out = {}
    blocks = difflib.SequenceMatcher(None, base, other, autojunk=False).get_matching_blocks()
    for a, b, size in blocks:
        out.update({a + k: b + k for k in range(size) if base[a + k]})
    return out


def anchors(texts: dict[str, str]) -> list[dict[str, int]]:
    """The lines the same in every column, in order: [{package: line index}] (indices increase in each)."""
    lines = {p: [_norm(line) for line in t.split("\n")] for p, t in texts.items()}
    packages = list(lines)
    if len(packages) < 2:
        return []
    base = packages[0]
    maps = [_matched(lines[base], lines[p]) for p in packages[1:]]
    common = sorted(set.intersection(*(set(m) for m in maps)))
    return [{base: i, **{p: m[i] for p, m in zip(packages[1:], maps)}} for i in common]


def chunks(texts: dict[str, str]) -> list[Chunk]:
    """The columns cut into alternating differences and runs of same lines (see anchors)."""
    sizes = {p: len(t.split("\n")) for p, t in texts.items()}
    at = dict.fromkeys(texts, 0)
    out: list[Chunk] = []
    for anchor in anchors(texts) + [None]:
        stop = anchor or sizes
        if any(stop[p] > at[p] for p in texts):
            out.append(Chunk(False, {p: (at[p], stop[p]) for p in texts}))
        if anchor is None:
            break
        previous = out[-1] if out and out[-1].same else None
        if previous and all(previous.lines[p][1] == anchor[p] for p in texts):  # extends the run of same lines
            out[-1] = Chunk(True, {p: (previous.lines[p][0], anchor[p] + 1) for p in texts})
        else:
            out.append(Chunk(True, {p: (anchor[p], anchor[p] + 1) for p in texts}))
        at = {p: anchor[p] + 1 for p in texts}
    return out


def concepts(columns: dict[str, list[Segment]]) -> list[Concept]:
    """A topic's rows: each cut definition across the columns (in the order the columns cut them), then
    the helpers. A definition that only some frameworks have is a row with empty cells for the others."""
    names = list(dict.fromkeys(s.name for segs in columns.values() for s in segs if not s.helper))
    out = []
    for name in names:
        cells = {p: [s for s in segs if s.name == name and not s.helper] for p, segs in columns.items()}
        texts = {p: c[0].text for p, c in cells.items() if c}
        out.append(Concept(name, cells, tuple(chunks(texts))))
    helpers = {p: [s for s in segs if s.helper] for p, segs in columns.items()}
    if any(helpers.values()):
        out.append(Concept(HELPERS, helpers, ()))
    return out
