"""The learning rate of every step: one table, computed once by the driver and read by every backend.

A framework-free table rather than four schedulers: a PyTorch LambdaLR, a Keras LearningRateSchedule,
an optax schedule and a Gluon LRScheduler each read entry t at their own step count t, so a recipe
means the same numbers in all four, and the conformance matrix's scheduled case checks exactly that.
"""

from __future__ import annotations

import numpy as np

SCHEDULES = ("constant", "cosine", "linear")  # after the warm-up: stay, cosine to 0, or linear to 0


def lr_table(lr: float, *, total: int, warmup: int = 0, schedule: str = "constant") -> np.ndarray:
    """float64 rates of `total` steps: linear warm-up over `warmup` steps to `lr` (step t gets
    lr * (t + 1) / warmup), then constant, cosine to 0 or linear to 0 over the remaining steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warm = min(warmup, total)
    t = np.arange(total, dtype=np.float64)
    out = np.full(total, float(lr))
    if warm:
        out[:warm] = lr * (t[:warm] + 1) / warm
    rest = total - warm
    if rest and schedule != "constant":
        progress = (t[warm:] - warm) / rest
        out[warm:] = lr * (0.5 * (1 + np.cos(np.pi * progress)) if schedule == "cosine" else 1 - progress)
    return out
