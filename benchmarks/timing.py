"""The one timing loop every backend is measured with.

The first step is timed alone (it includes tracing and compilation), then `warmup` untimed steps,
then `windows` timed windows of `steps` steps each. The clock is the host's (time.perf_counter), read
with the device idle at both ends: the backend's synchronize waits for the last warm-up step before
the first window (JAX dispatches asynchronously: its queue would otherwise spill into that window),
and for each window's last step before the clock is read again (torch.cuda.synchronize; JAX's
block_until_ready on the step's outputs). A window's time thus covers the device's work for exactly
its steps, and the host's time to queue them.
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
    out = None
    for _ in range(warmup):
        out = step()
    synchronize(out)  # nothing of the warm-up may still run when the first window starts
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
