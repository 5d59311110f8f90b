"""The topics as one self-contained HTML page, as terminal text, and as JSON.

The page is deterministic (no time, no host, no absolute path in it), so tests/test_idioms.py can
compare a fresh render with the committed docs/idioms.html. Syntax highlighting is Pygments',
rendered here; the CSS is inline; nothing is fetched when the page is opened.

What the page says about the committed results (which records the matrix holds, which planted bugs
exist and which checks catch them) is computed from those files by idioms.facts, never written by
hand, and the page embeds a hash of each (`<meta name="nin-idioms-input">`), so that
`nin idioms --check` names the file that changed since the page was generated.
"""

from __future__ import annotations

import html
import math
import re
import shutil
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter, TerminalFormatter
from pygments.lexers import PythonLexer

from common.backends import ROOT

from . import facts, source
from .topics import PACKAGES, Note, Topic

TITLE = "NiN in four frameworks: the idioms side by side"
COMMAND = "nin idioms --html docs/idioms.html"
STYLE = "default"  # Pygments' style for the page
INPUT_META = re.compile(r'<meta name="nin-idioms-input" content="(?P<file>[^" ]+) sha256:(?P<hash>[0-9a-f]{64})">')


# --- shared --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Results:
    """What the committed results hold, read once per render."""
    matrix: facts.Matrix
    mutations: facts.Mutations
    inputs: dict[str, str]  # file -> sha256, as facts.input_hashes

    @classmethod
    def read(cls, topics, *, root: Path = ROOT) -> Results:
        """The committed results; IdiomsError when a note cites a planted bug they do not show its checks
        catching (the page states what was measured, or nothing)."""
        out = cls(facts.read_matrix(root=root), facts.read_mutations(root=root), facts.input_hashes(root=root))
        for topic in topics:
            for note in topic.notes:
                for bug in note.planted_bugs:
                    problems = facts.bug_problems(bug, note.checks, out.mutations)
                    if problems:
                        raise source.IdiomsError(f"topic {topic.key}: {problems[0]}")
        return out


def embedded_inputs(page_text: str) -> dict[str, str] | None:
    """file -> sha256 of the inputs a rendered page was computed from; None when it names none."""
    found = {m["file"]: m["hash"] for m in INPUT_META.finditer(page_text)}
    return found or None


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


def bug_run(name: str) -> str:
    """The pytest command that plants one bug (tests/test_mutations.py ids: [backend-mutant-device]), in
    the environment of its backend."""
    return f"pytest tests/test_mutations.py -k 'test_mutant_is_caught and {name}'"


def ratio(r: float) -> str:
    """A ratio to a bound as docs/mutations.md writes it."""
    return f"{r:.2g}x" if math.isfinite(r) else "NaN/inf"


def ratio_range(low: float, high: float) -> str:
    return ratio(low) if ratio(low) == ratio(high) else f"{ratio(low)} to {ratio(high)}"


def describe_records(records: list[facts.MatrixRecord]) -> str:
    """What a group of matrix records covers, in a line: backends; precisions; variants; devices."""
    def values(field):
        return ", ".join(dict.fromkeys(v for r in records for v in r.value(field)))
    devices = ", ".join(dict.fromkeys(f"{r.device} ({r.device_name})" if r.device_name else r.device for r in records))
    return f"{values('backend')}; {values('precision')}; variants {values('variant')}; on {devices}"


def matrix_claims(note: Note, matrix: facts.Matrix) -> tuple[list[str], list[str]]:
    """(proofs, gaps) for the note's `matrix` requirements, computed from records/matrix.json: the records
    with that field and value, when there are some and none fails a check; otherwise what it lacks."""
    proofs, gaps = [], []
    for requirement in note.matrix:
        field, _, value = requirement.partition("=")
        held = matrix.holding(field, value)
        failing = [r for r in held if r.failed]
        if not held:
            gaps.append(f"{facts.MATRIX} holds no record with {requirement} (it holds {field} "
                        f"{', '.join(matrix.values(field)) or 'nothing'}).")
        elif failing:
            gaps.append(f"{facts.MATRIX}: {len(failing)} of its {len(held)} records with {requirement} fail a check.")
        else:
            proofs.append(f"committed matrix: {len(held)} records with {requirement}, every check passed")
    return proofs, gaps


def collect(topics, *, root: Path = ROOT) -> list[tuple[Topic, dict[str, list[source.Segment]]]]:
    return [(t, source.cut_topic(t, root=root)) for t in topics]


# --- JSON ----------------------------------------------------------------------------------------
def _note_json(note: Note, results: Results) -> dict:
    proofs, gaps = matrix_claims(note, results.matrix)
    return {"text": note.text, "evidence": list(note.evidence), "checks": list(note.checks),
            "planted_bugs": list(note.planted_bugs), "matrix": {"proven": proofs, "not_proven": gaps},
            "gap": note.gap or None}


