"""The topics as one self-contained HTML page, as terminal text, and as JSON.

The page is deterministic (no time, no host, no absolute path in it), so tests/test_idioms.py can
compare a fresh render with the committed docs/idioms.html. Syntax highlighting is Pygments',
rendered here; the CSS is inline; nothing is fetched when the page is opened.
"""

from __future__ import annotations

import html
import re
import shutil
import textwrap
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter, TerminalFormatter
from pygments.lexers import PythonLexer

from common.backends import ROOT

from . import source
from .topics import PACKAGES, Note, Topic

TITLE = "NiN in four frameworks: the idioms side by side"
COMMAND = "nin idioms --html docs/idioms.html"
STYLE = "default"  # Pygments' style for the page


# --- shared --------------------------------------------------------------------------------------
def _cited(topics) -> tuple[list[str], list[str], list[str]]:
    """Test ids, check names and planted bugs the notes cite, each once, in order of first citation."""
    tests: dict[str, None] = {}
    checks: dict[str, None] = {}
    bugs: dict[str, None] = {}
    for topic in topics:
        for note in topic.notes:
            tests.update(dict.fromkeys(note.evidence))
            checks.update(dict.fromkeys(note.checks))
            bugs.update(dict.fromkeys(note.planted_bugs))
    return list(tests), list(checks), list(bugs)


def matrix_run(check: str) -> str:
    """The pytest command that runs one matrix check in every backend (ids end in "-<check>]", so
    "-trajectory" does not also select momentum_trajectory)."""
    file, _, function = source.MATRIX_TEST.partition("::")
    return f"pytest {file} -k '{function} and -{check}'"


def collect(topics, *, root: Path = ROOT) -> list[tuple[Topic, dict[str, list[source.Segment]]]]:
    return [(t, source.cut_topic(t, root=root)) for t in topics]


# --- JSON ----------------------------------------------------------------------------------------
def to_json(topics, *, root: Path = ROOT) -> dict:
    checks = source.check_names()
    out = []
    for topic, columns in collect(topics, root=root):
        out.append({
            "key": topic.key, "title": topic.title, "summary": topic.summary,
            "notes": [{"text": n.text, "evidence": list(n.evidence), "checks": list(n.checks),
                       "planted_bugs": list(n.planted_bugs), "gap": n.gap or None} for n in topic.notes],
            "columns": {p: {"framework": PACKAGES[p], "segments": [
                {"file": s.file, "name": s.name, "kind": s.kind, "helper": s.helper, "lines": [s.start, s.end],
                 "source": s.text} for s in segs]} for p, segs in columns.items()},
        })
    _, cited_checks, _ = _cited(topics)
    return {"topics": out,
            "checks": {c: {"record_keys": checks[c], "run": matrix_run(c)} for c in cited_checks if c in checks}}


# --- terminal ------------------------------------------------------------------------------------
def _wrap(text: str, width: int, indent: str, first: str | None = None) -> str:
    return textwrap.fill(text, width=width, initial_indent=first if first is not None else indent,
                         subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _note_lines(note: Note, width: int) -> list[str]:
    lines = [_wrap(note.text, width, "    ", "  * ")]
    proof = list(note.evidence) + [f"matrix check {c} ({matrix_run(c)})" for c in note.checks] + [
        f"planted bug {b}" for b in note.planted_bugs]
    if proof:
        lines.append(_wrap("; ".join(proof), width, "        ", "      proven by: "))
    if note.gap:
        lines.append(_wrap(note.gap, width, "        ", "      not yet proven: "))
    return lines


def to_text(topics, *, color: bool = False, width: int | None = None, root: Path = ROOT) -> str:
    """Each topic: its summary and notes, then the four snippets one after another."""
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 60), 120)
    formatter = TerminalFormatter() if color else None
    out: list[str] = []
    for number, (topic, columns) in enumerate(collect(topics, root=root), 1):
        head = f"== {number}. {topic.title} (--topic {topic.key}) "
        out += [head + "=" * max(3, width - len(head)), _wrap(topic.summary, width, ""), "",
                "Differences that matter:"]
        for note in topic.notes:
            out += _note_lines(note, width)
        for package, segs in columns.items():
            for s in segs:
                label = f"-- {PACKAGES[package]}: {s.file} {s.name}" + (" (used above)" if s.helper else "") + " "
                out += ["", label + "-" * max(3, width - len(label))]
                out.append(highlight(s.text, PythonLexer(stripnl=False), formatter).rstrip("\n") if formatter
                           else s.text)
        out.append("")
    return "\n".join(out) + "\n"


