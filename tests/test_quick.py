"""The quick tier, `nin conformance --quick`: every installed backend recorded on the small probe
network (conformance.cases.PROBE, PROBE_CASES), fp32 and fp64, eager, and compared as the full matrix
compares. It is the case every planted bug is judged on (tests/mutations.py), so it catches what the
catalogue plants; the tests below show that end to end, with a planted bug applied inside the real
worker process (its interpreter wrapped by NIN_PYTHON_<BACKEND>, as tests/test_bad_inputs.py does)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mutations
import pytest

from conformance import cases
from harness import processes

ROOT = Path(__file__).resolve().parent.parent

# Applies $NIN_TEST_MUTANT (a name of tests/mutations.py's catalogue) to the backend's modules in
# this worker process, then runs `python -m MODULE ARGS` unchanged.
WITH_MUTANT = r"""
import os, runpy, sys
sys.path.insert(0, os.environ["NIN_TEST_TESTS"])
from mutations import CATALOGUE, Patches
from harness import processes
backend = sys.argv[sys.argv.index("--backend") + 1]
model_mod, train_mod = processes.load(backend, "model"), processes.load(backend, "train")
CATALOGUE[os.environ["NIN_TEST_MUTANT"]].apply(Patches(), model_mod, train_mod)
assert sys.argv[1] == "-m", sys.argv
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def test_the_quick_tier_runs_the_planted_bugs_case():
    assert mutations.PROBE is cases.PROBE and mutations.CASES == cases.PROBE_CASES


def _quick(tmp_path, backend: str, mutant: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp_path.mkdir(parents=True, exist_ok=True)
    if mutant:
        hook, wrapper = tmp_path / "with_mutant.py", tmp_path / "python"
        hook.write_text(WITH_MUTANT)
        wrapper.write_text(f'#!/bin/sh\nexec "{processes.python_for(backend)}" "{hook}" "$@"\n')
        wrapper.chmod(0o755)
        env.update({f"NIN_PYTHON_{backend.upper().replace('-', '_')}": str(wrapper), "NIN_TEST_MUTANT": mutant,
                    "NIN_TEST_TESTS": str(ROOT / "tests")})
    out = tmp_path / "matrix.json"
    r = subprocess.run([sys.executable, "-m", "nin", "conformance", "--quick", "--backend", backend,
                        "--precision", "fp32", "fp64", "--out-dir", str(tmp_path / "records"), "--json-out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    return r, (json.loads(out.read_text()) if out.is_file() else {})


def _failed_checks(doc: dict) -> set[str]:
    return {row["check"] for row in doc["checks"] if not row["passed"]}


@pytest.mark.main_env
def test_quick_tier_passes_and_catches_a_planted_bug(tmp_path, data_dir):
    if processes.missing_here("torch"):
        pytest.skip("torch is not installed here")
    from concurrent.futures import ThreadPoolExecutor

    entry = mutations.CATALOGUE["lr-x1.01"]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two independent runs: one per core of CI's two
        clean_run = pool.submit(_quick, tmp_path / "clean", "torch")
        mutant_run = pool.submit(_quick, tmp_path / "mutant", "torch", entry.name)
    clean, doc = clean_run.result()
    assert clean.returncode == 0 and doc and not _failed_checks(doc), clean.stdout[-3000:] + clean.stderr[-3000:]
    caught, doc = mutant_run.result()
    assert caught.returncode == 1, caught.stdout[-3000:] + caught.stderr[-3000:]
    assert set(entry.caught_by) <= _failed_checks(doc), (entry.caught_by, _failed_checks(doc))
