"""How close is close enough, per check, with the reason; and the one error measure each check uses.

Measured on CPU, float32 frameworks against the float64 NumPy reference (see docs/conformance.md):
* logits: float32 rounding alone, about 3e-8 absolute on the chapter's net; the issue's
  rtol 1e-4, atol 1e-5 leaves two orders of magnitude.
* gradients: float32 rounding is ~1e-6 relative, but a pre-activation that float64 puts a hair
  above zero can land a hair below it in float32; the ReLU or max-pool then routes that element's
  gradient elsewhere. On the 224x224 networks this moves the first block's gradients by up to
  2e-3 of their norm (measured, batch 2). Hence a norm-relative 1e-2 per tensor, plus an
  absolute floor of 1e-5 per element (RMS) for tensors whose exact gradient is zero (the conv
  bias before batch norm, which float32 leaves at ~1e-7).
* trajectory: 20 SGD steps amplify those differences; losses agree to ~1e-5 relative in
  practice, the bound is 1e-3 relative.
* final weights are compared as the update training made (final - init): the same kink flips
  move the first block's small bias updates by up to ~1e-2 of their norm (measured on paper, 20
  steps); the bound is 3e-2 of the update's norm plus the 1e-5 RMS floor.
* conditioning: some training runs are chaotic in float32 whoever computes them. On d2l-bn
  (batch norm at batch 4 on raw images) NumPy's own float32 reference leaves its float64 run
  by 8e-3 in the loss after ONE step (the first block's batch-norm gradients differ by 2.5%).
  So the gradient, trajectory and final-weights bounds of every case get a slack of
  CONDITIONING_FACTOR x the float32 reference's own spread from float64: nothing on
  well-conditioned cases (spread ~1e-6), and an honest, stated bound where no float32 code can
  do better. Measured on d2l-bn's gradient case: NumPy float32 is 0.6% off float64, MXNet 1.15%
  (its BatchNorm loses more float32 digits than the others: 3e-5 relative in its output against
  7e-7 for PyTorch), PyTorch 0.08%, JAX 0.05%.
* `fast` precision (TF32 / bf16) rounds inputs of every matmul to 10 (or 8) bits of mantissa:
  logits within ~1e-2 relative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    measure: str  # "allclose": max |a - b| - rtol |b| <= atol;  "norm": ||a - b|| <= rtol ||b|| + atol sqrt(n)
    why: str


TOLERANCES = {
    "fp32": {
        "logits": Tolerance(1e-4, 1e-5, "allclose", "float32 rounding (issue: rtol 1e-4, atol 1e-5)"),
        "loss": Tolerance(1e-5, 1e-6, "allclose", "float32 rounding of a mean over the batch"),
        "gradients": Tolerance(1e-2, 1e-5, "norm", "float32 flips ReLU / max-pool choices near zero"),
        "trajectory": Tolerance(1e-3, 1e-5, "allclose", "20 SGD steps amplify float32 differences"),
        "final_weights": Tolerance(3e-2, 1e-5, "norm", "weight updates: gradients' kink flips over 20 steps"),
    },
    "fast": {
        "logits": Tolerance(5e-2, 5e-3, "allclose", "TF32 / bf16 keep 10 / 8 mantissa bits"),
        "loss": Tolerance(1e-2, 1e-3, "allclose", "TF32 / bf16"),
        "gradients": Tolerance(1e-1, 1e-4, "norm", "TF32 / bf16"),
        "trajectory": Tolerance(2e-2, 1e-3, "allclose", "TF32 / bf16 over 20 steps"),
        "final_weights": Tolerance(1e-1, 1e-4, "norm", "TF32 / bf16 over 20 steps"),
    },
}


CONDITIONING_FACTOR = 3.0  # a backend may differ from float64 by 3x what NumPy's own float32 run does


def error(a, b, tol: Tolerance, slack: float = 0.0) -> float:
    """The measured error in units of the tolerance: <= 1 passes. NaN anywhere is infinitely bad.

    slack widens the bound by an absolute amount (max-abs for "allclose", a norm for "norm"): the
    conditioning slack of a training run, CONDITIONING_FACTOR x the float32 reference's own spread."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    if a.size == 0:
        return 0.0
    if tol.measure == "allclose":
        return float(np.max(np.abs(a - b) / (tol.atol + tol.rtol * np.abs(b) + slack)))
    return float(np.linalg.norm(a - b) / (tol.rtol * np.linalg.norm(b) + tol.atol * np.sqrt(a.size) + slack))


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")
