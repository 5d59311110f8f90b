"""Cutting code from the live backend files, and finding the tests a note cites: by AST, as text.

Nothing here imports a backend or a framework: the files are read and parsed, so `nin idioms` runs
in every environment. A cut that names a definition the file no longer has raises IdiomsError,
naming the file and the name (tests/test_idioms.py turns that into a failure).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from common.backends import ROOT

from . import facts
from .errors import IdiomsError as IdiomsError  # re-exported: the CLI and the tests catch source.IdiomsError
from .topics import PUBLIC, Cut, Note, Topic

REGION_START = re.compile(r"^\s*# idiom: (?P<name>[\w.-]+)\s*$")
REGION_END = re.compile(r"^\s*# end idiom\s*$")


@dataclass(frozen=True)
class Segment:
    package: str
    file: str  # relative to the repository: nin_torch/model.py
    name: str
    kind: str  # "function", "class", "constant" or "region"
    helper: bool  # pulled in because a cut name uses it
    start: int  # first line, 1-based
    end: int  # last line, inclusive
    text: str


def _definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level name -> its statement (functions, classes, assignments of one name)."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def _kind(node: ast.stmt) -> str:
    return "class" if isinstance(node, ast.ClassDef) else "constant" if isinstance(
        node, (ast.Assign, ast.AnnAssign)) else "function"


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _is_helper(name: str, node: ast.stmt) -> bool:
    """Private definitions, classes and constants come along; public functions are topics of their own."""
    return name.startswith("_") or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))


def _region(lines: list[str], name: str, where: str) -> tuple[int, int]:
    start = None
    for i, line in enumerate(lines, 1):
        m = REGION_START.match(line)
        if m and m.group("name") == name:
            if start is not None:
                raise IdiomsError(f"{where}: region {name!r} is marked twice")
            start = i
        elif start is not None and REGION_END.match(line) and i > start:
            return start + 1, i - 1
    if start is None:
        raise IdiomsError(f"{where}: no region marked '# idiom: {name}'")
    raise IdiomsError(f"{where}: region {name!r} has no '# end idiom'")


def package_root(package: str, root: Path = ROOT) -> Path:
    """The folder that holds a backend package: `root` (the checkout), or where Python would find it
    (found, not imported): a package registered by $NIN_EXTRA_BACKENDS may live outside the checkout."""
    if (Path(root) / package).is_dir():
        return Path(root)
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations))).parent if spec and spec.submodule_search_locations \
        else Path(root)


def cut(package: str, spec: Cut, *, root: Path = ROOT) -> list[Segment]:
    """The named definitions of one backend file, in the order named, then the helpers they use
    (transitively, in source order)."""
    rel = f"{package}/{spec.file}"
    path = package_root(package, root) / rel
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise IdiomsError(f"{rel}: cannot read it ({e.strerror or e})") from None
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as e:
        raise IdiomsError(f"{rel}:{e.lineno}: does not parse ({e.msg})") from None
    lines = text.splitlines()
    defs = _definitions(tree)

    def segment(name: str, node: ast.stmt, helper: bool) -> Segment:
        start, end = _first_line(node), node.end_lineno or node.lineno
        return Segment(package, rel, name, _kind(node), helper, start, end, "\n".join(lines[start - 1:end]))

    names = spec.names
    if names == PUBLIC:
        names = tuple(n for n, node in defs.items() if not n.startswith("_") and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
        if not names:
            raise IdiomsError(f"{rel}: has no public function or class")
    out: list[Segment] = []
    used: set[str] = set()
    for name in names:
        if name.startswith("region:"):
            start, end = _region(lines, name[len("region:"):], rel)
            out.append(Segment(package, rel, name[len("region:"):], "region", False, start, end,
                               "\n".join(lines[start - 1:end])))
            try:
                node = ast.parse(textwrap.dedent("\n".join(lines[start - 1:end])))
            except SyntaxError:  # a region need not be whole statements: then it brings no helpers
                node = ast.Module(body=[], type_ignores=[])
        elif name in defs:
            node = defs[name]
            out.append(segment(name, node, False))
        else:
            raise IdiomsError(f"{rel}: no top-level definition named {name!r} (was it renamed? "
                              f"update idioms/topics.py, then regenerate the page)")
        used |= _used_names(node)
    if not spec.helpers:
        return out
    wanted = {s.name for s in out}
    todo = [n for n in used if n in defs and n not in wanted and _is_helper(n, defs[n])]
    helpers: set[str] = set()
    while todo:
        name = todo.pop()
        if name in helpers:
            continue
        helpers.add(name)
        todo += [n for n in _used_names(defs[name]) if n in defs and n not in wanted and n not in helpers
                 and _is_helper(n, defs[n])]
    for name in sorted(helpers, key=lambda n: _first_line(defs[n])):
        out.append(segment(name, defs[name], True))
    return out


def cut_topic(topic: Topic, *, root: Path = ROOT) -> dict[str, list[Segment]]:
    """Package -> its segments, for every package the topic names."""
    return {package: [s for c in cuts for s in cut(package, c, root=root)] for package, cuts in topic.cuts.items()}


# --- evidence ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CitedTest:
    id: str  # tests/test_backends.py::test_dropout_acts_in_training_only
    file: str
    function: str
    doc: str  # the first paragraph of its docstring, or ""


def tests_in(file: str, *, root: Path = ROOT) -> dict[str, str]:
    """Test function name -> the first paragraph of its docstring, for one test file (module level and
    in classes, as pytest collects them)."""
    path = Path(root) / file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    except OSError as e:
        raise IdiomsError(f"{file}: cannot read it ({e.strerror or e})") from None
    except SyntaxError as e:
        raise IdiomsError(f"{file}:{e.lineno}: does not parse ({e.msg})") from None
    found: dict[str, str] = {}
    for node in tree.body:
        bodies = [node] if isinstance(node, ast.FunctionDef) else [
            m for m in node.body if isinstance(m, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else []
        for f in bodies:
            if f.name.startswith("test"):
                doc = (ast.get_docstring(f) or "").split("\n\n")[0]
                found[f.name] = " ".join(doc.split())
    return found


def cited_test(test_id: str, *, root: Path = ROOT) -> CitedTest:
    """A cited test id, "tests/<file>.py::<function>" (or "<file>::<Class>::<function>", or with a
    "[param]" tail), checked against the test file's source."""
    file, sep, rest = test_id.partition("::")
    if not sep or not file.startswith("tests/") or not file.endswith(".py") or not rest:
        raise IdiomsError(f"evidence {test_id!r}: expected tests/<file>.py::<test function>")
    function = rest.split("::")[-1].split("[")[0]
    tests = tests_in(file, root=root)
    if function not in tests:
        raise IdiomsError(f"evidence {test_id!r}: {file} has no test function {function!r}")
    return CitedTest(test_id, file, function, tests[function])


