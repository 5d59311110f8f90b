"""Size as a habit: no Python file of the repository over MAX_FILE lines, no function over MAX_FUNCTION
(from its `def` to its last line, by AST), tests included. Generated pages (docs/*.html, records/*.md) are
not Python, so not counted. The exceptions are named here, in EXCEPTIONS and nowhere else, each with its
reason; an exception that no longer exceeds fails too, so that the list only shrinks."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE, MAX_FUNCTION = 400, 60
SKIPPED_PARTS = ("build", "node_modules", "nin_suite.egg-info")  # and every hidden folder (.venv, .git, ...)
# "path" for a file, "path:function" for a function (nested ones by their own name): the reason it is allowed.
EXCEPTIONS = {
    # tables of the tests: one entry per case, read as a list
    "tests/mutations.py": "the catalogue of planted bugs, one patch per framework and bug: a table",
    "tests/test_bad_inputs.py": "one test per bad input of every command; to be split by command (lead)",
    "tests/test_reliability.py": "interruptions, time-outs and resumes of every driver; to be split by driver (lead)",
    # one module each, read top to bottom; each is a candidate to split next
    "common/spec.py": "the spec's layer types, their validation, the JSON form and the named variants: one vocabulary",
    "common/reference.py:forward": "the float64 oracle's forward, one branch per layer kind, with its gradients' cache",
    "conformance/compare.py:compare": "every check of a record against the reference and its peers, in one pass",
    "training/cli.py": "nin train, sweep, report, plot and lr-find in one module",
    "training/report.py": "the agreement report: TOST, Holm, the power calculation and the tables",
    "training/plots.py:plot_runs": "the d2l-style curves: one figure, every panel",
    "training/plots.py:plot_lr_find": "the range test's plot with its annotations",
    "training/worker.py:train": "the training loop's driver side: data order, checkpoints, divergence, metrics",
}


def python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in SKIPPED_PARTS for part in p.relative_to(ROOT).parts))


def oversized() -> dict[str, int]:
    """"path" or "path:function" -> its lines, for each file over MAX_FILE and function over MAX_FUNCTION."""
    out = {}
    for path in python_files():
        rel, text = path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE:
            out[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION:
                    out[f"{rel}:{node.name}"] = max(length, out.get(f"{rel}:{node.name}", 0))
    return out


def test_no_file_or_function_is_too_long_without_a_named_reason():
    found = oversized()
    new = {k: v for k, v in found.items() if k not in EXCEPTIONS}
    assert not new, (f"over {MAX_FILE} lines a file or {MAX_FUNCTION} a function: {new}; split it, or name it with "
                     "its reason in tests/test_size.py EXCEPTIONS")


def test_every_exception_still_exceeds():
    stale = sorted(set(EXCEPTIONS) - set(oversized()))
    assert not stale, f"no longer too long: {stale}; remove them from tests/test_size.py EXCEPTIONS"


def test_the_measure_counts_a_long_function(tmp_path, monkeypatch):
    """The test above can fail: a function of MAX_FUNCTION + 1 lines in a file of the repository is found."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text(f"def long():\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert oversized() == {"pkg/long.py:long": MAX_FUNCTION + 1}
