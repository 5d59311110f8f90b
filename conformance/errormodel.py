"""The error model: how far a correct implementation in a given precision may be from the float64 reference.

For each case (conformance.cases) and precision, the float64 reference is run MEMBERS more times with the
rounding errors of that precision injected (common.reference.Rounding: every dot product of every
convolution, forward and backward, batch-norm statistics, averages, the weights stored after each
step), each with its own random draw. The *spread* of a quantity is the largest distance of a
perturbed copy from the unperturbed run: elementwise for logits, loss and the loss trajectories,
as a norm per tensor for gradients and weight updates. It measures the case itself: a
well-conditioned case moves by ~1e-7 in float32, a chaotic one (ReLU and max-pool kinks that flip,
batch norm over four images) by far more, whoever computes it. The scheduled case's runs land in
clusters far apart: it gets SCHEDULED_MEMBERS copies, stored as an entry of their own.

conformance.tolerances turns a spread into the bound of a check. Spreads are measured once, with float64
arithmetic and seeded draws (so they do not depend on the machine's BLAS), and stored in
conformance/error_model.json, keyed by the case's hash; `nin error-model` re-measures them, and a spec
that is not in the file is measured on first use and cached in ~/.cache/nin/error-model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from common.fsio import atomic_write_text, cache_dir
from common.reference import Rounding

from . import cases as case_lib

UNITS = {"fp64": 2.0 ** -53, "fp32": 2.0 ** -24, "fast": 2.0 ** -11}  # fast: TF32 keeps 10 mantissa bits
MEMBERS = 8  # kink flips are discrete events: four copies can miss one that a real run makes
# The scheduled run (six steps through the warm-up's peak, with momentum) lands in clusters far apart, as
# kinks flip together: 8 copies can all land in the near ones (docs/conformance.md, measured on d2l-linear-head)
SCHEDULED_MEMBERS = 32
MODEL_VERSION = 3  # bump when the injected rounding changes: the key of every stored spread
STORE = Path(__file__).resolve().parent / "error_model.json"

# How a quantity is compared: elementwise ("max") or as a whole tensor ("norm").
ELEMENTWISE = ("logits", "loss", "trajectory", "momentum/trajectory", "scheduled/trajectory", "scheduled/eval",
               "scheduled/eval_unbiased", "resumed/trajectory", "resumed/eval", "resumed/eval_unbiased")


def measure(kind: str) -> str:
    return "max" if kind in ELEMENTWISE else "norm"


def kind_of(key: str) -> str:
    """The quantity a record key names: logits, loss, grad, trajectory, final, running, momentum/trajectory,
    momentum/final, scheduled/trajectory, scheduled/eval, scheduled/final, scheduled/running, dropout."""
    for prefix in ("momentum/final/", "scheduled/final/", "scheduled/running/", "resumed/final/", "resumed/running/",
                   "final/", "grad/", "running/", "dropout/"):
        if key.startswith(prefix):
            return prefix[:-1]
    return key


def spread_of(key: str, perturbed: list[np.ndarray], exact: np.ndarray) -> list:
    """The largest distance of the perturbed copies from the exact run: elementwise, or one norm.
    A loss trajectory's spread is its running maximum over the steps: once two runs have parted on
    a chaotic case they do not meet again, whatever a few copies happen to show at one step."""
    if measure(kind_of(key)) == "max":
        spread = np.max([np.abs(p - exact) for p in perturbed], axis=0).reshape(-1)
        if kind_of(key).endswith("trajectory"):
            spread = np.maximum.accumulate(spread)
        return spread.tolist()
    return [float(max(np.linalg.norm(p - exact) for p in perturbed))]


def key(spec, cases, precision: str) -> str:
    return case_lib.case_key(spec, cases, "error-model", MODEL_VERSION, precision, MEMBERS)


def scheduled_key(spec, cases, precision: str) -> str:
    """The key of the scheduled case's further copies (MEMBERS to SCHEDULED_MEMBERS - 1)."""
    return case_lib.case_key(spec, cases, "error-model-scheduled", MODEL_VERSION, precision, MEMBERS, SCHEDULED_MEMBERS)


