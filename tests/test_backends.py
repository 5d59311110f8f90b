"""Every backend against the spec and the float64 reference: ids read [backend-variant-device].

The numeric tests compute the conformance matrix's own cases in this process
(conformance.record.compute_variant) and judge them with the matrix's own function
(conformance.compare.check_values, the bounds of conformance.tolerances): one error model for the tests
and the matrix (tests/test_conformance.py holds the two equal). A backend whose framework is absent
here skips with the reason (fails under NIN_REQUIRE).
"""

import numpy as np
import pytest

from common import calc, reference, weights
from common.spec import Dropout, Flatten, GlobalAvgPool, NetSpec, NiNBlock
from common.weights import WeightsError
from conformance import errormodel
from conformance.cases import Cases, reference_results, training_batches
from conformance.compare import as_updates, bounds_for, check_values, for_convention, reference_as_seen
from conformance.record import compute_variant
from conformance.tolerances import CHECKS, bound, judge
from harness import processes

CASES = Cases()


@pytest.fixture(scope="module")
def built(bk, spec, canonical_weights, device):
    model_mod, _ = bk
    model = model_mod.build(spec, device=device)
    model_mod.load_weights(model, canonical_weights)
    return model


@pytest.fixture(scope="module")
def computed(bk, backend, spec, device, data_dir):
    """What the backend computes for every case of the matrix, in fp32, eager: (tensors, info)."""
    model_mod, train_mod = bk
    loop_mod = processes.load(backend, "loop")
    return compute_variant(model_mod, train_mod, loop_mod, spec, cases=CASES,
                           data=training_batches(spec, CASES, data_dir), device=device, precision="fp32",
                           compile="eager")


@pytest.fixture(scope="module")
def verdicts(bk, computed, spec, data_dir):
    """Judged as the matrix judges a record (conformance.compare): the same reference, the same bounds."""
    model_mod, _ = bk
    values, _ = computed
    init = weights.init(spec, CASES.init_seed)
    ref = reference_as_seen(spec, CASES, init, hyperparameters=model_mod.HYPERPARAMETERS,
                            running_variance=model_mod.RUNNING_VARIANCE, data_dir=data_dir)
    exact = as_updates(reference_results(spec, CASES, data_dir), init)  # bounds: from the exact reference
    bounds = for_convention(bounds_for(exact, errormodel.spreads(spec, CASES, "fp32", data_dir), "fp32"),
                            model_mod.RUNNING_VARIANCE)
    rows = check_values(spec.name, "test", "reference", values=as_updates(values, init), reference=ref, bounds=bounds,
                        precision="fp32")
    return {r.check: r for r in rows}


# Open defects, measured and not yet fixed: (backend, variant, check) -> what was seen. The test still
# runs and reports its ratio; the fix is to find the cause, never to widen a bound. None is open: the
# last (d2l-linear-head's fp32 scheduled run, 2.6x on a Zen 2) was the error model's, whose 8 copies had
# missed the run's far clusters (results/findings/2026-12-06-scheduled-clusters.md).
KNOWN: dict[tuple[str, str, str], str] = {}


@pytest.mark.parametrize("check", [c for c in CHECKS if not c.startswith("resumed_")])  # resume records only
def test_matches_reference(verdicts, backend, check, spec, request):
    """logits, loss, gradients, both training runs, running statistics, dropout: within the error
    model's bound of float64 (dropout: of its rate)."""
    if check not in verdicts:
        missing = {"running_statistics": "batch norm", "dropout": "dropout"}.get(check, check)
        pytest.skip(f"{spec.name} has no {missing}: nothing to check")
    if (backend, spec.name, check) in KNOWN:
        request.applymarker(pytest.mark.xfail(reason="open defect: " + KNOWN[backend, spec.name, check]))
    row = verdicts[check]
    assert row.passed, f"{check}: {row.measured}, {row.ratio:.3g} x its bound ({row.detail})"


def test_layer_shapes_match_spec(computed, spec):
    _, info = computed
    assert info["layer_shapes"] == [list(s) for s in calc.layer_output_shapes(spec)]


