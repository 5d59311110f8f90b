"""The conformance record format: one safetensors file of arrays plus JSON metadata, and its validation.

A record holds what one backend computed for the cases of conformance.cases (logits, loss,
per-parameter gradients, the losses and final weights of two short training runs, per variant) as
tensors, and everything else (versions, device, precision, compile mode, numerics settings, the
cases' seeds and sizes, shapes, parameter counts) as JSON in its metadata under the key "record".
Records are written inside the backend's own process (conformance.record) and read anywhere.

`read_record` checks everything before any value is compared: every metadata field's type and
value against the pydantic model MetadataJSON (an unknown precision is an error, never a fallback
to another tolerance; common/schema.py words the errors), every variant's spec, and every
tensor's name, dtype and shape against what the metadata says the record holds.
A record that lists no variant checks nothing and is refused.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import StrictInt

from common import calc, schema
from common.backends import BACKENDS, MAX_DEVICES
from common.data import CLASSES
from common.fsio import atomic_path
from common.spec import NetSpec, SpecError, finite, loads

from .cases import DROPOUT_PROBE, Cases, dropout_rates, mask_shapes, midpoint, scheduled_steps

FORMAT = "nin-conformance-record/2"
PRECISIONS = ("fp32", "fp64", "fast")
DTYPES = {"fp32": "float32", "fp64": "float64", "fast": "float32"}
DEVICES = ("cpu", "gpu")
COMPILES = ("eager", "compiled")
VARIANCES = ("biased", "unbiased")  # the running variance batch norm keeps: PyTorch's is unbiased
HYPERPARAMETERS = ("exact", "float32")  # what the kernels see of lr, momentum, wd: MXNet's take float32
FLOAT64_LIMITS = ("batch_norm", "all")  # what a backend computes below float64 in fp64 mode (declared): batch
# norm only, or everything (Keras on JAX and PyTorch)
MAX_BYTES = 2 * 2 ** 30  # a record is ~100 MB; a larger file is not one
MAX_WORK = 10 ** 13  # multiply-adds: ~90 times the d2l variant's cases (1.1e11), minutes rather than days
BATCH_NORMS = ("global", "per replica")  # a data-parallel run's batch statistics: the global batch's, or each shard's
MAX_TEXT = 10_000  # characters in one metadata string (the command line is the longest)
TEXT = schema.text(MAX_TEXT)  # printed: one line each, of a readable length


class VariantJSON(schema.Schema):
    spec: Any  # NetSpec.from_dict checks it, with its own schema
    layer_shapes: schema.expect(list[list[StrictInt]], "a list of lists of integers", whole=True)
    param_count: schema.integer(0)


class ResumedFromJSON(schema.Schema):
    """Where a resume record's run began: another backend's record (conformance/record.py)."""
    backend: TEXT
    hyperparameters: TEXT
    running_variance: TEXT
    record: TEXT
    float64_limits: schema.expect(dict[TEXT, TEXT], "an object of strings") = None


class DataParallelJSON(schema.Schema):
    """How a data-parallel record's runs were split (conformance/distributed.py)."""
    devices: schema.integer(2, MAX_DEVICES)
    engine: TEXT
    batch_norm: schema.one_of(BATCH_NORMS)
    sync_batch_norm: schema.BOOLEAN  # asked for (--sync-batch-norm); where the default is global, the same