# --- HTML ----------------------------------------------------------------------------------------
HANG = 4  # a wrapped line continues this many columns right of its own indentation
INDENT_CAP = 16  # deeper indentation (continuation lines under an open bracket) is drawn narrower, to this
BREAK_AFTER = re.compile(r"([(\[,.])")  # where a long line may wrap first: after these, as code is read
LEADING = re.compile(r"^((?:<span class=\"[^\"]*\">)?)( +)")  # a line's indentation, maybe in a token's span


class _HangingFormatter(HtmlFormatter):
    """Pygments' HTML with each source line in its own block, so that a line too long for its column
    wraps under its own code rather than at the left margin, preferably after ( [ , or . (<wbr>).
    Indentation deeper than INDENT_CAP is drawn in a smaller font, so that it still leaves room for code
    in a narrow column; the spaces stay, and copied code keeps them."""

    def __init__(self, indents: list[int], **options):
        super().__init__(**options)
        self.indents = indents

    def wrap(self, source):
        return super().wrap(self._lines(source))

    def _lines(self, inner):
        i = 0
        for t, line in inner:
            if t == 1:
                indent = self.indents[i] if i < len(self.indents) else 0
                i += 1
                parts = re.split(r"(<[^>]*>)", line)  # markup and text alternate; <wbr> goes into text only
                line = "".join(p if p.startswith("<") else BREAK_AFTER.sub(r"\1<wbr>", p) for p in parts)
                if indent > INDENT_CAP:
                    small = f'<span class="ind" style="font-size:{INDENT_CAP / indent:.3f}em">'
                    line = LEADING.sub(rf"\1{small}\2</span>", line)
                hang = min(indent, INDENT_CAP) + HANG
                yield 1, f'<span class="ln" style="--h:{hang}ch">{line}</span>'
            else:
                yield t, line


def _code(text: str) -> str:
    indents = [len(line) - len(line.lstrip(" ")) if line.strip() else 0 for line in text.split("\n")]
    return highlight(text, PythonLexer(stripnl=False), _HangingFormatter(indents, cssclass="hl", style=STYLE))


