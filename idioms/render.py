"""The topics as terminal text and as JSON, what the page and they share, and the page's entry point.

The page itself is idioms.page (a Jinja2 template, the code aligned by idioms.align); the terminal
view puts the four frameworks side by side with rich where the terminal is wide enough
(idioms.terminal), one after another otherwise. What they say about the committed results (which
records the matrix holds, which planted bugs exist and which checks catch them) is computed from those
files by idioms.facts, never written by hand, and the page embeds a hash of each
(`<meta name="nin-idioms-input">`), so that `nin idioms --check` names the file that changed since the
page was generated.
"""

from __future__ import annotations

import math
import re
import shutil
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from pygments import highlight
from pygments.formatters import TerminalFormatter
from pygments.lexers import PythonLexer

from common.backends import ROOT

from . import facts, source
from .topics import PACKAGES, Note, Topic

TITLE = "NiN in four frameworks: the idioms side by side"
COMMAND = "nin idioms --html docs/idioms.html"
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


def cited(topics) -> tuple[list[str], list[str], list[str]]:
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
    _, cited_checks, bugs = cited(topics)
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


# A terminal at least this wide shows the four frameworks side by side (idioms.terminal): four columns of
# 40 characters of code (the fewest that still read as code when wrapped), their padding and rules, and
# the margin that marks the lines that differ. Narrower, they follow one another.
SIDE_BY_SIDE = 4 * (40 + 3) + 5
PROSE = 120  # the notes are wrapped to at most this many characters, however wide the terminal


def _stacked(columns: dict[str, list[source.Segment]], *, color: bool, width: int) -> list[str]:
    """The four snippets one after another, each under a rule naming the framework, file and definition."""
    formatter = TerminalFormatter() if color else None
    out = []
    for package, segs in columns.items():
        for s in segs:
            label = f"-- {PACKAGES[package]}: {s.file} {s.name}" + (" (used above)" if s.helper else "") + " "
            out += ["", label + "-" * max(3, width - len(label))]
            out.append(highlight(s.text, PythonLexer(stripnl=False), formatter).rstrip("\n") if formatter else s.text)
    return out


def _code_view(width: int | None):
    """(the code of a topic as lines, the width): side by side with rich where the terminal is wide enough
    and rich is installed (the MXNet environment has none), one framework after another otherwise."""
    width = width or max(shutil.get_terminal_size((100, 24)).columns, 60)
    if width >= SIDE_BY_SIDE:
        try:
            from . import terminal
        except ImportError:
            pass
        else:
            return lambda columns, color: ["", terminal.code(columns, color=color, width=width)], width
    return (lambda columns, color: _stacked(columns, color=color, width=min(width, PROSE))), width


def to_text(topics, *, color: bool = False, width: int | None = None, root: Path = ROOT) -> str:
    """Each topic: its summary and notes, then the four snippets: side by side, rows aligned, in a terminal
    of SIDE_BY_SIDE characters or more (`width`, default the terminal's); one after another otherwise."""
    code, width = _code_view(width)
    prose = min(width, PROSE)
    matrix = facts.read_matrix(root=root)
    out: list[str] = []
    for number, (topic, columns) in enumerate(collect(topics, root=root), 1):
        head = f"== {number}. {topic.title} (--topic {topic.key}) "
        out += [head + "=" * max(3, prose - len(head)), _wrap(topic.summary, prose, ""), "",
                "Differences that matter:"]
        for note in topic.notes:
            out += _note_lines(note, prose, matrix)
        out += code(columns, color)
        out.append("")
    return "\n".join(out) + "\n"