class MetadataJSON(schema.Schema):
    """A record's metadata (its "record" JSON); the first eleven fields are required."""
    format: schema.one_of([FORMAT])
    backend: schema.one_of(sorted(BACKENDS))
    versions: schema.expect(dict[TEXT, TEXT], "an object of strings")
    device: schema.one_of(DEVICES)
    precision: schema.one_of(PRECISIONS)
    compile: schema.one_of(COMPILES)
    numerics: schema.expect(dict[TEXT, TEXT], "an object of strings")
    cases: schema.OBJECT  # Cases.from_dict checks its fields
    variants: schema.expect(dict[str, VariantJSON], "an object (variant name -> its spec and shapes)")
    running_variance: schema.one_of(VARIANCES)
    hyperparameters: schema.one_of(HYPERPARAMETERS)
    float64_limits: schema.expect(dict[schema.one_of(FLOAT64_LIMITS), TEXT], "an object of strings") = None
    framework: TEXT = None  # None here: absent
    device_name: TEXT = None
    python: TEXT = None
    host: TEXT = None
    platform: TEXT = None
    created: TEXT = None
    command: TEXT = None
    resumed_from: ResumedFromJSON = None
    data_parallel: DataParallelJSON = None


REQUIRED = tuple(name for name, field in MetadataJSON.model_fields.items() if field.is_required())


class RecordError(ValueError):
    """A record that cannot be read or is not what it says; names the file and the field."""


@dataclass
class Record:
    path: Path
    meta: dict
    tensors: dict
    cases: Cases
    specs: dict  # variant name -> NetSpec

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def precision(self) -> str:
        return self.meta["precision"]


def write_record(path: str | Path, tensors: dict[str, np.ndarray], meta: dict) -> Path:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"record": json.dumps(meta)})
    return Path(path)


def expected_tensors(spec: NetSpec, cases: Cases, *, kind: str = "full") -> dict[str, tuple[int, ...]]:
    """Every tensor a record holds for one variant, by key (without the variant) and shape. kind: "full";
    "resumed", a resume record's (another backend's checkpoint, continued: `nin record --resume-from`);
    "data_parallel", a data-parallel record's (the constant-rate runs only: conformance/distributed.py)."""
    shapes = calc.param_shapes(spec)
    params = {k: v for k, v in shapes.items() if calc.is_trainable(k)}
    steps, epochs = scheduled_steps(cases), cases.scheduled_epochs
    if kind == "resumed":
        out = {"resumed/trajectory": ((epochs - midpoint(cases)) * steps,), "resumed/eval": (epochs - midpoint(cases),)}
        out.update({f"resumed/{'final' if calc.is_trainable(k) else 'running'}/{k}": v for k, v in shapes.items()})
        out.update({f"resumed/{k}": v for k, v in mask_shapes(spec, cases).items()})  # both halves' masks
        return out
    out = {"trajectory": (cases.steps,), "momentum/trajectory": (cases.momentum_steps,)}
    for prefix in ("final/", "momentum/final/"):
        out.update({prefix + k: shape for k, shape in params.items()})
    out.update({f"running/{k}": shape for k, shape in shapes.items() if not calc.is_trainable(k)})
    if kind == "data_parallel":
        return out
    out.update({"logits": (cases.batch, spec.num_classes), "loss": (1,)})
    out.update({"grad/" + k: shape for k, shape in params.items()})
    out.update({"scheduled/trajectory": (epochs * steps,), "scheduled/eval": (epochs,),
                "scheduled/checkpoint/step": (1,)})
    out.update({f"scheduled/{k}": v for k, v in mask_shapes(spec, cases).items()})
    for k, shape in shapes.items():
        out[f"scheduled/{'final' if calc.is_trainable(k) else 'running'}/{k}"] = shape
        out[f"scheduled/checkpoint/weights/{k}"] = shape
        if calc.is_trainable(k):
            out[f"scheduled/checkpoint/momentum/{k}"] = shape
    for i, _ in enumerate(dropout_rates(spec)):
        out.update({f"dropout/{i}/train": DROPOUT_PROBE, f"dropout/{i}/eval": DROPOUT_PROBE})
    return out


def reference_work(spec: NetSpec, cases: Cases) -> int:
    """Multiply-adds the float64 reference spends on one variant's cases: the logits' forward pass, the
    gradients' forward and backward (x 3), and both training runs (the error model repeats it all)."""
    passes = (cases.batch * 4 + 3 * cases.train_batch * (cases.steps + cases.momentum_steps)
              + cases.scheduled_epochs * (3 * cases.scheduled_images + cases.test_images))
    return calc.summary(spec).total_macs * passes


