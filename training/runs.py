"""A run directory: its metrics (JSON Lines) and its checkpoint (safetensors), written and checked.

    RUN/metrics.jsonl           one JSON object per line, rewritten atomically after every epoch:
                                {"type": "header", ...}   backend, variant, device, versions, settings, command
                                {"type": "epoch", ...}    train/test loss and accuracy, images/s, seconds
                                {"type": "resume", ...}   where a resumed run took over, and its command
                                {"type": "diverged", ...} the epoch, step and loss that stopped the run
    RUN/checkpoint.safetensors  after every epoch: "weights/<canonical name>" (OIHW, float32),
                                "optimizer/<key>" (the framework's own optimizer state, its own layout),
                                and JSON metadata: settings, the position (epochs done, steps done), the
                                RNG state (the seed: every stream restarts from (seed, epoch)), the
                                epoch records so far, and the sha256 of every tensor's bytes
    RUN/curves.png              `nin plot RUN` (loss and accuracy per epoch)

A file that cannot be read, or says something impossible, is a RunError naming the file, the line
or the field, and what was expected. The fields of each file are pydantic models (HeaderJSON,
EpochJSON, CheckpointJSON, LrFindJSON and SettingsJSON below; common/schema.py words their errors);
what a field's type cannot say (the order of epochs, the checksum, the settings' ranges, given by
training/recipe.py with their flags) is checked here in code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import MISSING, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import StrictFloat, StrictInt, create_model

from common import schema
from common import spec as specs
from common.fsio import atomic_path, atomic_write_text

from .recipe import MAX_DEVICES, Settings, SettingsError

METRICS_FORMAT = "nin-training-metrics/1"
CHECKPOINT_FORMAT = "nin-training-checkpoint/1"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
MAX_METRICS_BYTES = 64 * 2**20


class RunError(ValueError):
    """A run directory, metrics file or checkpoint that cannot be used; the message names which."""


# --- the schema of a run's files --------------------------------------------------------------
# Settings as JSON: every field of recipe.Settings, of its type; their ranges are Settings' own (with
# the flag that sets each, as the command line says them).
SettingsJSON = create_model("SettingsJSON", __base__=schema.Schema, **{
    f.name: ({"str": schema.STRING, "int": schema.INTEGER, "float": schema.NUMBER}[f.type],
             ... if f.default is MISSING else None) for f in fields(Settings)})


def _fraction(value) -> bool:
    """In [0, 1], or not a finite number: NaN is an epoch not tested (--eval-every); an integer past
    any float is named by _check_epoch."""
    return not isinstance(value, (int, float)) or isinstance(value, bool) or not specs.finite(value) or 0 <= value <= 1


FRACTION = schema.expect(StrictInt | StrictFloat, "a number in [0, 1] (or NaN: not tested)", accept=_fraction,
                         whole=True)


class EpochJSON(schema.Schema):
    """One epoch's line of the metrics (and one of a checkpoint's records): numbers, NaN and inf allowed."""
    type: schema.one_of(["epoch"])
    epoch: schema.integer(1)
    step: schema.NUMBER
    lr: schema.NUMBER
    train_loss: schema.NUMBER
    train_accuracy: FRACTION
    test_loss: schema.NUMBER
    test_accuracy: FRACTION
    test_zero_logits: FRACTION
    images_per_second: schema.NUMBER
    train_seconds: schema.NUMBER
    wall_seconds: schema.NUMBER


EPOCH_FIELDS = tuple(name for name in EpochJSON.model_fields if name != "type")
STRINGS = schema.expect(dict[str, str], "an object of strings")


class HeaderJSON(schema.Schema):
    """The first line of the metrics (training/worker.py writes it); the fields after `created` are optional."""
    type: schema.one_of(["header"])
    format: schema.one_of([METRICS_FORMAT])
    backend: schema.STRING
    variant: schema.STRING
    device: schema.STRING
    device_name: schema.STRING
    versions: STRINGS
    settings: SettingsJSON
    command: schema.STRING
    created: schema.STRING
    framework: schema.STRING = None  # None here: absent
    numerics: STRINGS = None
    train_images: schema.integer(0) = None
    test_images: schema.integer(0) = None
    steps_per_epoch: schema.integer(0) = None
    python: schema.STRING = None
    host: schema.STRING = None
    platform: schema.STRING = None
    devices: schema.integer(1, MAX_DEVICES) = None  # data-parallel replicas in all (--devices on each of --nodes)
    nodes: schema.integer(2, MAX_DEVICES) = None  # the machines they ran on, when more than one
    engine: schema.STRING = None  # their engine (distributed.ENGINE)


class CheckpointJSON(schema.Schema):
    """A checkpoint's metadata (write_checkpoint)."""
    format: schema.one_of([CHECKPOINT_FORMAT])
    backend: schema.STRING
    settings: SettingsJSON
    epoch: schema.integer(0)
    step: schema.integer(0)
    rng: schema.OBJECT
    records: schema.expect(list[EpochJSON], "a list of epoch records")
    sha256: schema.STRING