def _inline(text: str) -> str:
    """Escape, then `code` -> <code>code</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def _evidence_html(note: Note) -> str:
    parts = []
    for t in note.evidence:
        parts.append(f'<a class="ev test" href="#{_anchor("test", t)}">{html.escape(t)}</a>')
    for c in note.checks:
        parts.append(f'<a class="ev check" href="#{_anchor("check", c)}">matrix check {html.escape(c)}</a>')
    for b in note.planted_bugs:
        parts.append(f'<a class="ev bug" href="#{_anchor("bug", b)}">planted bug {html.escape(b)}</a>')
    out = f'<p class="proof"><span class="tag">proven by</span> {" ".join(parts)}</p>' if parts else ""
    if note.gap:
        out += f'<p class="gap"><span class="tag">not yet proven</span> {_inline(note.gap)}</p>'
    return out


CSS = """
*, *::before, *::after { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: #1f2328; background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main, footer { max-width: 1880px; margin: 0 auto; padding: 0 12px; }
h1 { font-size: 1.6em; margin: 0.8em 0 0.3em; }
h2 { font-size: 1.3em; margin: 0 0 0.3em; }
h3 { font-size: 1em; margin: 0; }
p, li, dd, dt { overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace;
  font-size: 0.88em; background: #f3f4f6; border-radius: 3px; padding: 0 0.2em; }
a { color: #0550ae; }
nav ol { columns: 2 18em; margin: 0.5em 0 1em; padding-left: 1.4em; }
.topic { border-top: 2px solid #d0d7de; padding: 1.2em 0 1.6em; }
.summary { margin: 0 0 0.6em; max-width: 75em; }
.notes { margin: 0 0 1em; padding-left: 1.2em; max-width: 110em; }
.notes li { margin: 0.35em 0; }
.notes p { margin: 0; }
.proof, .gap { font-size: 0.87em; }
.tag { font-size: 0.8em; text-transform: uppercase; letter-spacing: 0.04em; color: #57606a; margin-right: 0.3em; }
.gap .tag { color: #9a6700; }
.gap { color: #6e5400; }
a.ev { display: inline-block; margin: 0.1em 0.25em 0.1em 0; padding: 0 0.4em; border-radius: 10px;
  text-decoration: none; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: 0.92em; overflow-wrap: anywhere; max-width: 100%; }
a.ev.test { background: #ddf4ff; }
a.ev.check { background: #dafbe1; color: #116329; }
a.ev.bug { background: #ffebe9; color: #a40e26; }
.columns { display: grid; grid-template-columns: minmax(0, 1fr); gap: 10px; }
@media (min-width: 760px) { .columns { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
@media (min-width: 1200px) { .columns { grid-template-columns: repeat(4, minmax(0, 1fr)); } }
.col { min-width: 0; border: 1px solid #d0d7de; border-radius: 6px; overflow: hidden; background: #f8f8f8; }
.col > h3 { background: #eaeef2; padding: 6px 10px; border-bottom: 1px solid #d0d7de; }
.col > h3 .pkg { font-weight: normal; color: #57606a; font-size: 0.9em; }
.seg + .seg { border-top: 1px dashed #d0d7de; }
.seg-title { padding: 4px 10px 0; font-size: 0.8em; color: #57606a; overflow-wrap: anywhere; }
.seg-title code { background: none; padding: 0; color: #1f2328; font-weight: 600; }
.hl { background: transparent; }
.hl pre { margin: 0; padding: 4px 8px 8px; white-space: pre-wrap; overflow-wrap: anywhere;
  font: 11.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace; }
.hl .ln { display: block; padding-left: var(--h); text-indent: calc(-1 * var(--h)); }
#evidence h3 { margin: 1.2em 0 0.3em; }
#evidence dl { margin: 0; }
#evidence dt { margin-top: 0.7em; font-size: 0.9em;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
#evidence dd { margin: 0.1em 0 0 1.5em; font-size: 0.92em; }
#evidence :target { background: #fff8c5; }
footer { color: #57606a; font-size: 0.85em; padding-bottom: 2em; }
"""


def page(topics, *, root: Path = ROOT) -> str:
    """The whole page: deterministic for a given source tree."""
    collected = collect(topics, root=root)
    checks = source.check_names()
    tests, cited_checks, bugs = _cited(topics)
    cited_by: dict[str, list[Topic]] = {}
    for topic in topics:
        for note in topic.notes:
            for ref in note.evidence + note.checks + note.planted_bugs:
                if topic not in cited_by.setdefault(ref, []):
                    cited_by[ref].append(topic)

    def by(ref: str) -> str:
        return ", ".join(f'<a href="#{t.key}">{html.escape(t.title)}</a>' for t in cited_by.get(ref, []))

    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(TITLE)}</title>", "<style>", CSS.strip(),
           HtmlFormatter(style=STYLE).get_style_defs(".hl"), "</style>", "</head>", "<body>", "<header>",
           f"<h1>{html.escape(TITLE)}</h1>",
           "<p>Network in Network as the <em>Dive into Deep Learning</em> chapter teaches it, written once per "
           "framework from one spec (<code>common/spec.py</code>). Each topic shows the four implementations side "
           "by side, <strong>cut from the live source files</strong> (by function, with the module's own helpers "
           "and constants they use), then the differences that matter, each with the check, test or planted bug "
           "that proves the suite handles it. Differences no test proves yet say so.</p>",
           f"<p>Generated by <code>{COMMAND}</code> from <code>idioms/topics.py</code>; "
           "<code>tests/test_idioms.py</code> fails when a cited function, test or check is gone, or when this "
           "page is older than the code it shows. The same topics in a terminal: "
           "<code>nin idioms --topic block</code>.</p>",
           "<nav><ol>"]
    out += [f'<li><a href="#{t.key}">{html.escape(t.title)}</a> <code>--topic {t.key}</code></li>' for t in topics]
    out += ['<li><a href="#evidence">The evidence</a></li>', "</ol></nav>", "</header>", "<main>"]

    for number, (topic, columns) in enumerate(collected, 1):
        out += [f'<section class="topic" id="{topic.key}">', f"<h2>{number}. {html.escape(topic.title)}</h2>",
                f'<p class="summary">{_inline(topic.summary)}</p>', '<ul class="notes">']
        out += [f"<li><p>{_inline(n.text)}</p>{_evidence_html(n)}</li>" for n in topic.notes]
        out += ["</ul>", '<div class="columns">']
        for package, segs in columns.items():
            out.append(f'<div class="col" data-package="{package}">')
            out.append(f'<h3>{html.escape(PACKAGES[package])} <span class="pkg">{package}</span></h3>')
            for s in segs:
                kind = "used above, " if s.helper else ""
                out.append(f'<div class="seg"><div class="seg-title"><code>{html.escape(s.name)}</code> '
                           f'{kind}{html.escape(s.file)}</div>{_code(s.text)}</div>')
            out.append("</div>")
        out += ["</div>", "</section>"]

    out += ['<section class="topic" id="evidence">', "<h2>The evidence</h2>",
            "<p>Every test and check the notes cite, what it does, and how to run it. Test ids are pytest's "
            "(a parametrized test by its function name: pytest runs every parameter); each runs against every "
            "backend given by <code>--backends</code>.</p>", "<h3>Tests</h3>", "<dl>"]
    for t in tests:
        ref = source.cited_test(t, root=root)
        out += [f'<dt id="{_anchor("test", t)}">{html.escape(t)}</dt>',
                f"<dd>{_inline(ref.doc) + '<br>' if ref.doc else ''}run: <code>pytest "
                f"'{html.escape(t)}'</code>; cited in {by(t)}</dd>"]
    out += ["</dl>", "<h3>Conformance-matrix checks</h3>",
            "<p>Judged by <code>nin compare</code> for every record, against the float64 NumPy reference and "
            "between records, with the error model's bounds (<code>common/tolerances.py</code>); in the tests, "
            f"by <code>{source.MATRIX_TEST}</code>.</p>", "<dl>"]
    for c in cited_checks:
        out += [f'<dt id="{_anchor("check", c)}">{html.escape(c)}</dt>',
                f"<dd>record keys <code>{html.escape(checks[c])}</code>; run: <code>{html.escape(matrix_run(c))}"
                f"</code>; cited in {by(c)}</dd>"]
    out += ["</dl>", "<h3>Planted bugs</h3>"]
    if bugs:
        out.append("<dl>")
        for b in bugs:
            ref = source.cited_test(b, root=root)
            out += [f'<dt id="{_anchor("bug", b)}">{html.escape(b)}</dt>',
                    f"<dd>{_inline(ref.doc) + '<br>' if ref.doc else ''}run: <code>pytest '{html.escape(b)}'"
                    f"</code>; cited in {by(b)}</dd>"]
        out.append("</dl>")
    else:
        out.append("<p>None cited yet.</p>")
    gaps = [(t, n) for t in topics for n in t.notes if n.gap]
    if gaps:
        out += ["<h3>Not yet proven</h3>", "<ul>"]
        out += [f'<li><a href="#{t.key}">{html.escape(t.title)}</a>: {_inline(n.gap)}</li>' for t, n in gaps]
        out.append("</ul>")
    out += ["</section>", "</main>",
            f"<footer><p>Regenerate with <code>{COMMAND}</code> after changing a cited function.</p></footer>",
            "</body>", "</html>"]
    return "\n".join(out) + "\n"
