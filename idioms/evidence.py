"""What the page says of each note's evidence and of the committed results, as data for the template.

The links under each note (tests, matrix checks, planted bugs, the matrix records it leans on), what is
not yet proven, and the closing section: every cited test, check and planted bug with how to run it
and what the committed results hold of it. Everything is computed (idioms.facts, idioms.render), never
written by hand; the template (idioms/templates/page.html.j2) only lays it out.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.backends import ROOT

from . import facts, render, source
from .topics import Note, Topic


def anchor(kind: str, name: str) -> str:
    """The id of a test, check or planted bug in the evidence section."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def note_links(note: Note, matrix: facts.Matrix) -> list[dict]:
    """The "proven by" links of a note: {kind, href, text}, in the order tests, checks, bugs, records."""
    out = [{"kind": "test", "href": "#" + anchor("test", t), "text": t} for t in note.evidence]
    out += [{"kind": "check", "href": "#" + anchor("check", c), "text": f"matrix check {c}"} for c in note.checks]
    out += [{"kind": "bug", "href": "#" + anchor("bug", b), "text": f"planted bug {b}"} for b in note.planted_bugs]
    proofs, _ = render.matrix_claims(note, matrix)
    return out + [{"kind": "record", "href": "#matrix", "text": p} for p in proofs]


def note_gaps(note: Note, matrix: facts.Matrix) -> list[dict]:
    """What is not yet proven of a note: {text, markdown} (the note's own gap is Markdown; computed ones are not)."""
    _, gaps = render.matrix_claims(note, matrix)
    return [{"text": g, "markdown": False} for g in gaps] + ([{"text": note.gap, "markdown": True}] if note.gap else [])


def _cited_by(topics) -> dict[str, list[Topic]]:
    out: dict[str, list[Topic]] = {}
    for topic in topics:
        for note in topic.notes:
            for ref in note.evidence + note.checks + note.planted_bugs:
                if topic not in out.setdefault(ref, []):
                    out[ref].append(topic)
    return out


def _tests(tests: list[str], *, root: Path) -> list[dict]:
    return [{"id": t, "anchor": anchor("test", t), "doc": source.cited_test(t, root=root).doc} for t in tests]


def _records(matrix: facts.Matrix) -> list[dict]:
    """Per compile mode: how many records, what they cover, how many fail a check."""
    out = []
    for mode in matrix.values("compile"):
        held = matrix.holding("compile", mode)
        out.append({"mode": mode, "count": len(held), "covers": render.describe_records(held),
                    "failing": sum(1 for r in held if r.failed)})
    return out


def _checks(cited: list[str], matrix: facts.Matrix) -> list[dict]:
    names = source.check_names()
    out = []
    for c in cited:
        rows, failed = matrix.check_rows.get(c, (0, 0))
        out.append({"name": c, "anchor": anchor("check", c), "record_keys": names[c], "rows": rows, "failed": failed,
                    "run": render.matrix_run(c)})
    return out


def _bugs(cited: list[str], mutations: facts.Mutations) -> list[dict]:
    out = []
    for name in cited:
        bug = mutations.bugs[name]
        caught = ", ".join(f"{c} ({render.ratio_range(*r)})" for c, r in bug.caught_everywhere().items())
        out.append({"name": name, "anchor": anchor("bug", name), "what": bug.what,
                    "runs": ", ".join(f"{r.backend} {r.precision}" for r in bug.runs),
                    "files": ", ".join(dict.fromkeys(r.file for r in bug.runs)), "caught": caught or "no check",
                    "required": ", ".join(bug.caught_by), "run": render.bug_run(name)})
    return out


def _mutations(mutations: facts.Mutations) -> dict:
    """Where the planted-bug facts come from, with the counts computed."""
    return {"files": mutations.files, "runs": mutations.runs, "bugs": len(mutations.bugs),
            "run_bugs": sum(1 for b in mutations.bugs.values() if b.runs),
            "never": [b.name for b in mutations.bugs.values() if not b.runs], "over": mutations.over_control}


def section(topics, results: render.Results, *, root: Path = ROOT) -> dict:
    """Everything the closing section of the page shows."""
    tests, checks, bugs = render.cited(topics)
    gaps = [{"topic": t, "text": g["text"], "markdown": g["markdown"]}
            for t in topics for n in t.notes for g in note_gaps(n, results.matrix)]
    return {"cited_by": _cited_by(topics), "tests": _tests(tests, root=root),
            "matrix": results.matrix, "records": _records(results.matrix),
            "checks": _checks([c for c in checks], results.matrix), "bugs": _bugs(bugs, results.mutations),
            "mutations": _mutations(results.mutations), "matrix_test": source.MATRIX_TEST,
            "catalogue": facts.CATALOGUE, "gaps": gaps}
