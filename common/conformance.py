"""Conformance records: what a backend computed, in one portable file; and the comparison of records.

A record is one safetensors file: the arrays (logits, loss, per-parameter gradients, the losses and
final weights of a short training run, per variant) as tensors, and everything else (versions,
device, numerics settings, seeds, shapes, parameter counts) as JSON in its metadata. Records are
written by `nin record` inside the backend's own process and environment, and compared by
`nin compare` in any environment: with the NumPy reference (regenerated from the seeds in the
record) and with each other, so records from other machines, devices or versions compare alike.

The cases, all seeded (nothing in a record is needed to rebuild them but the seeds):
* logits / shapes: common.weights.random_weights(spec, weights_seed) (random biases and batch-norm
  statistics too), `batch` random images from input_seed, evaluation mode.
* loss / gradients: the same weights and images, random labels, training mode, dropout off.
* trajectory / final weights: common.weights.init(spec, init_seed), the first steps * train_batch
  Fashion-MNIST training images in file order, `steps` steps of plain SGD at lr, dropout off.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import backends, calc, data, reference, spec as specs, weights
from .tolerances import CONDITIONING_FACTOR, TOLERANCES, Tolerance, error

FORMAT = "nin-conformance-record/1"
REFERENCE_VERSION = 3  # bump when common.reference or the cases change what they compute: the cache key


@dataclass(frozen=True)
class Cases:
    weights_seed: int = 11
    init_seed: int = 0
    input_seed: int = 5
    batch: int = 4  # images for logits and gradients (> 1: batch norm needs a batch)
    steps: int = 20  # SGD steps of the training run
    train_batch: int = 4  # small: the float64 reference trains too (about 2 s a step on d2l)
    lr: float = 0.05  # the chapter's rate


class RecordError(ValueError):
    """A record that cannot be read or lacks a field; names the file and what is wrong."""


def _inputs(spec, cases: Cases):
    rng = np.random.default_rng(cases.input_seed)
    images = rng.random((cases.batch,) + spec.input_shape, dtype=np.float32)
    labels = rng.integers(0, spec.num_classes, size=cases.batch).astype(np.int32)
    return images, labels


# --- writing (inside the backend's process) ----------------------------------------------
def make_record(backend: str, variants: list[str], device: str, precision: str, out: Path,
                cases: Cases = Cases(), data_dir=None, progress=None) -> Path:
    model_mod = backends.load(backend, "model")
    train_mod = backends.load(backend, "train")
    numerics = train_mod.configure(device, precision)

    tensors: dict[str, np.ndarray] = {}
    per_variant = {}
    for name in variants:
        spec = specs.get(name)
        if progress:
            progress(f"{backend}: {spec.name}")
        w = weights.random_weights(spec, cases.weights_seed)
        images, labels = _inputs(spec, cases)
        model = model_mod.build(spec, device=device)
        model_mod.load_weights(model, w)
        tensors[f"{spec.name}/logits"] = model_mod.forward(model, images)
        shapes = model_mod.layer_shapes(model, images)
        exported = model_mod.export_weights(model)

        nodrop = spec.with_dropout(0.0)
        model = model_mod.build(nodrop, device=device)
        model_mod.load_weights(model, w)
        loss, grads = train_mod.loss_and_grads(model, images, labels)
        tensors[f"{spec.name}/loss"] = np.array([loss], dtype=np.float32)
        for k, g in grads.items():
            tensors[f"{spec.name}/grad/{k}"] = np.asarray(g, dtype=np.float32)

        model = model_mod.build(nodrop, device=device)
        model_mod.load_weights(model, weights.init(spec, cases.init_seed))
        optimizer = train_mod.make_optimizer(model, specs.TrainConfig(lr=cases.lr))
        losses = [train_mod.train_step(model, optimizer, x, y)
                  for x, y in data.fixed_batches(spec, cases.steps, cases.train_batch, data_dir)]
        tensors[f"{spec.name}/trajectory"] = np.array(losses, dtype=np.float32)
        for k, v in model_mod.export_weights(model).items():
            if calc.is_trainable(k):
                tensors[f"{spec.name}/final/{k}"] = np.asarray(v, dtype=np.float32)
        per_variant[spec.name] = {
            "spec": spec.to_dict(),
            "layer_shapes": [list(s) for s in shapes],
            "param_count": int(sum(v.size for k, v in exported.items() if calc.is_trainable(k))),
        }
    meta = {
        "format": FORMAT,
        "backend": backend,
        "framework": model_mod.FRAMEWORK,
        "versions": {k: str(v) for k, v in train_mod.versions().items()},
        "device": device,
        "device_name": train_mod.device_name(device),
        "precision": precision,
        "numerics": {k: str(v) for k, v in numerics.items()},
        "cases": asdict(cases),
        "variants": per_variant,
        "python": platform.python_version(),
        "host": platform.node(),
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"record": json.dumps(meta)})
    tmp.replace(out)
    return out


# --- reading ---------------------------------------------------------------------------
@dataclass
class Record:
    path: Path
    meta: dict
    tensors: dict

    @property
    def label(self) -> str:
        return f"{self.meta['backend']}-{self.meta['device']}" + ("" if self.meta["precision"] == "fp32" else "-fast")


REQUIRED = ("format", "backend", "versions", "device", "precision", "numerics", "cases", "variants")


def read_record(path) -> Record:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such record file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("record")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RecordError(f"{path}: not a readable record (truncated or not safetensors): {e}") from None
    if meta_text is None:
        raise RecordError(f"{path}: has no 'record' metadata; not written by `nin record`")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: its metadata is not valid JSON: {e}") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise RecordError(f"{path}: missing field(s) {missing}")
    if meta["format"] != FORMAT:
        raise RecordError(f"{path}: format {meta['format']!r}, expected {FORMAT!r}")
    return Record(path, meta, tensors)


# --- the reference, cached ---------------------------------------------------------------
def _cache_dir() -> Path:
    import os
    return Path(os.environ.get("NIN_CACHE_DIR") or Path.home() / ".cache" / "nin") / "reference"


def reference_results(spec, cases: Cases, data_dir=None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """What a perfect backend would record, in float64; cached on disk by a hash of spec and cases."""
    identity = [spec.to_json(), asdict(cases), sorted(calc.param_shapes(spec).items()), REFERENCE_VERSION]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache = _cache_dir() / f"{spec.name}-{key}.npz"
    if use_cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return dict(z)
    w = weights.random_weights(spec, cases.weights_seed)
    images, labels = _inputs(spec, cases)
    out = {"logits": reference.forward(spec, w, images)}
    loss, grads = reference.loss_and_grads(spec.with_dropout(0.0), w, images, labels)
    out["loss"] = np.array([loss])
    out.update({f"grad/{k}": v for k, v in grads.items()})
    _, grads32 = reference.loss_and_grads(spec.with_dropout(0.0), w, images, labels, dtype=np.float32)
    out.update({f"spread/grad/{k}": np.array([np.linalg.norm(grads32[k] - v)]) for k, v in grads.items()})
    batches = data.fixed_batches(spec, cases.steps, cases.train_batch, data_dir)
    init = weights.init(spec, cases.init_seed)
    losses, final = reference.train_trajectory(spec, init, batches, lr=cases.lr)
    out["trajectory"] = losses
    out.update({f"final/{k}": v for k, v in final.items() if calc.is_trainable(k)})
    # The same run in float32: how far float32 alone carries this case (its conditioning).
    losses32, final32 = reference.train_trajectory(spec, init, batches, lr=cases.lr, dtype=np.float32)
    out["spread/trajectory"] = np.array([np.max(np.abs(losses32 - losses))])
    out.update({f"spread/final/{k}": np.array([np.linalg.norm(final32[k] - final[k])])
                for k in final if calc.is_trainable(k)})
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cache)
    return out


# --- comparing ---------------------------------------------------------------------------
@dataclass
class Check:
    variant: str
    check: str  # shapes, params, logits, loss, gradients, trajectory, final_weights, record
    against: str  # "reference" or the other record's label
    backend: str  # this record's label
    measured: float | None  # max |a - b| (allclose) or ||a - b|| / ||b|| (norm); None for exact checks
    tolerance: str
    ratio: float  # measured in units of the tolerance: <= 1 passes
    passed: bool
    detail: str = ""


def _measure(a, b, tol: Tolerance) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if tol.measure == "allclose":
        return float(np.max(np.abs(a - b))) if a.size else 0.0
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0))


def _tol_text(t: Tolerance) -> str:
    return f"{'max' if t.measure == 'allclose' else 'norm'} rtol {t.rtol:g} atol {t.atol:g}"


def _array_check(variant, name, label, against, a, b, tol, detail="", slack: float = 0.0) -> Check:
    ratio = error(a, b, tol, slack)
    shape_note = "" if np.shape(a) == np.shape(b) else f"shape {np.shape(a)} vs {np.shape(b)}"
    if slack > tol.atol:  # below the tolerance's own atol, slack changes nothing worth mentioning
        detail = f"{detail}; conditioning slack {slack:.2g}".lstrip("; ")
    return Check(variant, name, against, label, _measure(a, b, tol), _tol_text(tol), ratio, ratio <= 1.0,
                 shape_note or detail)


def _grouped(rec: Record, variant: str, prefix: str) -> dict[str, np.ndarray]:
    p = f"{variant}/{prefix}/"
    return {k[len(p):]: v for k, v in rec.tensors.items() if k.startswith(p)}


def _worst(variant, name, label, against, mine: dict, theirs: dict, tol, slack: dict | None = None) -> Check:
    """One row for a group of tensors: the worst tensor decides, and is named."""
    missing = sorted(set(theirs) - set(mine))
    extra = sorted(set(mine) - set(theirs))
    if missing or extra:
        return Check(variant, name, against, label, None, _tol_text(tol), float("inf"), False,
                     f"missing {missing[:3]} extra {extra[:3]}")
    rows = [_array_check(variant, name, label, against, mine[k], theirs[k], tol, k, (slack or {}).get(k, 0.0))
            for k in theirs]
    worst = max(rows, key=lambda r: r.ratio)
    worst.detail = f"worst: {worst.detail}"
    return worst


def _compare_to(rec: Record, variant: str, ref: dict[str, np.ndarray], against: str, init: dict,
                spread: dict, fast: bool = False) -> list[Check]:
    """Final weights are compared as updates (final - init): the init would otherwise dominate the
    norm and hide a wrong step (and biases start at zero). `spread` is the float32 reference's own
    distance from float64 per training-run quantity (see common/tolerances.py, conditioning)."""
    slack = {k: CONDITIONING_FACTOR * float(v[0]) for k, v in spread.items()}
    tols = TOLERANCES["fast" if fast or rec.meta["precision"] != "fp32" else "fp32"]
    label = rec.label
    out = []
    for key, check in (("logits", "logits"), ("loss", "loss"), ("trajectory", "trajectory")):
        mine = rec.tensors.get(f"{variant}/{key}")
        if key not in ref:
            out.append(Check(variant, check, against, label, None, _tol_text(tols[check]), float("inf"), False,
                             f"{against} has no {variant}/{key}"))
        elif mine is None:
            out.append(Check(variant, check, against, label, None, _tol_text(tols[check]), float("inf"), False,
                             f"record has no {variant}/{key}"))
        else:
            out.append(_array_check(variant, check, label, against, mine, ref[key], tols[check],
                                    slack=slack.get(key, 0.0)))
    for prefix, check in (("grad", "gradients"), ("final", "final_weights")):
        theirs = {k[len(prefix) + 1:]: v for k, v in ref.items() if k.startswith(prefix + "/")}
        mine = _grouped(rec, variant, prefix)
        if prefix == "final":
            theirs = {k: v - init[k] for k, v in theirs.items() if k in init}
            mine = {k: v - init[k] if k in init and np.shape(v) == init[k].shape else v for k, v in mine.items()}
        out.append(_worst(variant, check, label, against, mine, theirs, tols[check],
                          {k[len(prefix) + 1:]: v for k, v in slack.items() if k.startswith(prefix + "/")}))
    return out


def _structure(rec: Record, variant: str, spec) -> list[Check]:
    info = rec.meta["variants"].get(variant, {})
    want_shapes = [list(s) for s in calc.layer_output_shapes(spec)]
    got_shapes = info.get("layer_shapes")
    bad = [i for i, (a, b) in enumerate(zip(got_shapes or [], want_shapes)) if list(a) != b]
    ok = got_shapes is not None and len(got_shapes) == len(want_shapes) and not bad
    detail = "" if ok else (f"layer {bad[0]}: {got_shapes[bad[0]]} vs spec {want_shapes[bad[0]]}" if bad
                            else f"{len(got_shapes or [])} layers vs spec {len(want_shapes)}")
    rows = [Check(variant, "shapes", "spec", rec.label, None, "exact", 0.0 if ok else float("inf"), ok, detail)]
    want, got = calc.param_count(spec), info.get("param_count")
    rows.append(Check(variant, "params", "spec", rec.label, None, "exact", 0.0 if got == want else float("inf"),
                      got == want, "" if got == want else f"{got} vs spec {want}"))
    return rows


def compare(paths: list, data_dir=None, use_cache: bool = True, progress=None) -> list[Check]:
    """Every record against the reference and against every other record. Never raises for a bad
    record: it becomes a failed 'record' row naming the file and the problem."""
    rows: list[Check] = []
    records: list[Record] = []
    for p in paths:
        try:
            records.append(read_record(p))
        except RecordError as e:
            rows.append(Check("-", "record", "-", Path(p).name, None, "readable", float("inf"), False, str(e)))
    cases = {json.dumps(r.meta["cases"], sort_keys=True) for r in records}
    if len(cases) > 1:
        rows.append(Check("-", "record", "-", ",".join(r.label for r in records), None, "same cases",
                          float("inf"), False, "records were made with different seeds or sizes: not comparable"))
        return rows
    variants = []
    for r in records:
        variants += [v for v in r.meta["variants"] if v not in variants]
    for variant in variants:
        holders = [r for r in records if variant in r.meta["variants"]]
        try:
            spec = specs.NetSpec.from_dict(holders[0].meta["variants"][variant]["spec"], source=str(holders[0].path))
        except (specs.SpecError, KeyError, TypeError) as e:
            rows.append(Check(variant, "record", "-", holders[0].label, None, "spec", float("inf"), False, str(e)))
            continue
        if progress:
            progress(f"reference: {variant}")
        cases_obj = Cases(**holders[0].meta["cases"])
        ref = reference_results(spec, cases_obj, data_dir, use_cache)
        init = weights.init(spec, cases_obj.init_seed)
        spread = {k[len("spread/"):]: v for k, v in ref.items() if k.startswith("spread/")}
        for rec in holders:
            if specs.NetSpec.from_dict(rec.meta["variants"][variant]["spec"]) != spec:
                rows.append(Check(variant, "record", "-", rec.label, None, "same spec", float("inf"), False,
                                  f"{rec.path.name} built a different {variant} network"))
                continue
            rows += _structure(rec, variant, spec)
            rows += _compare_to(rec, variant, ref, "reference", init, spread)
        for i, a in enumerate(holders):
            for b in holders[i + 1:]:
                as_ref = {k[len(variant) + 1:]: v for k, v in b.tensors.items() if k.startswith(variant + "/")}
                rows += _compare_to(a, variant, as_ref, b.label, init, spread, fast=b.meta["precision"] != "fp32")
    return rows


# --- rendering ---------------------------------------------------------------------------
def _cell(row: Check) -> str:
    mark = "ok" if row.passed else "FAIL"
    if row.measured is None:
        return mark if row.passed else f"FAIL ({row.detail})"
    return f"{mark} {row.measured:.1e} ({row.ratio:.2g}x)"


def render(rows: list[Check]) -> str:
    """Two matrices (check x backend against the reference; check x pair of backends) and the failures."""
    lines = []
    vs_ref = [r for r in rows if r.against in ("reference", "spec")]
    labels = list(dict.fromkeys(r.backend for r in vs_ref))
    keys = list(dict.fromkeys((r.variant, r.check, r.tolerance) for r in vs_ref))
    if keys:
        lines.append("Against the NumPy reference (float64) and the spec: measured error (its share of the tolerance)")
        header = ["variant", "check", "tolerance"] + labels
        table = [[v, c, t] + [next((_cell(r) for r in vs_ref if (r.variant, r.check, r.backend) == (v, c, l)), "-")
                              for l in labels] for v, c, t in keys]
        lines += _table(header, table)
    pairs = [r for r in rows if r.against not in ("reference", "spec", "-")]
    if pairs:
        lines.append("")
        lines.append("Backend against backend: worst over checks per variant")
        pair_labels = list(dict.fromkeys(f"{r.backend}~{r.against}" for r in pairs))
        keys = list(dict.fromkeys((r.variant, r.check) for r in pairs))
        table = [[v, c] + [next((_cell(r) for r in pairs if (r.variant, r.check, f"{r.backend}~{r.against}") == (v, c, p)), "-")
                           for p in pair_labels] for v, c in keys]
        lines += _table(["variant", "check"] + pair_labels, table)
    failed = [r for r in rows if not r.passed]
    lines.append("")
    lines.append(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    for r in failed:
        lines.append(f"  FAIL {r.variant} {r.check} [{r.backend} vs {r.against}]: "
                     f"{'' if r.measured is None else f'{r.measured:.3g} ({r.ratio:.3g}x tolerance) '}{r.detail}")
    return "\n".join(lines)


def _table(header, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def to_json(rows: list[Check]) -> dict:
    def clean(x):
        return None if isinstance(x, float) and not np.isfinite(x) else x
    return {"passed": all(r.passed for r in rows) and bool(rows),
            "checks": [{k: clean(v) for k, v in asdict(r).items()} for r in rows]}
