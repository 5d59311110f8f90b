"""The topics as one self-contained HTML page, written from a Jinja2 template (idioms/templates/).

Each topic shows the four frameworks as columns whose rows line up by concept and by line
(idioms.align: Flax's codediff, for four): the lines the same in every framework on one row, unmarked;
the runs where they differ side by side, marked; a hatched cell where one framework has nothing there.
From 1100 pixels the columns stand side by side; narrower, each framework's code follows the previous
one's (the cells are written framework by framework, and placed in the grid by their row and column).

The page is deterministic (no time, no host, no absolute path in it), so tests/test_idioms.py can compare a
fresh render with the committed docs/idioms.html. Syntax highlighting is Pygments', rendered here; the
notes' Markdown (`code` spans) is rendered by markdown-it-py; the CSS is inline; nothing is fetched when
the page is opened. What the page says about the committed results is computed by idioms.facts, and the
page embeds a hash of each results file (render.INPUT_META).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from common.backends import ROOT

from . import align, evidence, render, source
from .topics import PACKAGES, Topic

TEMPLATES = Path(__file__).resolve().parent / "templates"
STYLE = "default"  # Pygments' style for the page
HANG = 4  # a wrapped line continues this many columns right of its own indentation
INDENT_CAP = 16  # deeper indentation (continuation lines under an open bracket) is drawn narrower, to this
BREAK_AFTER = re.compile(r"([(\[,.])")  # where a long line may wrap first: after these, as code is read
LEADING = re.compile(r"^((?:<span class=\"[^\"]*\">)?)( +)")  # a line's indentation, maybe in a token's span


@cache
def environment() -> jinja2.Environment:
    """The templates, HTML-escaped unless a value is Markup; an undefined name is an error, not blank."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["md"] = inline
    return env


@cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False})  # raw HTML in a note is shown as text, not obeyed


def inline(text: str) -> Markup:
    """A note's inline Markdown (`code` spans) as HTML; anything else in it is escaped."""
    return Markup(_markdown().renderInline(text))


def _hang(line: str, indent: int) -> str:
    """One highlighted line in its own block, so that a line too long for its column wraps under its own
    code rather than at the left margin, preferably after ( [ , or . (<wbr>). Indentation deeper than
    INDENT_CAP is drawn in a smaller font, so that it still leaves room for code in a narrow column; the
    spaces stay, and copied code keeps them."""
    parts = re.split(r"(<[^>]*>)", line)  # markup and text alternate; <wbr> goes into text only
    line = "".join(p if p.startswith("<") else BREAK_AFTER.sub(r"\1<wbr>", p) for p in parts)
    if indent > INDENT_CAP:
        small = f'<span class="ind" style="font-size:{INDENT_CAP / indent:.3f}em">'
        line = LEADING.sub(rf"\1{small}\2</span>", line)
    return f'<span class="ln" style="--h:{min(indent, INDENT_CAP) + HANG}ch">{line}</span>'


def code_lines(text: str) -> list[str]:
    """The source highlighted by Pygments, one HTML string per line (Pygments closes its spans at each
    line's end, so that any run of lines stands on its own)."""
    html = highlight(text, PythonLexer(stripnl=False), HtmlFormatter(nowrap=True, style=STYLE))
    lines = html.split("\n")[: len(text.split("\n"))]
    return [_hang(line, len(raw) - len(raw.lstrip(" ")) if raw.strip() else 0)
            for line, raw in zip(lines, text.split("\n"))]


TITLE = Markup('<div class="seg-title"><code>{}</code> {}</div>')  # a definition's name and its file


def pre(lines: list[str]) -> Markup:
    return Markup('<div class="hl"><pre>' + "".join(lines) + "</pre></div>")


@dataclass(frozen=True)
class Cell:
    """One cell of a topic's grid. kind: head (the framework), title (a definition's name), none (the
    framework has no such definition), same (lines the same in every column), diff (lines that differ),
    gap (nothing in this column where the others differ), helpers, foot."""
    package: str
    row: int
    column: int
    kind: str
    html: Markup = Markup("")
    concept: str = ""


def _concept_cells(concept: align.Concept, package: str, *, first_row: int, column: int) -> list[Cell]:
    """One column's cells of one concept row: its title, then its code (chunk by chunk)."""
    segs = concept.cells.get(package, [])
    if concept.key == align.HELPERS:
        body = Markup("").join(TITLE.format(s.name, "used above, " + s.file) + pre(code_lines(s.text)) for s in segs)
        title = Markup('<div class="seg-title">the helpers they use</div>') if segs else Markup("")
        return [Cell(package, first_row, column, "title" if segs else "none", title, concept.key),
                Cell(package, first_row + 1, column, "helpers" if segs else "gap", body)]
    if not segs:  # its title says so; hatched cells keep the column's place beside the others' lines
        title = Cell(package, first_row, column, "none", TITLE.format(f"no {concept.key}", "in this framework"),
                     concept.key)
        return [title] + [Cell(package, first_row + k, column, "gap") for k in range(1, len(concept.chunks) + 1)]
    seg = segs[0]
    cells = [Cell(package, first_row, column, "title", TITLE.format(seg.name, seg.file), concept.key)]
    lines = code_lines(seg.text)
    for k, chunk in enumerate(concept.chunks, 1):
        first, end = chunk.lines.get(package, (0, 0))
        kind = "same" if chunk.same else "diff" if end > first else "gap"
        cells.append(Cell(package, first_row + k, column, kind, pre(lines[first:end]) if end > first else Markup("")))
    return cells


def grid(columns: dict[str, list[source.Segment]]) -> list[Cell]:
    """A topic's cells, framework by framework (the order a narrow screen shows them in), each placed in
    the grid by its row and column: row 1 the frameworks, then each concept's title and chunks."""
    concepts = align.concepts(columns)
    rows, at = {}, 2
    for concept in concepts:
        rows[concept.key] = at
        at += 1 + (1 if concept.key == align.HELPERS else len(concept.chunks))
    out = []
    for column, package in enumerate(columns, 1):
        out.append(Cell(package, 1, column, "head",
                        Markup('<h3>{} <span class="pkg">{}</span></h3>').format(PACKAGES[package], package)))
        for concept in concepts:
            out += _concept_cells(concept, package, first_row=rows[concept.key], column=column)
        out.append(Cell(package, at, column, "foot"))
    return out


def _topic(number: int, topic: Topic, columns: dict, results: render.Results) -> dict:
    return {"number": number, "topic": topic, "cells": grid(columns),
            "notes": [{"note": n, "proof": evidence.note_links(n, results.matrix),
                       "gaps": evidence.note_gaps(n, results.matrix)} for n in topic.notes]}


def page(topics, *, root: Path = ROOT) -> str:
    """The whole page: deterministic for a given source tree and given committed results."""
    collected = render.collect(topics, root=root)
    results = render.Results.read(topics, root=root)
    return environment().get_template("page.html.j2").render(
        title=render.TITLE, command=render.COMMAND, inputs=results.inputs, topics=topics,
        matrix_file=render.facts.MATRIX, mutation_results=render.facts.MUTATION_RESULTS,
        pygments_css=Markup(HtmlFormatter(style=STYLE).get_style_defs(".hl")),
        sections=[_topic(k, t, c, results) for k, (t, c) in enumerate(collected, 1)],
        evidence=evidence.section(topics, results, root=root))