def test_parameter_count_matches_spec(bk, built, spec):
    model_mod, _ = bk
    exported = model_mod.export_weights(built)
    trainable = sum(v.size for k, v in exported.items() if calc.is_trainable(k))
    assert trainable == calc.param_count(spec)
    assert {k: v.shape for k, v in exported.items()} == calc.param_shapes(spec)


def test_weights_round_trip(bk, built, canonical_weights):
    model_mod, _ = bk
    out = model_mod.export_weights(built)
    for name, w in canonical_weights.items():
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], w, err_msg=name)


def test_load_weights_names_the_bad_tensor(bk, built, canonical_weights):
    model_mod, _ = bk
    bad = dict(canonical_weights)
    bad["block0.conv0.weight"] = bad["block0.conv0.weight"][:, :, :-1]
    with pytest.raises(WeightsError, match="block0.conv0.weight"):
        model_mod.load_weights(built, bad)
    missing = {k: v for k, v in canonical_weights.items() if k != "block1.conv1.weight"}
    with pytest.raises(WeightsError, match="block1.conv1.weight"):
        model_mod.load_weights(built, missing)


DROP_RATE = 0.5
DROPOUT_ONLY = NetSpec("dropout-probe", (4096, 1, 1), 4096, (Dropout(DROP_RATE), GlobalAvgPool(), Flatten()))


def test_dropout_acts_in_training_only(bk, device):
    """Training mode zeroes about p of the units and scales the rest by 1/(1-p); evaluation is identity."""
    model_mod, _ = bk
    model = model_mod.build(DROPOUT_ONLY, device=device)
    x = np.ones((8, 4096, 1, 1), dtype=np.float32)
    out_eval = model_mod.forward(model, x, training=False)
    np.testing.assert_array_equal(out_eval, 1.0)
    out_train = model_mod.forward(model, x, training=True, seed=1)
    dropped = float(np.mean(out_train == 0))
    assert abs(dropped - DROP_RATE) < 0.02, f"dropped fraction {dropped:.3f}, expected {DROP_RATE}"
    kept = out_train[out_train != 0]
    np.testing.assert_allclose(kept, 1 / (1 - DROP_RATE), rtol=1e-6)
    again = model_mod.forward(model, x, training=True, seed=2)
    assert not np.array_equal(again, out_train), "the dropout mask does not change with the seed"


def test_json_spec_builds_and_matches_reference(bk, device, tmp_path):
    """A spec no variant has (stride 2, odd sizes, padded pool, BN in one block only) from a JSON file."""
    from common.spec import MaxPool
    s = NetSpec("json-probe", (3, 19, 17), 7, (
        NiNBlock(6, kernel_size=3, stride=2, padding=1, mlp=(5,)), MaxPool(3, 2, 1),
        NiNBlock(8, kernel_size=2, stride=1, padding=0, mlp=(), batch_norm=True),
        Dropout(0.3), NiNBlock(7, kernel_size=1, stride=1, padding=0, mlp=(7,), relu_last=False),
        GlobalAvgPool(), Flatten()))
    path = tmp_path / "probe.json"
    path.write_text(s.to_json())
    loaded = NetSpec.from_json_file(path)
    assert loaded == s
    model_mod, _ = bk
    model = model_mod.build(loaded, device=device)
    w = weights.random_weights(loaded, seed=4)
    model_mod.load_weights(model, w)
    x = np.random.default_rng(9).random((3,) + loaded.input_shape, dtype=np.float32)
    assert model_mod.layer_shapes(model, x) == [tuple(t) for t in calc.layer_output_shapes(loaded)]
    got, ref = model_mod.forward(model, x), reference.forward(loaded, w, x)
    # no stored spread for this spec: the floor alone (16 units of float32 roundoff) plus a spread
    # of 1e-6, generous for three layers
    bounds = bound("logits", ref, np.full(ref.size, 1e-6), "fp32")
    verdict = judge("logits", got, ref, bounds)
    assert verdict.passed, verdict
