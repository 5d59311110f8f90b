"""What the committed results say, read from the files, so that the page claims nothing by hand.

Two kinds of result are committed, and the page states what they hold:
    records/matrix.json         the conformance matrix (`nin compare --json-out`): which records it
                                compared (backend, compile mode, precision, device, variants) and every
                                check row, passed or failed
    results/mutations/*.json    the planted bugs (`python -m tests.mutations --json-out`): per mutant,
                                backend and precision, every check's ratio to its bound, and the
                                unmutated backend's (the control)
What a planted bug is (its one-line description, the checks its catalogue entry says catch it) and the
rule that counts it caught (OVER_CONTROL) are read from tests/mutations.py with `ast`, not imported:
nothing here imports a framework, and a driver imports nothing from tests/.

`input_hashes` names these files with a hash of their bytes; the page embeds it, so that
`nin idioms --check` can say which of them changed since the page was made. Every malformed file
raises IdiomsError in one line naming the file and the field.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from common.backends import ROOT

from .errors import IdiomsError

MATRIX = "records/matrix.json"
MUTATION_RESULTS = "results/mutations"  # every *.json in it: one per environment
CATALOGUE = "tests/mutations.py"
RECORD_FIELDS = ("backend", "compile", "precision", "device", "variant")  # what a Note's `matrix` may ask for
# "<label>: <path> (<precision>, <device> <device name>, <compile>; <versions>); variants <a>, <b>" (compare.py)
COMPARED = re.compile(r"^(?P<label>.+?): (?P<path>\S+) \((?P<precision>[^,;]+), (?P<device>[^,;]+), "
                      r"(?P<compile>[^,;]+); .*\); variants (?P<variants>.+)$")


# --- the conformance matrix ----------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixRecord:
    label: str  # as the matrix names it: "jax/compiled@fp64"
    path: str
    backend: str
    compile: str
    precision: str
    device: str  # "cpu", "gpu"
    device_name: str  # "x86_64", the GPU's name
    variants: tuple[str, ...]
    checks: int  # rows of the matrix that judge this record (against the reference, the spec or another)
    failed: int

    def value(self, field: str) -> tuple[str, ...]:
        """The record's values of one of RECORD_FIELDS (a record holds several variants)."""
        return self.variants if field == "variant" else (getattr(self, field),)


@dataclass(frozen=True)
class Matrix:
    records: tuple[MatrixRecord, ...]
    rows: int
    failed: int
    check_rows: dict[str, tuple[int, int]]  # check -> (rows, failed rows)

    def holding(self, field: str, value: str) -> list[MatrixRecord]:
        return [r for r in self.records if value in r.value(field)]

    def values(self, field: str) -> list[str]:
        """Every value of `field` the matrix holds, in the matrix's order."""
        return list(dict.fromkeys(v for r in self.records for v in r.value(field)))