def _check_meta(path: Path, meta) -> None:
    """The metadata against its schema (MetadataJSON), then what a field's type cannot say."""
    schema.check(MetadataJSON, meta, source=str(path), root="metadata", error=RecordError)
    _check_float64_limits(path, meta["backend"], meta["precision"], meta.get("float64_limits", {}))


def _check_float64_limits(path: Path, backend: str, precision: str, limits: dict) -> None:
    """An fp64 record declares what its backend declares (the registry's float64_limits), no more, no less:
    `{"all": ...}` in a PyTorch record would hold it to fp32 bounds that PyTorch never asked for, since a
    record is judged by what it declares (conformance.compare.bound_precision)."""
    declared = sorted(BACKENDS[backend].float64_limits) if precision == "fp64" else []
    if sorted(limits) != declared:
        raise RecordError(f"{path}: metadata.float64_limits: {sorted(limits)}, but a {precision} {backend} record "
                          f"declares {declared}: the record would be judged with bounds its backend does not state")


def check_recordable(spec: NetSpec, cases: Cases, where: str) -> None:
    """What every record of `spec` must be, said before a record is made (`nin record`) and when one
    is read: trained on Fashion-MNIST's ten classes, and asking at most MAX_WORK multiply-adds of
    float64 reference work. RecordError names `where` (a record's field, or the --variant given)."""
    work = reference_work(spec, cases)
    if work > MAX_WORK:  # a record is input: it must not ask the reference for days of float64 work
        raise RecordError(f"{where}: its cases ask for {work:.1e} multiply-adds of float64 reference work, "
                          f"more than the {MAX_WORK:.0e} a record may ask for")
    if spec.num_classes < len(CLASSES):  # the training cases' labels are Fashion-MNIST's
        raise RecordError(f"{where}: num_classes {spec.num_classes}, but the cases train on Fashion-MNIST's "
                          f"{len(CLASSES)} classes")


def record_memory(spec: NetSpec, cases: Cases, precision: str) -> int:
    """Bytes a backend holds at least to record `spec`: the network training on the larger of the
    cases' batches at the record's dtype, with a momentum buffer (calc.summary's estimate)."""
    dtype = "float64" if precision == "fp64" else "float32"
    return calc.summary(spec, max(cases.batch, cases.train_batch), dtype, momentum=True).train_memory_bytes


def _check_variant(path: Path, name: str, info, cases: Cases) -> NetSpec:
    where = f"{path}: metadata.variants.{name}"  # its fields' types were checked with the metadata's
    try:
        spec = NetSpec.from_dict(info["spec"], source=f"{where}.spec")
    except SpecError as e:
        raise RecordError(str(e)) from None
    if spec.name != name:
        raise RecordError(f"{where}.spec.name: {spec.name!r}, expected {name!r}")
    check_recordable(spec, cases, f"{where}.spec")
    try:  # the float64 reference of the comparison runs here, in this machine's memory
        calc.check_memory(record_memory(spec, cases, "fp64"), what=f"{where}.spec: its float64 reference")
    except calc.CostError as e:
        raise RecordError(str(e)) from None
    return spec


