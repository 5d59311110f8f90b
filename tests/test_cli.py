"""The `nin` command as a whole: every option explains itself, the version, the package's declared
dependencies against what its drivers import, and the one-line answers to small mistakes."""

import argparse
import ast
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import tomllib

from nin import cli

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ("common", "harness", "conformance", "benchmarks", "training", "idioms", "nin")
FRAMEWORKS = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "mxnet"}
DISTRIBUTIONS = {"markdown_it": "markdown-it-py"}  # imports whose distribution has another name


def _options(parser: argparse.ArgumentParser, prefix: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prefix} {name}")
        elif action.option_strings:
            yield prefix, action


def test_every_option_of_every_command_has_help_text():
    bare = [f"{where} {'/'.join(a.option_strings)}" for where, a in _options(cli.parser(), "nin")
            if not a.help and a.dest != "help"]
    assert not bare, f"options without help text: {bare}"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("nin ")


def test_error_model_prints_json(capsys):
    assert cli.main(["error-model", "--variant", "paper", "--precision", "fp32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["relative_spread"]
    assert row["variant"] == "paper" and row["precision"] == "fp32" and 0 < row["logits"] < 1e-3


def test_error_model_again_without_write_is_refused_in_one_line(capsys):
    assert cli.main(["error-model", "--again"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "nin: --again: measures spreads again to store them; it needs --write"


def _third_party_imports() -> set[str]:
    found = set()
    for package in DRIVERS:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                found.update(n.split(".")[0] for n in names)
    return {n for n in found if n not in sys.stdlib_module_names and n not in DRIVERS
            and not n.startswith("nin_") and n not in FRAMEWORKS}


def test_pyproject_declares_what_the_drivers_import():
    """`pip install .` then `nin report` or `nin idioms` must not fail for a missing package."""
    declared = {d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    missing = sorted(n for n in _third_party_imports() if DISTRIBUTIONS.get(n, n).lower() not in declared)
    assert not missing, f"imported by the drivers but not in pyproject.toml's dependencies: {missing}"


def test_data_command_finds_and_verifies(data_dir, capsys):
    assert cli.main(["data", "--no-download", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert len(files) == 4 and all(Path(p).is_file() for p in files.values())


def test_data_command_offline_without_a_copy_is_one_line(tmp_path, monkeypatch):
    from common import data

    monkeypatch.setattr(data, "BESIDE_CHECKOUT", tmp_path / "beside")
    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/",))  # refused at once: offline
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["data"])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err.getvalue()
    assert "in none of" in lines[0] and "NIN_DATA_DIR" in lines[0] and str(tmp_path / "beside") in lines[0]