class LrFindJSON(schema.Schema):
    """A range test's lr_find.json (training/worker.py lr_find)."""
    expected: ClassVar[str] = "a JSON object (a range test's result)"
    backend: schema.STRING
    variant: schema.STRING
    device: schema.STRING
    device_name: schema.STRING
    stopped: schema.STRING
    settings: SettingsJSON
    versions: STRINGS
    lrs: schema.expect(list[schema.NUMBER], "a list of numbers")
    losses: schema.expect(list[schema.NUMBER], "a list of numbers")
    format: schema.STRING = None  # None here: absent
    numerics: STRINGS = None
    min_lr: schema.NUMBER = None
    max_lr: schema.NUMBER = None
    steps: schema.INTEGER = None
    created: schema.STRING = None
    command: schema.STRING = None


def _check(model, data, source: str, root: str = "") -> None:
    schema.check(model, data, source=source, root=root, error=RunError)


def settings_from(data, source: str) -> Settings:
    """Settings from a header's or checkpoint's JSON: its fields (SettingsJSON), then their ranges."""
    _check(SettingsJSON, data, source, "settings")
    try:
        return Settings(**data)
    except SettingsError as e:
        raise RunError(f"{source}: settings: {e}") from None


def loads(text: str, where: str):
    """JSON as a run's files hold it: what cannot be read (not JSON, nested too deeply for the parser,
    an integer of thousands of digits) is a RunError naming `where`, never a traceback."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise RunError(f"{where}: nested too deeply to read") from None
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise RunError(f"{where}: holds a number too large to read: {str(e).split(';')[0]}") from None


def existing(path: str | Path, what: str) -> bool:
    """True when `path` is a regular file (or a link to one), False when nothing is there at all. Anything
    else is a RunError: a folder, a loop of links, a link to nowhere or a FIFO where a run's file goes must
    not look like "no checkpoint" and restart the run from epoch 0."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            raise RunError(f"{path}: a symbolic link that leads nowhere, where the run's {what} goes") from None
        return False
    except OSError as e:
        reason = "a loop of symbolic links" if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise RunError(f"{path}: cannot be read ({reason}), where the run's {what} goes") from None
    if stat.S_ISDIR(mode):
        raise RunError(f"{path}: a directory, where the run's {what} goes (a file)")
    if not stat.S_ISREG(mode):
        raise RunError(f"{path}: not a regular file, where the run's {what} goes")
    return True


# --- metrics ---------------------------------------------------------------------------------
def write_metrics(run: Path, lines: list[dict]) -> Path:
    path = Path(run) / METRICS
    atomic_write_text(path, "".join(json.dumps(line, allow_nan=True) + "\n" for line in lines))
    return path


def _check_epoch(line: dict, where: str) -> None:
    """An epoch's fields (EpochJSON), then integers past any float (NumPy could not even compare them)."""
    _check(EpochJSON, line, where)
    for key in EPOCH_FIELDS:
        v = line[key]
        if isinstance(v, int) and not specs.finite(v):  # NaN and inf are allowed (a skipped test is NaN)
            raise RunError(f"{where}: {key}: an integer of {len(str(abs(v)))} digits, past any value it can have")