def _bug_json(bug: facts.PlantedBug) -> dict:
    return {"what": bug.what, "caught_by_catalogue": list(bug.caught_by), "run": bug_run(bug.name),
            "caught_in_every_run": {c: list(r) for c, r in bug.caught_everywhere().items()},
            "runs": [{"file": r.file, "backend": r.backend, "precision": r.precision, "caught": r.caught,
                      "error": r.error or None} for r in bug.runs]}


def to_json(topics, *, root: Path = ROOT) -> dict:
    checks = source.check_names()
    results = Results.read(topics, root=root)
    out = []
    for topic, columns in collect(topics, root=root):
        out.append({
            "key": topic.key, "title": topic.title, "summary": topic.summary,
            "notes": [_note_json(n, results) for n in topic.notes],
            "columns": {p: {"framework": PACKAGES[p], "segments": [
                {"file": s.file, "name": s.name, "kind": s.kind, "helper": s.helper, "lines": [s.start, s.end],
                 "source": s.text} for s in segs]} for p, segs in columns.items()},
        })
    _, cited_checks, bugs = _cited(topics)
    return {"topics": out,
            "checks": {c: {"record_keys": checks[c], "run": matrix_run(c),
                           "matrix_rows": list(results.matrix.check_rows.get(c, (0, 0)))}
                       for c in cited_checks if c in checks},
            "planted_bugs": {b: _bug_json(results.mutations.bugs[b]) for b in bugs if b in results.mutations.bugs},
            "matrix": {"records": [asdict(r) for r in results.matrix.records], "rows": results.matrix.rows,
                       "failed": results.matrix.failed},
            "inputs": results.inputs}


# --- terminal ------------------------------------------------------------------------------------
def _wrap(text: str, width: int, indent: str, first: str | None = None) -> str:
    return textwrap.fill(text, width=width, initial_indent=first if first is not None else indent,
                         subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _note_lines(note: Note, width: int, matrix: facts.Matrix) -> list[str]:
    lines = [_wrap(note.text, width, "    ", "  * ")]
    proofs, gaps = matrix_claims(note, matrix)
    proof = list(note.evidence) + [f"matrix check {c} ({matrix_run(c)})" for c in note.checks] + [
        f"planted bug {b}" for b in note.planted_bugs] + proofs
    if proof:
        lines.append(_wrap("; ".join(proof), width, "        ", "      proven by: "))
    for gap in gaps + ([note.gap] if note.gap else []):
        lines.append(_wrap(gap, width, "        ", "      not yet proven: "))
    return lines


def to_text(topics, *, color: bool = False, width: int | None = None, root: Path = ROOT) -> str:
    """Each topic: its summary and notes, then the four snippets one after another."""
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 60), 120)
    formatter = TerminalFormatter() if color else None
    matrix = facts.read_matrix(root=root)
    out: list[str] = []
    for number, (topic, columns) in enumerate(collect(topics, root=root), 1):
        head = f"== {number}. {topic.title} (--topic {topic.key}) "
        out += [head + "=" * max(3, width - len(head)), _wrap(topic.summary, width, ""), "",
                "Differences that matter:"]
        for note in topic.notes:
            out += _note_lines(note, width, matrix)
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


