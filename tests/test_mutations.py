"""Planted bugs: every mutant of tests/mutations.py is caught by the conformance checks. Ids read
[backend-mutant-device].

Each test applies one mutant to the backend's loaded modules with monkeypatch (undone after the
test), computes every case of the matrix on the reduced case (mutations.PROBE, mutations.CASES) with
conformance.record.compute_variant, judges it with the matrix's own functions, and asserts that the
checks the catalogue names fail. The unmutated backend must pass the same case first (the control:
without it, a failing mutant would prove nothing). `python -m tests.mutations` writes the
same runs, in fp32 and fp64, as docs/mutations.md.
"""

import mutations
import numpy as np
import pytest
from mutations import CATALOGUE, CONVERSION, MODEL, TRAINING

from common import backends

_controls: dict = {}


def control(bk, backend, device, data_dir, precision: str = "fp32") -> dict:
    """check -> ratio of the unmutated backend's failed checks on the reduced case (once per backend and precision)."""
    if (backend, device, precision) not in _controls:
        model_mod, train_mod = bk
        with mutations.configured(train_mod, precision, device):
            _controls[backend, device, precision] = mutations.judge(model_mod, train_mod, precision=precision,
                                                                    device=device, data_dir=data_dir, label="control")
    return mutations.failures(_controls[backend, device, precision])


def _shown(failed: dict) -> str:
    return ", ".join(f"{c} {r:.2g}x" for c, r in sorted(failed.items(), key=lambda kv: -np.nan_to_num(kv[1], posinf=1e300)))


def test_unmutated_backend_passes(bk, backend, device, data_dir):
    failed = control(bk, backend, device, data_dir)
    assert not failed, f"the unmutated {backend} fails the reduced case: {_shown(failed)}"


def test_mutant_is_caught(bk, backend, mutant, device, data_dir, monkeypatch):
    entry = CATALOGUE[mutant]
    failed = control(bk, backend, device, data_dir, entry.precision)
    assert not failed, f"the unmutated {backend} fails the reduced case ({_shown(failed)}): a mutant proves nothing"
    model_mod, train_mod = bk
    with mutations.configured(train_mod, entry.precision, device):  # first: configure may rebuild what a mutant patches
        entry.apply(monkeypatch, model_mod, train_mod)
        failed = mutations.failures(mutations.judge(model_mod, train_mod, precision=entry.precision, device=device,
                                                    data_dir=data_dir))
    assert failed, f"{mutant} ({entry.what}) is not caught on {backend}: every check passes"
    missing = [c for c in entry.caught_by if c not in failed]
    if entry.precision == "fp64" and "all" in train_mod.float64_limits():
        # caught_by is what a float64 run shows. Keras on JAX/PyTorch computes its fp64 mode in float32 and
        # the matrix holds it to fp32 bounds, where some of these errors are below the bound: one must fail
        assert len(missing) < len(entry.caught_by), (
            f"{mutant} on {backend} (fp64 held to fp32 bounds): none of {list(entry.caught_by)} catches it; "
            f"failed: {_shown(failed)}")
        return
    assert not missing, f"{mutant} on {backend}: {missing} should catch it but pass; failed: {_shown(failed)}"


# --- the catalogue itself: no framework needed ----------------------------------------------
def test_catalogue_spreads_over_backends_and_layers():
    assert len(CATALOGUE) >= 20
    for name in backends.BACKENDS:
        mine = [CATALOGUE[m] for m in mutations.for_backend(name)]
        assert len(mine) >= 5, f"{name} has {len(mine)} mutants"
        assert "lr-x1.01" in mutations.for_backend(name), f"{name}: a 1% learning-rate error must stay caught"
        assert {m.breaks for m in mine} == {MODEL, CONVERSION, TRAINING}, f"{name}: {[m.name for m in mine]}"
    assert all(b in backends.BACKENDS for m in CATALOGUE.values() for b in m.backends)


def test_lr_error_is_held_to_the_final_weights_check():
    assert "final_weights" in CATALOGUE["lr-x1.01"].caught_by


def test_patches_undo_what_they_set():
    class Target:
        kept = 1

    patches = mutations.Patches()
    patches.setattr(Target, "kept", 2)
    patches.setattr(Target, "added", 3)
    patches.setattr(mutations, "PROBE", None)
    assert (Target.kept, Target.added, mutations.PROBE) == (2, 3, None)
    patches.undo()
    assert Target.kept == 1 and not hasattr(Target, "added") and mutations.PROBE is not None


@pytest.mark.parametrize("rows, control_rows, caught", [
    ([("logits", 5.0)], [], True),
    ([("logits", 5.0)], [("logits", 2.0)], False),  # the control fails it too: proves nothing
    ([("logits", 5e6)], [("logits", 2.0)], True),  # ... unless the mutant is far worse than the control
    ([("logits", 0.5)], [], False),
])
def test_report_counts_a_mutant_caught_only_beyond_its_control(rows, control_rows, caught):
    def entry(pairs):
        return {"rows": [{"check": c, "ratio": r, "passed": r <= 1} for c, r in pairs]}
    assert mutations.verdict(entry(rows), entry(control_rows))[0] is caught
