"""The one timing loop every backend is measured with.

The first step is timed alone (it includes tracing and compilation), then `warmup` untimed steps,
then `windows` timed windows of `steps` steps each, the device synchronised before and after each
window: a window's time covers the device's work, not just the queueing of it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def measure(step: Callable[[], object], synchronize: Callable[[object], None], *, batch_size: int,
            warmup: int, windows: int, steps: int) -> dict:
    """Time `step`; return images per second (median over windows), every window, the spread and the first step."""
    def timed(n: int) -> float:
        synchronize(None)
        start = time.perf_counter()
        out = None
        for _ in range(n):
            out = step()
        synchronize(out)
        return time.perf_counter() - start

    first = timed(1)
    for _ in range(warmup):
        step()
    seconds = [timed(steps) for _ in range(windows)]
    rates = [batch_size * steps / s for s in seconds]
    median = statistics.median(rates)
    return {
        "images_per_second": median,
        "images_per_second_windows": rates,
        "window_seconds": seconds,
        "spread": (max(rates) - min(rates)) / median,
        "first_step_seconds": first,
    }