def _read_json(rel: str, root: Path):
    try:
        return json.loads((Path(root) / rel).read_text(encoding="utf-8"))
    except OSError as e:
        raise IdiomsError(f"{rel}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise IdiomsError(f"{rel}: not JSON (line {e.lineno}: {e.msg})") from None


def _field(doc: dict, key: str, kind, where: str):
    """doc[key], which must be of `kind` (a bool is no number); `where` is the file, or "file: path"."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        name = f"{where}.{key}" if ": " in where else f"{where}: {key}"
        raise IdiomsError(f"{name}: expected {names}, got {type(value).__name__}")
    return value


def _record(label: str, path: str, compared: list[str], counts: tuple[int, int]) -> MatrixRecord:
    """One record of the matrix, from its line in `compared` (the only place its mode and device are)."""
    line = next((c for c in compared if c.startswith(f"{label}: {path} (")), None)
    m = COMPARED.match(line or "")
    if m is None:
        raise IdiomsError(f"{MATRIX}: compared: no line '{label}: {path} (<precision>, <device>, <mode>; ...); "
                          f"variants ...' for the record the checks name")
    device, _, device_name = m["device"].partition(" ")
    return MatrixRecord(label, path, label.split("/")[0], m["compile"], m["precision"], device, device_name.strip(),
                        tuple(v.strip() for v in m["variants"].split(",")), *counts)


def read_matrix(*, root: Path = ROOT) -> Matrix:
    """The records and check rows of the committed matrix."""
    doc = _read_json(MATRIX, root)
    compared = _field(doc, "compared", list, MATRIX)
    rows = _field(doc, "checks", list, MATRIX)
    paths: dict[str, str] = {}  # record label -> its file
    per_record: dict[str, list[int]] = {}  # label -> [rows that judge it, alone or in a pair; failed]
    per_check: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        where = f"{MATRIX}: checks[{i}]"
        label, failed = _field(row, "backend", str, where), int(not _field(row, "passed", bool, where))
        path, check = _field(row, "path", str, where), _field(row, "check", str, where)
        if check != "record" and path:  # "record" rows: a file that could not be read, cases that differ
            paths.setdefault(label, path)
        for counts in per_record.setdefault(label, [0, 0]), per_check.setdefault(check, [0, 0]):
            counts[0], counts[1] = counts[0] + 1, counts[1] + failed
        if _field(row, "against", str, where) in paths:  # a pair: the other record is judged too
            other = per_record[row["against"]]
            other[0], other[1] = other[0] + 1, other[1] + failed
    records = tuple(_record(label, path, compared, tuple(per_record[label])) for label, path in paths.items())
    return Matrix(records, len(rows), sum(n[1] for n in per_check.values()),
                  {c: tuple(n) for c, n in per_check.items()})


def record_problems(requirement: str) -> list[str]:
    """A Note's `matrix` entry is "<field>=<value>", field one of RECORD_FIELDS."""
    field, sep, value = requirement.partition("=")
    if not sep or field not in RECORD_FIELDS or not value:
        return [f"matrix {requirement!r}: expected <field>=<value>, field one of {', '.join(RECORD_FIELDS)}"]
    return []


# --- the planted bugs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One planted bug judged on one backend in one precision."""
    file: str  # results/mutations/main.json
    backend: str
    precision: str
    caught: dict[str, float]  # check -> ratio to its bound, for the checks that catch it (beyond the control)
    error: str = ""  # the mutant raised instead of computing


@dataclass(frozen=True)
class PlantedBug:
    name: str
    what: str  # the mistake, in a line (the catalogue's)
    caught_by: tuple[str, ...]  # what tests/test_mutations.py requires to fail
    runs: tuple[Run, ...]  # empty: in the catalogue, never run

    def caught_everywhere(self) -> dict[str, tuple[float, float]]:
        """check -> (least, worst) ratio over the runs, for the checks that catch it in every run, the
        surest first (a NaN ratio counts as infinite: the values were not even numbers)."""
        if not self.runs:
            return {}
        common = set.intersection(*(set(r.caught) for r in self.runs))
        spans = {c: (min(_finite_or_inf(r.caught[c]) for r in self.runs),
                     max(_finite_or_inf(r.caught[c]) for r in self.runs)) for c in common}
        return dict(sorted(spans.items(), key=lambda kv: (-kv[1][0], kv[0])))


def _finite_or_inf(x: float) -> float:
    return math.inf if math.isnan(x) else x


@dataclass(frozen=True)
class Mutations:
    bugs: dict[str, PlantedBug]  # every catalogue entry, in catalogue order
    files: tuple[str, ...]
    runs: int
    over_control: float


def _literal(node: ast.expr, where: str):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise IdiomsError(f"{where}: expected a literal, got {ast.unparse(node)[:60]!r}") from None


def read_catalogue(*, root: Path = ROOT) -> tuple[dict[str, tuple[str, tuple[str, ...]]], float]:
    """({mutant: (what, caught_by)} in catalogue order, OVER_CONTROL), read from tests/mutations.py's
    `@mutant(name, backends, breaks, what, caught_by=...)` decorators and its OVER_CONTROL constant."""
    try:
        tree = ast.parse((Path(root) / CATALOGUE).read_text(encoding="utf-8"), filename=CATALOGUE)
    except OSError as e:
        raise IdiomsError(f"{CATALOGUE}: cannot read it ({e.strerror or e})") from None
    except SyntaxError as e:
        raise IdiomsError(f"{CATALOGUE}:{e.lineno}: does not parse ({e.msg})") from None
    entries, over = {}, None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["OVER_CONTROL"]:
            over = float(_literal(node.value, f"{CATALOGUE}:{node.lineno}: OVER_CONTROL"))
        for d in getattr(node, "decorator_list", []):
            if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "mutant" and len(d.args) >= 4:
                where = f"{CATALOGUE}:{d.lineno}: @mutant"
                keywords = {k.arg: k.value for k in d.keywords}
                caught_by = _literal(keywords["caught_by"], where) if "caught_by" in keywords else ()
                entries[_literal(d.args[0], where)] = (_literal(d.args[3], where), tuple(caught_by))
    if over is None:
        raise IdiomsError(f"{CATALOGUE}: no OVER_CONTROL = <number> (the rule that counts a mutant caught)")
    return entries, over


def _entries(rel: str, root: Path) -> list[dict]:
    """The entries of one results file, each field the page reads checked."""
    results = _field(_read_json(rel, root), "results", list, rel)
    for i, e in enumerate(results):
        where = f"{rel}: results[{i}]"
        _field(e, "backend", str, where), _field(e, "precision", str, where)
        _field(e, "mutant", (str, type(None)), where)
        if "error" in e:
            _field(e, "error", str, where)
            continue
        for j, row in enumerate(_field(e, "rows", list, where)):
            _field(row, "check", str, f"{where}.rows[{j}]"), _field(row, "passed", bool, f"{where}.rows[{j}]")
            _field(row, "ratio", (int, float), f"{where}.rows[{j}]")
    return results


def caught_checks(entry: dict, control: dict | None, over_control: float) -> dict[str, float]:
    """check -> ratio, for the checks of one mutant run that fail where the unmutated backend passes (or
    fails by more than over_control times less): tests/mutations.py's `verdict`, check by check."""
    base = {r["check"]: r["ratio"] for r in (control or {}).get("rows", []) if not r["passed"]}
    return {r["check"]: float(r["ratio"]) for r in entry.get("rows", []) if not r["passed"] and (
        r["check"] not in base or r["ratio"] > over_control * base[r["check"]])}


def read_mutations(*, root: Path = ROOT) -> Mutations:
    """Every planted bug of the catalogue, with the runs the committed results hold for it."""
    catalogue, over = read_catalogue(root=root)
    files = tuple(sorted(p.relative_to(root).as_posix() for p in (Path(root) / MUTATION_RESULTS).glob("*.json")))
    if not files:
        raise IdiomsError(f"{MUTATION_RESULTS}: no *.json results (python -m tests.mutations --json-out ...)")
    entries = [(f, e) for f in files for e in _entries(f, root)]
    controls = {(e["backend"], e["precision"]): e for _, e in entries if e["mutant"] is None}
    runs: dict[str, list[Run]] = {}
    for f, e in entries:
        if e["mutant"] is not None:
            caught = caught_checks(e, controls.get((e["backend"], e["precision"])), over)
            runs.setdefault(e["mutant"], []).append(Run(f, e["backend"], e["precision"], caught, e.get("error", "")))
    unknown = sorted(set(runs) - set(catalogue))
    if unknown:
        raise IdiomsError(f"{MUTATION_RESULTS}: mutant {unknown[0]!r} is not in {CATALOGUE} (results older "
                          f"than the catalogue: run python -m tests.mutations again)")
    bugs = {name: PlantedBug(name, what, caught_by, tuple(runs.get(name, ())))
            for name, (what, caught_by) in catalogue.items()}
    return Mutations(bugs, files, sum(len(r) for r in runs.values()), over)


def bug_problems(name: str, checks: tuple[str, ...], mutations: Mutations) -> list[str]:
    """Why a note may not cite planted bug `name` with these checks: it is not in the catalogue, no result
    holds it, or a check the note cites does not catch it in every run (none cited: no check catches it)."""
    bug = mutations.bugs.get(name)
    if bug is None:
        return [f"planted bug {name!r}: no such mutant in {CATALOGUE}"]
    if not bug.runs:
        return [f"planted bug {name!r}: no run of it in {MUTATION_RESULTS}/*.json"]
    problems = []
    for check in checks or (None,):
        missed = [r for r in bug.runs if (check not in r.caught if check else not r.caught)]
        says = f"{check} does not catch it" if check else "no check catches it"
        problems += [f"planted bug {name!r}: {says} on {r.backend} in {r.precision} "
                     f"({r.file}: {r.error or 'caught by ' + (', '.join(r.caught) or 'nothing')})" for r in missed]
    return problems


# --- what the page was computed from ----------------------------------------------------------------
def input_files(*, root: Path = ROOT) -> list[str]:
    """The committed results the page states facts from, relative to the repository."""
    results = sorted(p.relative_to(root).as_posix() for p in (Path(root) / MUTATION_RESULTS).glob("*.json"))
    return [MATRIX, *results]


def input_hashes(*, root: Path = ROOT) -> dict[str, str]:
    """file -> sha256 of its bytes (line endings as LF, so that a checkout's conversion changes nothing)."""
    out = {}
    for rel in input_files(root=root):
        try:
            data = (Path(root) / rel).read_bytes().replace(b"\r\n", b"\n")
        except OSError as e:
            raise IdiomsError(f"{rel}: cannot read it ({e.strerror or e})") from None
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def changed_inputs(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two input_hashes, one phrase per file."""
    out = [f"{f} changed since it was generated (sha256 {then[f][:12]} then, {now[f][:12]} now)"
           for f in now if f in then and then[f] != now[f]]
    out += [f"{f} is new since it was generated" for f in now if f not in then]
    return out + [f"{f} was removed since it was generated" for f in then if f not in now]
