"""The matrix's scheduled case and its cross-framework resume case (docs/conformance.md), and the
dropout check's independence test. Every backend's loop is held to the float64 reference by
tests/test_backends.py (its CHECKS include the scheduled ones); these tests hold the plumbing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conformance import cases as case_lib
from conformance.cases import PROBE_CASES, Cases, resumed_view, scheduled_lrs, scheduled_steps
from conformance.compare import bounds_for
from conformance.tolerances import CHECKS, judge_dropout
from harness import processes


def test_the_scheduled_table_warms_up_then_decays_to_zero():
    lrs = scheduled_lrs(Cases())
    assert len(lrs) == Cases().scheduled_epochs * scheduled_steps(Cases()) == 6
    assert lrs[0] == pytest.approx(Cases().lr / 2) and lrs[1] == pytest.approx(Cases().lr)
    assert lrs[2] == lrs[1] and np.all(np.diff(lrs[2:]) < 0) and lrs[-1] > 0  # then cosine toward 0


def test_the_resumed_view_is_the_run_after_its_midpoint():
    cases = PROBE_CASES
    steps = scheduled_steps(cases)
    values = {"scheduled/trajectory": np.arange(2 * steps, dtype=float), "scheduled/eval": np.array([1.0, 2.0]),
              "scheduled/final/w": np.ones(3), "scheduled/checkpoint/step": np.array([3.0]), "logits": np.ones(2)}
    view = resumed_view(values, cases)
    assert sorted(view) == ["resumed/eval", "resumed/final/w", "resumed/trajectory"]
    assert list(view["resumed/trajectory"]) == list(range(steps, 2 * steps))
    assert list(view["resumed/eval"]) == [2.0]


def test_every_scheduled_quantity_has_a_bound(data_dir):
    """The error model measures every scheduled quantity, and resumed_view applies to the bounds too."""
    from conformance import errormodel
    ref = case_lib.reference_results(case_lib.PROBE, PROBE_CASES, data_dir)
    bounds = bounds_for(ref, errormodel.spreads(case_lib.PROBE, PROBE_CASES, "fp64", data_dir), "fp64")
    scheduled = [k for k in ref if k.startswith("scheduled/")]
    assert len(scheduled) > 4 and all(k in bounds for k in scheduled)
    resumed_ref, resumed_bounds = resumed_view(ref, PROBE_CASES), resumed_view(bounds, PROBE_CASES)
    for key in ("resumed/trajectory", "resumed/eval"):
        assert np.size(resumed_bounds[key]) == np.size(resumed_ref[key]) > 0
    assert {c for c in CHECKS if c.startswith(("scheduled", "resumed"))} == {
        f"{p}_{q}" for p in ("scheduled", "resumed") for q in ("trajectory", "evaluation", "final_weights",
                                                                 "running_statistics")}


def test_the_scheduled_spread_is_the_largest_over_all_its_copies(tmp_path, monkeypatch):
    """The scheduled case's further copies are an entry of their own; a spread is the larger of the two
    entries', the other cases' spreads are the first entry's alone."""
    from conformance import errormodel
    spec, cases = case_lib.PROBE, PROBE_CASES
    first = {"logits": [1.0, 1.0], "scheduled/trajectory": [1.0, 5.0], "scheduled/final/w": [2.0]}
    further = {"scheduled/trajectory": [3.0, 4.0], "scheduled/final/w": [1.0]}
    store = tmp_path / "store.json"
    errormodel.store({errormodel.key(spec, cases, "fp32"): {"spreads": first},
                      errormodel.scheduled_key(spec, cases, "fp32"): {"spreads": further}}, store)
    monkeypatch.setattr(errormodel, "STORE", store)
    assert errormodel.is_stored(spec, cases, "fp32") and not errormodel.is_stored(spec, cases, "fp64")
    got = errormodel.spreads(spec, cases, "fp32")
    assert {k: v.tolist() for k, v in got.items()} == {
        "logits": [1.0, 1.0], "scheduled/trajectory": [3.0, 5.0], "scheduled/final/w": [2.0]}


def test_every_variant_s_spreads_are_stored():
    """`make conformance` and the tests never measure an error model on a user's machine: every named
    variant's fp32 and fp64 spreads, and the quick tier's, are in conformance/error_model.json,
    the scheduled run's further copies included (errormodel.SCHEDULED_MEMBERS)."""
    from common import spec as specs
    from conformance import errormodel
    missing = [(name, p) for name in specs.VARIANTS for p in ("fp32", "fp64")
               if not errormodel.is_stored(specs.get(name), Cases(), p)]
    missing += [("quick", p) for p in ("fp32", "fp64") if not errormodel.is_stored(case_lib.PROBE, PROBE_CASES, p)]
    assert missing == [], "measure them: nin error-model --variant NAME --write"


def _independent(rng, shape, rate):
    return (rng.random(shape) >= rate) / (1 - rate)


def test_dropout_check_wants_masks_independent_per_activation():
    rng = np.random.default_rng(0)
    shape, rate = case_lib.DROPOUT_PROBE, 0.75
    ones = np.ones(shape)
    assert judge_dropout(rate, _independent(rng, shape, rate), ones, "fp32").passed
    shared = np.repeat(_independent(rng, (1, shape[1]), rate), shape[0], axis=0)  # one mask for the whole batch
    v = judge_dropout(rate, shared, ones, "fp32")
    assert not v.passed and "neighbouring examples" in v.detail
    blocks = np.repeat(_independent(rng, (shape[0], shape[1] // 8), rate), 8, axis=1)  # a mask per block of 8
    v = judge_dropout(rate, blocks, ones, "fp32")
    assert not v.passed and "neighbouring units" in v.detail


def test_a_backend_resumes_a_checkpoint_in_the_matrix(tmp_path, data_dir):
    """nin conformance --quick records, then resumes the record's midpoint checkpoint in a fresh
    process (a lone backend resumes its own), and the resume rows pass against the reference."""
    if processes.missing_here("torch"):
        pytest.skip("torch is not installed here")
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "nin.cli", "conformance", "--quick", "--backend", "torch",
                        "--precision", "fp64", "--out-dir", str(tmp_path), "--json-out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "resume" / "torch-to-torch-cpu-fp64.safetensors").is_file()
    rows = [row for row in json.loads(out.read_text())["checks"] if row["check"].startswith("resumed_")]
    assert len(rows) == 4 and all(row["passed"] for row in rows), rows
    assert all(row["backend"].startswith("torch->torch") for row in rows)
