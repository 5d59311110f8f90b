"""Records and their comparison: real records from every installed backend (each in its own
interpreter, as `nin conformance` makes them), then records damaged on purpose."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import backends, weights
from conformance import compare, errormodel, matrix
from conformance.cases import Cases, reference_results, training_batches
from conformance.compare import as_updates, bounds_for, check_values, for_convention, reference_as_seen
from conformance.record import compute_variant
from conformance.records import read_record
from conformance.sweep import run_record
from conformance.tolerances import CHECKS
from harness import processes

pytestmark = pytest.mark.main_env  # records every backend through its own interpreter: run once

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "paper"  # the fastest: the float64 reference trains it in seconds


RECORDS_AT_ONCE = 2  # CI's cores: a record spends much of its time starting its interpreter and framework


def _record_every_backend(out: Path, precision: str, suffix: str = "") -> dict[str, Path]:
    """backend -> its record of VARIANT (eager, on the CPU), for every backend whose interpreter has its
    framework; the records are made two at a time, each in its own worker process."""
    from concurrent.futures import ThreadPoolExecutor

    names = [name for name in backends.BACKENDS if _runnable(name)]
    paths = {name: out / f"{name}{suffix}.safetensors" for name in names}
    with ThreadPoolExecutor(max_workers=RECORDS_AT_ONCE) as pool:
        done = {name: pool.submit(run_record, name, [VARIANT], device="cpu", precision=precision, compile="eager",
                                  out=paths[name], quiet=True) for name in names}
    for name, future in done.items():
        r = future.result()
        assert r.returncode == 0, f"recording {name} in {precision} failed:\n{r.stderr[-3000:]}"
    return paths


def _runnable(name: str) -> bool:
    modules = ", ".join(backends.get(name).requires)
    r = subprocess.run([processes.python_for(name), "-c", f"import {modules}"],
                       capture_output=True, env=processes.environment_for(name))
    return r.returncode == 0


@pytest.fixture(scope="module")
def records(tmp_path_factory, data_dir):
    """One fp32 eager record per backend whose interpreter has its framework."""
    made = _record_every_backend(tmp_path_factory.mktemp("records"), "fp32")
    required = [n for n in os.environ.get("NIN_REQUIRE", "").split(",") if n in backends.BACKENDS]  # not `data`
    missing = [n for n in required if n not in made]
    assert not missing, f"NIN_REQUIRE lists {missing} but their interpreters lack the framework"
    if not made:
        pytest.skip("no backend can be recorded on this machine")
    return made


def test_every_record_passes_against_reference_and_each_other(records):
    result = compare.compare(list(records.values()))
    assert result.passed, matrix.render(result)
    checks = {(r.check, r.backend.split("/")[0]) for r in result.rows if r.against == "reference"}
    for name in records:
        for check in ("logits", "loss", "gradients", "trajectory", "final_weights", "momentum_trajectory",
                      "momentum_final_weights"):
            assert (check, name) in checks
    pairs = len(records) * (len(records) - 1) // 2
    # against the reference: each value check whose tensors the record holds, plus dropout's statistics;
    # a pair: the value checks only (their masks differ). paper has no batch norm: no running statistics
    keys = [k.split("/", 1)[1] for k in read_record(next(iter(records.values()))).tensors if k.startswith(VARIANT)]
    held = [c for c, p in CHECKS.items() if c != "dropout" and any(k.startswith(p) if p.endswith("/") else k == p
                                                                    for k in keys)]
    assert "scheduled_trajectory" in held and "running_statistics" not in held
    assert result.numeric_checks == (len(held) + 1) * len(records) + len(held) * pairs


def test_record_says_what_it_tested(records):
    rec = read_record(next(iter(records.values())))
    assert rec.meta["precision"] == "fp32" and rec.meta["compile"] == "eager"
    assert rec.meta["numerics"] and rec.meta["versions"] and rec.meta["device"] == "cpu"
    assert rec.meta["variants"][VARIANT]["param_count"] == 966_986
    assert len(rec.tensors[f"{VARIANT}/trajectory"]) == Cases().steps


def test_tests_and_matrix_judge_alike(records, data_dir):
    """The backend tests' in-process verdicts and the matrix's verdicts on the record are the same
    numbers: one error model, called the same way (tests/test_backends.py uses check_values too)."""
    name = "torch" if "torch" in records else next(iter(records))
    if processes.missing_here(name):
        pytest.skip(f"{name} does not run in this interpreter")
    model_mod, train_mod = processes.load(name, "model"), processes.load(name, "train")
    train_mod.configure("cpu", "fp32")
    spec, cases = read_record(records[name]).specs[VARIANT], Cases()
    values, _ = compute_variant(model_mod, train_mod, processes.load(name, "loop"), spec, cases=cases,
                                data=training_batches(spec, cases, data_dir), device="cpu", precision="fp32",
                                compile="eager")
    init = weights.init(spec, cases.init_seed)
    ref = reference_as_seen(spec, cases, init, hyperparameters=model_mod.HYPERPARAMETERS,
                            running_variance=model_mod.RUNNING_VARIANCE, data_dir=data_dir)
    exact = as_updates(reference_results(spec, cases, data_dir), init)  # bounds: from the exact reference
    bounds = for_convention(bounds_for(exact, errormodel.spreads(spec, cases, "fp32"), "fp32"),
                            model_mod.RUNNING_VARIANCE)  # the evaluation's bound follows the running variance's
    here = check_values(VARIANT, name, "reference", values=as_updates(values, init), reference=ref, bounds=bounds,
                        precision="fp32")
    there = [r for r in compare.compare([records[name]]).rows if r.against == "reference"]
    assert [r.check for r in here] == [r.check for r in there]
    assert [r.ratio for r in here] == pytest.approx([r.ratio for r in there])


def _rewrite(src: Path, dst: Path, tensors=None, meta=None):
    from safetensors.numpy import save_file
    rec = read_record(src)
    t = dict(rec.tensors) if tensors is None else tensors(dict(rec.tensors))
    m = dict(rec.meta) if meta is None else meta(json.loads(json.dumps(rec.meta)))
    save_file(t, str(dst), metadata={"record": json.dumps(m)})
    return dst


def _failures(paths):
    return [r for r in compare.compare(paths).rows if not r.passed]


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

    def bad_shape(m):
        m["variants"][VARIANT]["layer_shapes"][0] = [95, 32, 32]
        return m

    failed = _failures([_rewrite(src, tmp_path / "bad.safetensors", meta=bad_shape)])
    assert any(r.check == "shapes" and "layer 0: [95, 32, 32]" in r.detail for r in failed), failed

    def shrink(t):
        t[f"{VARIANT}/logits"] = t[f"{VARIANT}/logits"][:, :9].copy()
        return t

    failed = _failures([_rewrite(src, tmp_path / "bad2.safetensors", tensors=shrink)])
    assert any(r.check == "record" and f"{VARIANT}/logits has shape (4, 9)" in r.detail for r in failed), failed


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
    assert "gradless.safetensors: missing tensor(s) ['paper/grad/" in text


def test_nin_compare_exit_status_and_json(records, tmp_path):
    paths = [str(p) for p in records.values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "nin", "compare", *paths, "--json"],
                        capture_output=True, text=True, cwd=ROOT, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a record")
    bad = subprocess.run([sys.executable, "-m", "nin", "compare", *paths, str(broken)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "broken.safetensors" in bad.stdout and "Traceback" not in bad.stderr


def test_records_compare_the_same_from_another_environment(records):
    """Records are portable: the MXNet environment (numpy 1.23, another interpreter) reads records
    written under numpy 2 by other frameworks and reaches the same verdicts."""
    other = processes.python_for("mxnet")
    if Path(other).absolute() == Path(sys.executable).absolute():  # venvs share one real binary: no resolve()
        pytest.skip("no second environment here (.venv-mxnet is built by `make setup`)")
    paths = [str(p) for p in records.values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    there = subprocess.run([other, "-m", "nin", "compare", *paths, "--json"],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert there.returncode == 0, there.stderr[-2000:]
    here = matrix.to_json(compare.compare(paths))
    theirs = json.loads(there.stdout)
    assert [(c["check"], c["backend"], c["against"], c["passed"]) for c in theirs["checks"]] == \
           [(c["check"], c["backend"], c["against"], c["passed"]) for c in here["checks"]]
    for a, b in zip(theirs["checks"], here["checks"]):
        if a["measured"] is not None:
            assert a["measured"] == pytest.approx(b["measured"], rel=1e-6, abs=1e-12)


def test_fp64_records_meet_the_reference_at_float64_resolution(tmp_path, data_dir):
    """Every backend in float64: the paper variant's checks at float64's own bounds."""
    made = list(_record_every_backend(tmp_path, "fp64", "-fp64").values())
    result = compare.compare(made)
    assert result.passed, matrix.render(result)
    # a backend that declares what it computes below float64 (Keras on JAX and PyTorch) is held to
    # fp32 bounds, and says so; every other one meets float64 itself
    limited = {p.stem.removesuffix("-fp64") for p in made if read_record(p).meta.get("float64_limits")}
    logits = [r for r in result.rows if r.check == "logits" and r.against == "reference"]
    assert logits and all(r.measured < 1e-12 for r in logits if r.backend.split("/")[0] not in limited), \
        [(r.backend, r.measured) for r in logits]
    assert all("fp32 bound" in r.detail for r in logits if r.backend.split("/")[0] in limited)
    assert all(str(read_record(p).tensors[f"{VARIANT}/logits"].dtype) == "float64" for p in made)


def test_a_record_of_nothing_or_of_the_wrong_precision_cannot_pass(records, tmp_path):
    src = next(iter(records.values()))

    def empty(m):
        m["variants"] = {}
        return m

    def nan(t):
        return {k: np.full_like(v, np.nan) for k, v in t.items()}

    failed = _failures([_rewrite(src, tmp_path / "empty.safetensors", meta=empty, tensors=nan)])
    assert any("variants is empty" in r.detail for r in failed)
    for value in (None, "FP32", "fast16"):
        def precision(m, value=value):
            m["precision"] = value
            return m
        failed = _failures([_rewrite(src, tmp_path / "p.safetensors", meta=precision)])
        assert failed and all(r.check == "record" for r in failed) and "precision" in failed[0].detail

    def half(t):
        return {k: v.astype(np.float16) for k, v in t.items()}

    failed = _failures([_rewrite(src, tmp_path / "half.safetensors", tensors=half)])
    assert any("is float16; a fp32 record holds float32" in r.detail for r in failed)
    assert any("given twice" in r.detail for r in _failures([src, src]))
