"""How close is close enough: every numeric check's bound, from the error model, in one function.

A backend computing in precision P agrees with the float64 reference when, for every quantity,

    |got - reference| <= FACTOR * spread + FLOOR * u_P * scale

* spread: how far the float64 reference itself moves when P's rounding errors are injected into it
  (conformance.errormodel: MEMBERS perturbed copies, measured once per case and stored). It is the case's
  own conditioning: ~1e-7 for float32 logits, more where ReLU and max-pool kinks flip, and a lot on
  chaotic runs (batch norm over four images), whoever computes them.
* FACTOR = 3: the injected errors are Gaussian with twice the spread PyTorch's and NumPy's float32
  convolutions measure (tests/test_common.py); FACTOR covers implementations that accumulate in
  another order (oneDNN, XLA, Winograd kernels) and other CPUs' kernels. docs/conformance.md
  shows every check's measured share of its bound on several CPU paths (`make portability`).
* FLOOR = 128 units of roundoff of the reference's scale (elementwise: |reference_i| plus the mean
  |reference|; as a norm: ||reference||): what one long reduction may err by in a real kernel where
  the perturbed copies only reach it on average. Measured: PyTorch's float32 bias gradient of the
  paper's last conv (a sum over 4 x 8 x 8 positions) is off by 44 units; the random-walk model
  gives ~5. 128 units is 7.6e-6 in float32 and 1.4e-14 in float64: far below any bug (a 1% error
  in the learning rate moves the weight updates by 1e-2).

Elementwise ("max") for logits, the loss and the loss trajectories; a norm per tensor for gradients
and weight updates (final - init), where the worst tensor decides. Two records are compared with the
sum of their bounds (each is within its own bound of the reference; the triangle inequality).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errormodel import UNITS, measure

FACTOR = 3.0
FLOOR = 128.0

# The checks of the matrix: name -> the record keys it covers ("grad/" etc. are groups of tensors).
CHECKS = {
    "logits": "logits",
    "loss": "loss",
    "gradients": "grad/",
    "trajectory": "trajectory",
    "final_weights": "final/",
    "running_statistics": "running/",
    "momentum_trajectory": "momentum/trajectory",
    "momentum_final_weights": "momentum/final/",
    "scheduled_trajectory": "scheduled/trajectory",  # the training loop's own code: see conformance.cases
    "scheduled_evaluation": "scheduled/eval",
    "scheduled_final_weights": "scheduled/final/",
    "scheduled_running_statistics": "scheduled/running/",
    "resumed_trajectory": "resumed/trajectory",  # another backend's checkpoint, continued: resume records only
    "resumed_evaluation": "resumed/eval",
    "resumed_final_weights": "resumed/final/",
    "resumed_running_statistics": "resumed/running/",
    "dropout": "dropout/",  # statistical: see judge_dropout
}
DROPOUT_SIGMAS = 5.0


@dataclass(frozen=True)
class Verdict:
    measured: float  # max |got - ref| (elementwise checks) or ||got - ref|| / ||ref|| (norm checks)
    ratio: float  # measured error in units of its bound: <= 1 passes; inf for NaN, shape or dtype faults
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.ratio <= 1.0)


def bound(kind: str, reference: np.ndarray, spread: np.ndarray, precision: str) -> np.ndarray:
    """The largest error a correct `precision` implementation may make, elementwise or as one norm."""
    u = UNITS[precision]
    ref = np.asarray(reference, dtype=np.float64)
    spread = np.asarray(spread, dtype=np.float64)
    if measure(kind) == "max":
        scale = np.abs(ref).reshape(-1) + (np.mean(np.abs(ref)) if ref.size else 0.0)
        return FACTOR * spread.reshape(-1) + FLOOR * u * scale
    return FACTOR * spread.reshape(-1)[:1] + FLOOR * u * np.linalg.norm(ref)


def judge(kind: str, got, reference, bounds: np.ndarray) -> Verdict:
    """Measure `got` against `reference` in units of `bounds` (from `bound`, or a sum of two)."""
    got = np.asarray(got)
    ref = np.asarray(reference, dtype=np.float64)
    if got.shape != ref.shape:
        return Verdict(float("inf"), float("inf"), f"shape {got.shape}, expected {ref.shape}")
    g = np.asarray(got, dtype=np.float64)  # no copy when it is float64 already
    if not np.all(np.isfinite(g)):
        return Verdict(float("inf"), float("inf"), f"{int(np.sum(~np.isfinite(g)))} NaN or infinite value(s)")
    if g.size == 0:
        return Verdict(0.0, 0.0)
    diff = np.abs(g - ref).reshape(-1)
    if measure(kind) == "max":
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(diff == 0, 0.0, diff / bounds)
        worst = int(np.argmax(ratios))
        return Verdict(float(diff.max()), float(ratios[worst]), f"element {worst}" if diff.size > 1 else "")
    norm = float(np.linalg.norm(diff))
    scale = float(np.linalg.norm(ref)) or 1.0
    ratio = 0.0 if norm == 0 else (norm / float(bounds[0]) if bounds[0] > 0 else float("inf"))
    return Verdict(norm / scale, ratio)


def _independence(dropped: np.ndarray, rate: float) -> dict[str, float]:
    """Masks drawn independently per activation: neighbouring units of one example, and one unit in
    neighbouring examples, are both dropped rate**2 of the time (a mask shared across the batch, or
    drawn per channel block, is not), within DROPOUT_SIGMAS binomial standard deviations."""
    out = {}
    for what, a, b in (("neighbouring units", dropped[:, :-1], dropped[:, 1:]),
                       ("neighbouring examples", dropped[:-1], dropped[1:])):
        if a.size == 0:
            continue
        both = float(np.mean(a & b))
        sigma = np.sqrt(rate ** 2 * (1 - rate ** 2) / a.size)
        out[f"{what} both dropped {both:.3f}, independent masks {rate ** 2:.3f}"] = (
            abs(both - rate ** 2) / (DROPOUT_SIGMAS * sigma) if sigma > 0 else 0.0)
    return out


def judge_dropout(rate: float, train, evaluation, precision: str) -> Verdict:
    """Dropout on a batch of ones: in training a fraction `rate` is zeroed (within DROPOUT_SIGMAS
    binomial standard deviations), independently per activation (_independence), and every kept unit
    is 1 / (1 - rate) (inverted dropout, to the floor's rounding); in evaluation every unit is 1. The
    ratio is the worst of the parts."""
    grid = np.asarray(train, dtype=np.float64).reshape(np.shape(train)[0], -1)  # (examples, units)
    train = grid.reshape(-1)
    evaluation = np.asarray(evaluation, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(train)) and np.all(np.isfinite(evaluation))):
        return Verdict(float("inf"), float("inf"), "NaN or infinite values")
    dropped = float(np.mean(train == 0))
    sigma = np.sqrt(rate * (1 - rate) / train.size)
    kept = train[train != 0]
    scale = 1.0 / (1.0 - rate)
    floor = FLOOR * UNITS[precision]
    parts = {
        f"dropped {dropped:.3f} of units in training, rate {rate:g}": abs(dropped - rate) / (DROPOUT_SIGMAS * sigma),
        f"kept units {kept.min() if kept.size else 0:.6g}..{kept.max() if kept.size else 0:.6g}, "
        f"expected {scale:.6g}": float(np.max(np.abs(kept - scale))) / (floor * scale) if kept.size else float("inf"),
        f"evaluation changed {int(np.sum(evaluation != 1))} units": float(np.max(np.abs(evaluation - 1))) / floor,
        **_independence(grid == 0, rate),
    }
    detail, ratio = max(parts.items(), key=lambda kv: kv[1])
    return Verdict(abs(dropped - rate), ratio, detail)