def read_metrics(path: str | Path) -> tuple[dict, list[dict], list[dict]]:
    """(header, epoch records, other records) of a metrics file (or of RUN/metrics.jsonl), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise RunError(f"{path}: no metrics file (is {path.parent} a run directory written by `nin train`?)")
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise RunError(f"{path}: {path.stat().st_size:,} bytes is too large for a metrics file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text (byte {e.start}): not a metrics file") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read: {e.strerror or e}") from None
    header, epochs, others = None, [], []
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        line = loads(raw, where)
        if not isinstance(line, dict) or not isinstance(line.get("type"), str):
            raise RunError(f"{where}: expected a JSON object with a string field 'type'")
        if number == 1 or header is None:
            if line["type"] != "header":
                raise RunError(f"{where}: the first line must be the header (type 'header'), got {line['type']!r}")
            _check(HeaderJSON, line, where)
            settings_from(line["settings"], where)
            header = line
        elif line["type"] == "epoch":
            _check_epoch(line, where)
            if line["epoch"] != len(epochs) + 1:
                raise RunError(f"{where}: epoch {line['epoch']} follows epoch {len(epochs)}; "
                               f"expected {len(epochs) + 1}")
            epochs.append(line)
        elif line["type"] in ("resume", "diverged", "interrupted"):
            others.append(line)
        else:
            raise RunError(f"{where}: unknown record type {line['type']!r}; expected epoch, resume, diverged "
                           "or interrupted")
    if header is None:
        raise RunError(f"{path}: empty; expected a header line")
    return header, epochs, others


# --- checkpoints -----------------------------------------------------------------------------
def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.array(tensors[name], order="C")
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_checkpoint(run: Path, *, weights: dict, optimizer: dict, meta: dict) -> Path:
    """Weights, optimizer state and the run's position, atomically (a kill leaves the previous one)."""
    from safetensors.numpy import save_file

    tensors = {f"weights/{k}": np.array(v, order="C") for k, v in weights.items()}
    tensors.update({f"optimizer/{k}": np.array(v, order="C") for k, v in optimizer.items()})  # 0-d stays 0-d
    meta = {**meta, "format": CHECKPOINT_FORMAT, "sha256": _digest(tensors)}
    path = Path(run) / CHECKPOINT
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta)})
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(weights, optimizer state, metadata) of a checkpoint, checked against its own sha256."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint to resume from (the run has not finished an epoch)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable checkpoint ({e}); delete it to start again, "
                       "or restore the run directory") from None
    if not meta_text:
        raise RunError(f"{path}: a safetensors file without checkpoint metadata; not written by `nin train`")
    meta = loads(meta_text, f"{path}: checkpoint metadata")
    _check(CheckpointJSON, meta, str(path), "checkpoint")
    digest = _digest(tensors)
    if digest != meta["sha256"]:
        raise RunError(f"{path}: the tensors' sha256 is {digest[:16]}..., the checkpoint says "
                       f"{meta['sha256'][:16]}...: the file is corrupt")
    settings = settings_from(meta["settings"], str(path))
    if not 0 <= meta["epoch"] <= settings.epochs or meta["step"] < 0:
        raise RunError(f"{path}: position epoch {meta['epoch']} step {meta['step']} is outside the run's "
                       f"{settings.epochs} epochs")
    if len(meta["records"]) != meta["epoch"]:
        raise RunError(f"{path}: holds {len(meta['records'])} epoch records for {meta['epoch']} epochs done")
    for i, record in enumerate(meta["records"]):
        _check_epoch(record, f"{path}: checkpoint.records[{i}]")
    weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
    optimizer = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
    if len(weights) + len(optimizer) != len(tensors):
        odd = [k for k in tensors if not k.startswith(("weights/", "optimizer/"))]
        raise RunError(f"{path}: tensor(s) {odd[:3]} are neither weights/ nor optimizer/")
    return weights, optimizer, meta


def stored_settings(run: str | Path) -> Settings:
    """The settings a run was made with: its checkpoint's, else its metrics header's. When both are
    there they must agree: a checkpoint copied from another run would otherwise resume as that run
    (another network, another recipe) while the metrics still name this one."""
    run = Path(run)
    found = {}
    if existing(run / CHECKPOINT, "checkpoint"):
        meta = read_checkpoint(run / CHECKPOINT)[2]
        found[CHECKPOINT] = settings_from(meta["settings"], str(run / CHECKPOINT))
        if meta["backend"] != found[CHECKPOINT].backend:
            raise RunError(f"{run / CHECKPOINT}: backend {meta['backend']!r}, but its settings say "
                           f"{found[CHECKPOINT].backend!r}")
    if existing(run / METRICS, "metrics file"):
        header = read_metrics(run / METRICS)[0]
        found[METRICS] = settings_from(header["settings"], str(run / METRICS))
    if not found:
        raise RunError(f"{run}: no run to resume (neither {METRICS} nor {CHECKPOINT} is there)")
    if len(found) == 2 and found[CHECKPOINT] != found[METRICS]:
        a, b = found[CHECKPOINT].to_dict(), found[METRICS].to_dict()
        differ = [f"{k} {a[k]!r} (the metrics say {b[k]!r})" for k in a if a[k] != b[k]]
        raise RunError(f"{run / CHECKPOINT}: belongs to another run than {run / METRICS}: "
                       + "; ".join(differ) + "; restore this run's checkpoint, or start again in another --out")
    return found.get(CHECKPOINT) or found[METRICS]


def read_lr_find(path: str | Path) -> dict:
    """A range test's lr_find.json (`nin lr-find --keep` reads it back), checked as far as the analysis
    and the report use it: one line naming the file and the field when it is not one."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    result = loads(text, str(path))
    _check(LrFindJSON, result, str(path))
    settings_from(result["settings"], str(path))
    lrs, losses = result["lrs"], result["losses"]
    numbers = all(isinstance(v, float) or specs.finite(v) for v in lrs + losses)
    if not (numbers and len(lrs) == len(losses) and lrs and all(specs.finite(v) and v > 0 for v in lrs)):
        raise RunError(f"{path}: lrs and losses: expected as many numbers of each, the rates finite and > 0")
    return result


def final_accuracy(run: str | Path) -> float:
    _, epochs, _ = read_metrics(run)
    if not epochs:
        raise RunError(f"{run}: no epoch has finished")
    return epochs[-1]["test_accuracy"]
