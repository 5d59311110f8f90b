"""Records and their comparison: real records from every installed backend (each in its own
interpreter, as `nin conformance` makes them), then records corrupted on purpose."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import backends, conformance
from common.cli import run_record

pytestmark = pytest.mark.main_env  # records every backend through its own interpreter: run once

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "paper"  # the fastest: the float64 reference trains it in seconds


def _runnable(name: str) -> bool:
    r = subprocess.run([backends.python_for(name), "-c", f"import {backends.get(name).framework}"],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def records(tmp_path_factory, data_dir):
    """One record per backend whose interpreter has its framework."""
    out = tmp_path_factory.mktemp("records")
    made = {}
    for name in backends.BACKENDS:
        if not _runnable(name):
            continue
        path = out / f"{name}.safetensors"
        r = run_record(name, [VARIANT], "cpu", "fp32", path, quiet=True)
        assert r.returncode == 0, f"recording {name} failed:\n{r.stderr[-3000:]}"
        made[name] = path
    required = [n for n in os.environ.get("NIN_REQUIRE", "").split(",") if n]
    missing = [n for n in required if n not in made]
    assert not missing, f"NIN_REQUIRE lists {missing} but their interpreters lack the framework"
    if not made:
        pytest.skip("no backend can be recorded on this machine")
    return made


def test_every_record_passes_against_reference_and_each_other(records):
    rows = conformance.compare(list(records.values()))
    failed = [r for r in rows if not r.passed]
    assert not failed, conformance.render(rows)
    checks = {(r.check, r.backend.split("-")[0]) for r in rows if r.against == "reference"}
    for name in records:
        for check in ("logits", "loss", "gradients", "trajectory", "final_weights"):
            assert (check, name) in checks
    assert len(rows) >= len(records) * 7  # shapes, params and five numeric checks each, plus pairs


def test_record_says_what_it_tested(records):
    rec = conformance.read_record(next(iter(records.values())))
    assert rec.meta["precision"] == "fp32"
    assert rec.meta["numerics"] and rec.meta["versions"] and rec.meta["device"] == "cpu"
    assert rec.meta["variants"][VARIANT]["param_count"] == 966_986
    assert len(rec.tensors[f"{VARIANT}/trajectory"]) == conformance.Cases().steps


def _rewrite(src: Path, dst: Path, tensors=None, meta=None):
    from safetensors.numpy import save_file
    rec = conformance.read_record(src)
    t = dict(rec.tensors) if tensors is None else tensors(dict(rec.tensors))
    m = dict(rec.meta) if meta is None else meta(json.loads(json.dumps(rec.meta)))
    save_file(t, str(dst), metadata={"record": json.dumps(m)})
    return dst


def _failures(paths):
    rows = conformance.compare(paths)
    return [r for r in rows if not r.passed]


def test_changed_weight_fails_naming_check_and_backend(records, tmp_path):
    name, src = next(iter(records.items()))

    def bump(t):
        key = f"{VARIANT}/final/block1.conv0.weight"
        t[key] = t[key].copy()
        t[key][0, 0, 0, 0] += 0.5
        return t

    failed = _failures([_rewrite(src, tmp_path / "bad.safetensors", tensors=bump)])
    assert any(r.check == "final_weights" and r.backend.startswith(name) and "block1.conv0.weight" in r.detail
               for r in failed), failed


def test_wrong_shape_fails(records, tmp_path):
    src = next(iter(records.values()))

    def shrink(t):
        t[f"{VARIANT}/logits"] = t[f"{VARIANT}/logits"][:, :9].copy()
        return t

    def bad_shape(m):
        m["variants"][VARIANT]["layer_shapes"][0] = [95, 32, 32]
        return m

    failed = _failures([_rewrite(src, tmp_path / "bad.safetensors", tensors=shrink, meta=bad_shape)])
    assert {"logits", "shapes"} <= {r.check for r in failed}
    assert any("layer 0: [95, 32, 32]" in r.detail for r in failed)


def test_missing_field_and_truncated_file_fail_without_crashing(records, tmp_path):
    src = next(iter(records.values()))

    def drop(m):
        del m["versions"]
        return m

    no_versions = _rewrite(src, tmp_path / "noversions.safetensors", meta=drop)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])

    def no_grads(t):
        return {k: v for k, v in t.items() if "/grad/" not in k}

    gradless = _rewrite(src, tmp_path / "gradless.safetensors", tensors=no_grads)
    failed = _failures([no_versions, truncated, gradless, src])
    text = "\n".join(f"{r.check} {r.backend} {r.detail}" for r in failed)
    assert "missing field(s) ['versions']" in text
    assert "truncated.safetensors" in text and "truncated or not safetensors" in text
    assert any(r.check == "gradients" and "missing" in r.detail for r in failed)


def test_nin_compare_exit_status_and_json(records, tmp_path):
    paths = [str(p) for p in records.values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "common.cli", "compare", *paths, "--json"],
                        capture_output=True, text=True, cwd=ROOT, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a record")
    bad = subprocess.run([sys.executable, "-m", "common.cli", "compare", *paths, str(broken)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "broken.safetensors" in bad.stdout and "Traceback" not in bad.stderr


def test_records_compare_the_same_from_another_environment(records):
    """Records are portable: the MXNet environment (numpy 1.23, another interpreter) reads records
    written under numpy 2 by other frameworks and reaches the same verdicts."""
    other = backends.python_for("mxnet")
    if Path(other).absolute() == Path(sys.executable).absolute():  # venvs share one real binary: no resolve()
        pytest.skip("no second environment here (.venv-mxnet is built by `make setup`)")
    paths = [str(p) for p in records.values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    there = subprocess.run([other, "-m", "common.cli", "compare", *paths, "--json"],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert there.returncode == 0, there.stderr[-2000:]
    here = conformance.to_json(conformance.compare(paths))
    theirs = json.loads(there.stdout)
    assert [(c["check"], c["backend"], c["against"], c["passed"]) for c in theirs["checks"]] == \
           [(c["check"], c["backend"], c["against"], c["passed"]) for c in here["checks"]]
    for a, b in zip(theirs["checks"], here["checks"]):
        if a["measured"] is not None:
            assert a["measured"] == pytest.approx(b["measured"], rel=1e-6, abs=1e-12)