def _evidence_html(note: Note, matrix: facts.Matrix) -> str:
    parts = []
    for t in note.evidence:
        parts.append(f'<a class="ev test" href="#{_anchor("test", t)}">{html.escape(t)}</a>')
    for c in note.checks:
        parts.append(f'<a class="ev check" href="#{_anchor("check", c)}">matrix check {html.escape(c)}</a>')
    for b in note.planted_bugs:
        parts.append(f'<a class="ev bug" href="#{_anchor("bug", b)}">planted bug {html.escape(b)}</a>')
    proofs, gaps = matrix_claims(note, matrix)
    parts += [f'<a class="ev record" href="#matrix">{html.escape(p)}</a>' for p in proofs]
    out = f'<p class="proof"><span class="tag">proven by</span> {" ".join(parts)}</p>' if parts else ""
    for gap in [html.escape(g) for g in gaps] + ([_inline(note.gap)] if note.gap else []):
        out += f'<p class="gap"><span class="tag">not yet proven</span> {gap}</p>'
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
a.ev.record { background: #fbefff; color: #6e40c9; }
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


def _head(topics, results: Results) -> list[str]:
    """From the doctype to the table of contents: the title, what the page is, what it was computed from."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">']
    out += [f'<meta name="nin-idioms-input" content="{html.escape(f)} sha256:{h}">' for f, h in results.inputs.items()]
    out += [f"<title>{html.escape(TITLE)}</title>", "<style>", CSS.strip(),
            HtmlFormatter(style=STYLE).get_style_defs(".hl"), "</style>", "</head>", "<body>", "<header>",
            f"<h1>{html.escape(TITLE)}</h1>",
            "<p>Network in Network as the <em>Dive into Deep Learning</em> chapter teaches it, written once per "
            "framework from one spec (<code>common/spec.py</code>). Each topic shows the four implementations side "
            "by side, <strong>cut from the live source files</strong> (by function, with the module's own helpers "
            "and constants they use), then the differences that matter, each with the check, test or planted bug "
            "that proves the suite handles it. Differences no test proves yet say so.</p>",
            f"<p>Generated by <code>{COMMAND}</code> from <code>idioms/topics.py</code>, with what "
            f"<code>{facts.MATRIX}</code> and <code>{facts.MUTATION_RESULTS}/*.json</code> hold computed from them; "
            "<code>tests/test_idioms.py</code> fails when a cited function, test, check or planted bug is gone, "
            "when a cited planted bug is not caught by the note's checks, or when this page is older than the code "
            "or the results it shows. The same topics in a terminal: <code>nin idioms --topic block</code>.</p>",
            "<nav><ol>"]
    out += [f'<li><a href="#{t.key}">{html.escape(t.title)}</a> <code>--topic {t.key}</code></li>' for t in topics]
    return out + ['<li><a href="#evidence">The evidence</a></li>', "</ol></nav>", "</header>"]


def _topic_html(number: int, topic: Topic, columns: dict[str, list[source.Segment]], matrix: facts.Matrix) -> list[str]:
    out = [f'<section class="topic" id="{topic.key}">', f"<h2>{number}. {html.escape(topic.title)}</h2>",
           f'<p class="summary">{_inline(topic.summary)}</p>', '<ul class="notes">']
    out += [f"<li><p>{_inline(n.text)}</p>{_evidence_html(n, matrix)}</li>" for n in topic.notes]
    out += ["</ul>", '<div class="columns">']
    for package, segs in columns.items():
        out.append(f'<div class="col" data-package="{package}">')
        out.append(f'<h3>{html.escape(PACKAGES[package])} <span class="pkg">{package}</span></h3>')
        for s in segs:
            kind = "used above, " if s.helper else ""
            out.append(f'<div class="seg"><div class="seg-title"><code>{html.escape(s.name)}</code> '
                       f'{kind}{html.escape(s.file)}</div>{_code(s.text)}</div>')
        out.append("</div>")
    return out + ["</div>", "</section>"]


def _tests_html(tests: list[str], by, *, root: Path) -> list[str]:
    out = ["<h3>Tests</h3>", "<dl>"]
    for t in tests:
        ref = source.cited_test(t, root=root)
        out += [f'<dt id="{_anchor("test", t)}">{html.escape(t)}</dt>',
                f"<dd>{_inline(ref.doc) + '<br>' if ref.doc else ''}run: <code>pytest "
                f"'{html.escape(t)}'</code>; cited in {by(t)}</dd>"]
    return out + ["</dl>"]


def _matrix_html(matrix: facts.Matrix) -> list[str]:
    """What records/matrix.json holds, per compile mode, and how many of its rows failed."""
    failed = f"{matrix.failed:,} failed" if matrix.failed else "none failed"
    out = ['<h3 id="matrix">The committed matrix</h3>',
           f"<p><code>{facts.MATRIX}</code> (written by <code>nin compare --json-out</code>) judges "
           f"{len(matrix.records)} records in {matrix.rows:,} check rows, against the reference, the spec and each "
           f"other; {failed}:</p>", "<ul>"]
    for mode in matrix.values("compile"):
        held = matrix.holding("compile", mode)
        failing = sum(1 for r in held if r.failed)
        out.append(f"<li><code>{html.escape(mode)}</code>: {len(held)} records ({html.escape(describe_records(held))}),"
                   f" {f'{failing} failing a check' if failing else 'every check passed'}</li>")
    return out + ["</ul>"]


def _checks_html(cited: list[str], by, matrix: facts.Matrix) -> list[str]:
    checks = source.check_names()
    out = ["<h3>Conformance-matrix checks</h3>",
           "<p>Judged by <code>nin compare</code> for every record, against the float64 NumPy reference and "
           "between records, with the error model's bounds (<code>common/tolerances.py</code>); in the tests, "
           f"by <code>{source.MATRIX_TEST}</code>.</p>", "<dl>"]
    for c in cited:
        rows, failed = matrix.check_rows.get(c, (0, 0))
        held = f"{rows:,} rows in <code>{facts.MATRIX}</code>, " + (f"{failed:,} failed" if failed else "all passed")
        out += [f'<dt id="{_anchor("check", c)}">{html.escape(c)}</dt>',
                f"<dd>record keys <code>{html.escape(checks[c])}</code>; {held}; run: "
                f"<code>{html.escape(matrix_run(c))}</code>; cited in {by(c)}</dd>"]
    return out + ["</dl>"]


def _bugs_intro(mutations: facts.Mutations) -> str:
    """Where the planted-bug facts come from and how a bug counts as caught, with the counts computed."""
    run = [b for b in mutations.bugs.values() if b.runs]
    never = [b.name for b in mutations.bugs.values() if not b.runs]
    files = ", ".join(f"<code>{html.escape(f)}</code>" for f in mutations.files)
    missing = f"; not run: {html.escape(', '.join(never))}" if never else ""
    return (f"<p>Measured by <code>python -m tests.mutations</code> and read from {files}: {mutations.runs} runs "
            f"of {len(run)} of the {len(mutations.bugs)} planted bugs of <code>{facts.CATALOGUE}</code>{missing}. A "
            "check catches a planted bug in a run when it fails there while the unmutated backend passes it (or "
            f"fails it by more than {mutations.over_control:g} times less), as <code>tests/mutations.py</code> "
            "judges; a note cites a planted bug only where every check it cites catches it in every run, and "
            "<code>tests/test_idioms.py</code> holds it to that.</p>")


def _bugs_html(cited: list[str], by, mutations: facts.Mutations) -> list[str]:
    out = ["<h3>Planted bugs</h3>", _bugs_intro(mutations)]
    if not cited:
        return out + ["<p>No note cites one.</p>"]
    out.append("<dl>")
    for name in cited:
        bug = mutations.bugs[name]
        runs = ", ".join(f"{r.backend} {r.precision}" for r in bug.runs)
        files = ", ".join(dict.fromkeys(r.file for r in bug.runs))
        caught = ", ".join(f"{c} ({ratio_range(*r)})" for c, r in bug.caught_everywhere().items()) or "no check"
        out += [f'<dt id="{_anchor("bug", name)}">{html.escape(name)}</dt>',
                f"<dd>{html.escape(bug.what)}<br>caught in every run ({html.escape(runs)}; <code>{html.escape(files)}"
                f"</code>) by {html.escape(caught)}, as a multiple of the bound; the catalogue requires "
                f"{html.escape(', '.join(bug.caught_by))}<br>run: <code>{html.escape(bug_run(name))}</code>; "
                f"cited in {by(name)}</dd>"]
    return out + ["</dl>"]


def _gaps_html(topics, matrix: facts.Matrix) -> list[str]:
    gaps = [(t, g) for t in topics for n in t.notes
            for g in [html.escape(x) for x in matrix_claims(n, matrix)[1]] + ([_inline(n.gap)] if n.gap else [])]
    if not gaps:
        return []
    out = ["<h3>Not yet proven</h3>", "<ul>"]
    out += [f'<li><a href="#{t.key}">{html.escape(t.title)}</a>: {g}</li>' for t, g in gaps]
    return out + ["</ul>"]


def page(topics, *, root: Path = ROOT) -> str:
    """The whole page: deterministic for a given source tree and given committed results."""
    collected = collect(topics, root=root)
    results = Results.read(topics, root=root)
    tests, cited_checks, bugs = _cited(topics)
    cited_by: dict[str, list[Topic]] = {}
    for topic in topics:
        for note in topic.notes:
            for ref in note.evidence + note.checks + note.planted_bugs:
                if topic not in cited_by.setdefault(ref, []):
                    cited_by[ref].append(topic)

    def by(ref: str) -> str:
        return ", ".join(f'<a href="#{t.key}">{html.escape(t.title)}</a>' for t in cited_by.get(ref, []))

    out = _head(topics, results) + ["<main>"]
    for number, (topic, columns) in enumerate(collected, 1):
        out += _topic_html(number, topic, columns, results.matrix)
    out += ['<section class="topic" id="evidence">', "<h2>The evidence</h2>",
            "<p>Every test, check and planted bug the notes cite, what it does, and how to run it, and what the "
            "committed results hold. Test ids are pytest's (a parametrized test by its function name: pytest runs "
            "every parameter); each runs against every backend given by <code>--backends</code>.</p>"]
    out += _tests_html(tests, by, root=root) + _matrix_html(results.matrix)
    out += _checks_html(cited_checks, by, results.matrix) + _bugs_html(bugs, by, results.mutations)
    out += _gaps_html(topics, results.matrix)
    out += ["</section>", "</main>",
            f"<footer><p>Regenerate with <code>{COMMAND}</code> after changing a cited function, "
            f"<code>{facts.MATRIX}</code> or <code>{facts.MUTATION_RESULTS}/*.json</code>.</p></footer>",
            "</body>", "</html>"]
    return "\n".join(out) + "\n"