def _check_tensors(path: Path, tensors: dict, specs: dict, *, cases: Cases, precision: str, kind: str) -> None:
    dtype = DTYPES[precision]
    expected = {f"{v}/{k}": shape for v, spec in specs.items()
                for k, shape in expected_tensors(spec, cases, kind=kind).items()}
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise RecordError(f"{path}: tensor(s) {extra[:3]}{' ...' if len(extra) > 3 else ''} belong to no variant "
                          f"the metadata lists ({sorted(specs)})")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise RecordError(f"{path}: missing tensor(s) {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for key, shape in expected.items():
        t = tensors[key]
        if str(t.dtype) != dtype:
            raise RecordError(f"{path}: tensor {key} is {t.dtype}; a {precision} record holds {dtype}")
        if tuple(t.shape) != shape:
            raise RecordError(f"{path}: tensor {key} has shape {tuple(t.shape)}, the spec and cases give {shape}")
        odd = t[(t != 0) & (t != 1)] if "/masks/" in key else ()
        if len(odd):
            raise RecordError(f"{path}: tensor {key} holds {float(odd[0]):g}: a keep mask holds 0 and 1 only")


def peek(path: str | Path) -> dict | None:
    """A record's metadata, read without its tensors and unchecked; None when `path` is not a readable
    record. For a quick look (what would an overwrite lose?), never for a comparison: read_record."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            text = (f.metadata() or {}).get("record")
    except (SafetensorError, OSError, ValueError, TypeError, zlib.error):
        return None
    try:
        meta = loads(text, "metadata") if text is not None else None
    except SpecError:
        return None
    return meta if isinstance(meta, dict) else None


def read_record(path) -> Record:
    """Read and validate a record; RecordError names the file and the first field that is wrong."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        what = " (a directory)" if path.is_dir() else " (not a regular file)" if path.exists() else ""
        raise RecordError(f"{path}: no such record file{what}")
    if path.stat().st_size > MAX_BYTES:
        raise RecordError(f"{path}: {path.stat().st_size:,} bytes: too large to be a record")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("record")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, zlib.error) as e:
        reason = " ".join(str(e).split())  # one line
        raise RecordError(f"{path}: not a readable record (truncated or not safetensors): {reason}") from None
    if meta_text is None:
        raise RecordError(f"{path}: has no 'record' metadata; not written by `nin record`")
    try:
        meta = loads(meta_text, "its metadata")
    except SpecError as e:
        raise RecordError(f"{path}: {e}") from None
    _check_meta(path, meta)
    huge = [k for k, v in meta["cases"].items() if isinstance(v, int) and not isinstance(v, bool) and not finite(v)]
    if huge:  # before Cases reads them: NumPy cannot even ask whether such a number is finite
        raise RecordError(f"{path}: metadata.cases.{huge[0]}: an integer of {len(str(meta['cases'][huge[0]]))} "
                          "digits, past any bound")
    try:
        cases = Cases.from_dict(meta["cases"], source="metadata.cases")
    except (ValueError, TypeError) as e:
        raise RecordError(f"{path}: {e}") from None
    if not meta["variants"]:
        raise RecordError(f"{path}: metadata.variants is empty: the record checks nothing")
    specs = {name: _check_variant(path, name, info, cases) for name, info in meta["variants"].items()}
    kind = "resumed" if meta.get("resumed_from") else "data_parallel" if meta.get("data_parallel") else "full"
    if kind == "resumed" and meta.get("data_parallel"):
        raise RecordError(f"{path}: metadata has both resumed_from and data_parallel: a record is one case")
    _check_tensors(path, tensors, specs, cases=cases, precision=meta["precision"], kind=kind)
    return Record(path, meta, tensors, cases, specs)


def record_meta(model_mod, train_mod, *, backend: str, device: str, precision: str, compile: str, numerics: dict,
                cases: Cases, variants: dict) -> dict:
    """A record's metadata: what made it (backend, versions, device, numerics, host, command) and what it holds."""
    return {
        "format": FORMAT,
        "backend": backend,
        "framework": model_mod.FRAMEWORK,
        "versions": {k: str(v) for k, v in train_mod.versions().items()},
        "device": device,
        "device_name": train_mod.device_name(device),
        "precision": precision,
        "compile": compile,
        "running_variance": model_mod.RUNNING_VARIANCE,
        "hyperparameters": model_mod.HYPERPARAMETERS,
        "float64_limits": train_mod.float64_limits() if precision == "fp64" else {},
        "numerics": {k: str(v) for k, v in numerics.items()},
        "cases": asdict(cases),
        "variants": variants,
        "python": platform.python_version(),
        "host": platform.node(),
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