MATRIX_TEST = "tests/test_backends.py::test_matches_reference"  # runs every matrix check in the tests


def check_names() -> dict[str, str]:
    """The conformance matrix's checks: name -> the record keys it covers (conformance.tolerances.CHECKS)."""
    from conformance.tolerances import CHECKS  # NumPy only: no framework
    return dict(CHECKS)


def verify(topics, *, root: Path = ROOT) -> list[str]:
    """Every problem with the topic table: cuts that find nothing, cited tests, checks or planted bugs that
    do not exist, planted bugs the note's checks do not catch in the committed results, notes with
    neither evidence nor a stated gap. Empty when all is well."""
    problems: list[str] = []
    checks = check_names()
    try:
        cited_test(MATRIX_TEST, root=root)
    except IdiomsError as e:
        problems.append(str(e))
    try:
        mutations = facts.read_mutations(root=root)
    except IdiomsError as e:
        problems.append(str(e))
        mutations = None
    for topic in topics:
        for package, cuts in topic.cuts.items():
            for c in cuts:
                try:
                    cut(package, c, root=root)
                except IdiomsError as e:
                    problems.append(f"topic {topic.key}: {e}")
        for note in topic.notes:
            problems += [f"topic {topic.key}: {p}" for p in note_problems(note, checks, mutations, root=root)]
    return problems


def note_problems(note: Note, checks: dict[str, str], mutations: facts.Mutations | None = None, *,
                  root: Path = ROOT) -> list[str]:
    """What is wrong with one note: each cited test, check, planted bug and record requirement, and the
    rule that a note without evidence states its gap. With `mutations` (facts.read_mutations), each
    planted bug must be caught by the note's checks in every run of it."""
    problems = []
    for test_id in note.evidence:
        try:
            cited_test(test_id, root=root)
        except IdiomsError as e:
            problems.append(str(e))
    problems += [f"check {name!r} is not a conformance check (conformance.tolerances.CHECKS: {sorted(checks)})"
                 for name in note.checks if name not in checks]
    if mutations is not None:
        for name in note.planted_bugs:
            problems += facts.bug_problems(name, note.checks, mutations)
    for requirement in note.matrix:
        problems += facts.record_problems(requirement)
    if not note.proven and not note.gap and not note.matrix:
        problems.append(f"note {note.text[:60]!r}...: no evidence and no stated gap")
    return problems
