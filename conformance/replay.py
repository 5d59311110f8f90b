"""The scheduled case with dropout on (conformance.cases.replays_dropout): exact, not statistical.

A record of such a network holds the keep masks its backend's own dropout layers drew at every step of the
scheduled run ("scheduled/masks/<step>/<layer>", loop.dropout_masks). The float64 reference replays them
(cases.scheduled(..., masks=)), so the record's trajectory, evaluations and final weights are compared with
a run that dropped the same units, under the same error model as every other case: its spreads depend on the
masks, so they are measured here, for this record's masks, from SCHEDULED_MEMBERS perturbed copies (half a
second for PROBE). A backend whose step draws other masks than it hands over fails by far more than its bound.

What replay cannot see, a statistic can: masks that repeat from one epoch to the next (the dropout seed not
restarted per epoch) replay exactly, so `epoch_independence` asks that the same unit at the same step of two
epochs is dropped rate**2 of the time, as independent masks are.
"""

from __future__ import annotations

import numpy as np

from common.reference import Rounding
from common.spec import Dropout

from . import errormodel
from .cases import Cases, as_kernels_see, masks_of, resumed_view, scheduled, scheduled_steps, training_batches
from .tolerances import DROPOUT_SIGMAS


def replayed(spec, cases: Cases, values: dict, *, hyperparameters: str, precision: str, prefix: str = "scheduled",
             data_dir=None) -> tuple[dict, dict]:
    """(reference, spreads) of the run `values` holds ("<prefix>/..." keys, masks included): the reference's
    scheduled run replaying its masks, with the hyperparameters the backend's kernels see, and the spreads of
    `precision` over SCHEDULED_MEMBERS perturbed copies with the same masks. KeyError: a mask is missing."""
    masks = masks_of(values, spec, prefix)
    data = training_batches(spec, cases, data_dir)
    exact = scheduled(spec, cases, data, masks=masks)
    seen = scheduled(*as_kernels_see(spec, cases, hyperparameters), data, masks=masks)
    unit = errormodel.UNITS[precision]
    copies = [scheduled(spec, cases, data, masks=masks, rounding=Rounding(unit, seed=m))
              for m in range(errormodel.SCHEDULED_MEMBERS)]
    spreads = {k: np.asarray(errormodel.spread_of(k, [c[k] for c in copies], exact[k]), dtype=np.float64)
               for k in exact}
    if prefix == "scheduled":
        return seen, spreads
    return resumed_view(seen, cases), resumed_view(spreads, cases)


def epoch_independence(values: dict, spec, cases: Cases, prefix: str = "scheduled") -> list[tuple[float, float, str]]:
    """(ratio, measured, detail) per dropout layer: how often a unit is dropped at the same step of two successive
    epochs, against rate**2 (independent masks), within DROPOUT_SIGMAS binomial standard deviations."""
    rates = [layer.rate for layer in spec.layers if isinstance(layer, Dropout) and layer.rate > 0]
    try:
        masks = masks_of(values, spec, prefix)
    except KeyError as e:
        return [(float("inf"), float("inf"), f"{e.args[0]}: missing")]
    steps = scheduled_steps(cases)
    out = []
    for j, rate in enumerate(rates):
        pairs = [(masks[t][j] == 0, masks[t + steps][j] == 0) for t in range(len(masks) - steps)
                 if np.shape(masks[t][j]) == np.shape(masks[t + steps][j])]
        if not pairs:
            continue
        size = sum(a.size for a, _ in pairs)
        both = sum(float(np.sum(a & b)) for a, b in pairs) / size
        sigma = np.sqrt(rate ** 2 * (1 - rate ** 2) / size)
        out.append((abs(both - rate ** 2) / (DROPOUT_SIGMAS * sigma), both,
                    f"layer {j}: the same unit dropped in successive epochs {both:.3f}, independent masks "
                    f"{rate ** 2:.3f}"))
    return out