def compute_spreads(spec, cases, precision: str, data_dir=None, *, progress=None) -> dict[str, list]:
    """Run the MEMBERS perturbed copies of every case of `spec` and measure each quantity's spread."""
    batches = case_lib.training_batches(spec, cases, data_dir)
    exact = case_lib.reference_results(spec, cases, data_dir)
    members = []
    for m in range(MEMBERS):
        if progress:
            progress(f"{spec.name} {precision}: perturbed copy {m + 1} of {MEMBERS}")
        members.append(case_lib.compute(spec, cases, batches, rounding=Rounding(UNITS[precision], seed=m)))
    return {k: spread_of(k, [r[k] for r in members], exact[k]) for k in exact if kind_of(k) != "dropout"}


def compute_scheduled_spreads(spec, cases, precision: str, data_dir=None, *, progress=None) -> dict[str, list]:
    """The scheduled case's further perturbed copies (seeds MEMBERS to SCHEDULED_MEMBERS - 1) and their spreads."""
    batches = case_lib.training_batches(spec, cases, data_dir)
    exact = case_lib.reference_results(spec, cases, data_dir)
    members = []
    for m in range(MEMBERS, SCHEDULED_MEMBERS):
        if progress:
            progress(f"{spec.name} {precision}: scheduled run, perturbed copy {m + 1} of {SCHEDULED_MEMBERS}")
        members.append(case_lib.scheduled(spec, cases, batches, rounding=Rounding(UNITS[precision], seed=m)))
    return {k: spread_of(k, [r[k] for r in members], exact[k]) for k in members[0]}


def _load_store(path: Path) -> dict:
    """The entries of a store or cache file; a damaged or foreign file holds none (its spreads are measured again)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: e for k, e in entries.items() if isinstance(e, dict) and isinstance(e.get("spreads"), dict)
            and all(isinstance(v, list) for v in e["spreads"].values())}


def _parts(spec, cases, precision: str) -> dict[str, tuple]:
    """key -> (its copies, how they are measured): every case's copies, and the scheduled case's further ones."""
    return {key(spec, cases, precision): (MEMBERS, compute_spreads),
            scheduled_key(spec, cases, precision): (f"{MEMBERS}..{SCHEDULED_MEMBERS - 1}", compute_scheduled_spreads)}


def is_stored(spec, cases, precision: str) -> bool:
    """Whether conformance/error_model.json holds every spread of this case in this precision."""
    return set(_parts(spec, cases, precision)) <= set(_load_store(STORE))


def entries(spec, cases, precision: str, data_dir=None, *, progress=None, fresh: bool = False) -> dict[str, dict]:
    """The store's entries of this case: stored, else cached on this machine, else measured now (and cached);
    fresh: measured now whatever is stored."""
    if precision not in UNITS:
        raise ValueError(f"precision must be one of {sorted(UNITS)}, got {precision!r}")
    stored, out = _load_store(STORE), {}
    for k, (members, compute) in _parts(spec, cases, precision).items():
        cache = cache_dir() / "error-model" / f"{spec.name}-{k}.json"
        entry = None if fresh else stored.get(k)
        if entry is None and not fresh and cache.is_file():
            entry = _load_store(cache).get(k)
        if entry is None:
            entry = {"variant": spec.name, "precision": precision, "unit": UNITS[precision], "members": members,
                     "spreads": compute(spec, cases, precision, data_dir, progress=progress)}
            atomic_write_text(cache, json.dumps({k: entry}))
        out[k] = entry
    return out


def spreads(spec, cases, precision: str, data_dir=None, *, progress=None) -> dict[str, np.ndarray]:
    """Every quantity's spread: over the MEMBERS copies, and over SCHEDULED_MEMBERS for the scheduled case
    (a spread is a largest distance: the largest of the two parts' is the spread of all the copies)."""
    out: dict[str, np.ndarray] = {}
    for entry in entries(spec, cases, precision, data_dir, progress=progress).values():
        for name, v in entry["spreads"].items():
            v = np.asarray(v, dtype=np.float64)
            out[name] = np.maximum(out[name], v) if name in out else v
    return out


def store(measured: dict[str, dict], path: Path = STORE) -> Path:
    """Merge measured entries into the committed file (one line per entry, stable order). Several
    `nin error-model --write` processes may measure at once: the read-merge-write is locked."""
    lock = Path(tempfile.gettempdir()) / f"nin-error-model-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        current = _load_store(path)
        current.update(measured)
        lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(current.items())]
        return atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")
