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
or the field, and what was expected.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from dataclasses import fields
from pathlib import Path

import numpy as np

from common import spec as specs
from common.fsio import atomic_path, atomic_write_text

from .recipe import Settings, SettingsError

METRICS_FORMAT = "nin-training-metrics/1"
CHECKPOINT_FORMAT = "nin-training-checkpoint/1"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
HEADER_FIELDS = {"format": str, "backend": str, "variant": str, "device": str, "device_name": str,
                 "versions": dict, "settings": dict, "command": str, "created": str}
EPOCH_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "test_zero_logits", "images_per_second", "train_seconds", "wall_seconds")
MAX_METRICS_BYTES = 64 * 2**20


class RunError(ValueError):
    """A run directory, metrics file or checkpoint that cannot be used; the message names which."""


def settings_from(data, source: str) -> Settings:
    """Settings from a header's or checkpoint's JSON, every field checked."""
    if not isinstance(data, dict):
        raise RunError(f"{source}: settings: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunError(f"{source}: settings: unknown field(s) {unknown}")
    if "backend" not in data:
        raise RunError(f"{source}: settings: missing field 'backend'")
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
    for key in EPOCH_FIELDS:
        if key not in line:
            raise RunError(f"{where}: epoch record lacks field {key!r}")
        v = line[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RunError(f"{where}: {key}: expected a number, got {_short(v)}")
        if isinstance(v, int) and not specs.finite(v):  # NaN and inf are allowed (a skipped test is NaN)
            raise RunError(f"{where}: {key}: an integer of {len(str(abs(v)))} digits, past any value it can have")
    if not isinstance(line["epoch"], int) or line["epoch"] < 1:
        raise RunError(f"{where}: epoch: expected an integer >= 1, got {line['epoch']!r}")
    for key in ("train_accuracy", "test_accuracy", "test_zero_logits"):
        if math.isfinite(line[key]) and not 0 <= line[key] <= 1:
            raise RunError(f"{where}: {key}: expected a fraction in [0, 1], got {line[key]!r}")


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
            for key, kind in HEADER_FIELDS.items():
                if not isinstance(line.get(key), kind):
                    raise RunError(f"{where}: header field {key!r}: expected {kind.__name__}, got {line.get(key)!r}")
            if line["format"] != METRICS_FORMAT:
                raise RunError(f"{where}: format {line['format']!r}, expected {METRICS_FORMAT!r}")
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


CHECKPOINT_FIELDS = {"format": str, "backend": str, "settings": dict, "epoch": int, "step": int, "rng": dict,
                     "records": list, "sha256": str}


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
    if not isinstance(meta, dict):
        raise RunError(f"{path}: checkpoint metadata: expected an object")
    for key, kind in CHECKPOINT_FIELDS.items():
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta.get(key), bool)):
            raise RunError(f"{path}: checkpoint field {key!r}: expected {kind.__name__}, got {meta.get(key)!r}")
    if meta["format"] != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: format {meta['format']!r}, expected {CHECKPOINT_FORMAT!r}")
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
        if not isinstance(record, dict):
            raise RunError(f"{path}: records[{i}]: expected an object")
        _check_epoch(record, f"{path}: records[{i}]")
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
    if not isinstance(result, dict):
        raise RunError(f"{path}: expected a JSON object (a range test's result)")
    for key, kind in (("backend", str), ("variant", str), ("device", str), ("device_name", str), ("stopped", str),
                      ("settings", dict), ("versions", dict), ("lrs", list), ("losses", list)):
        if not isinstance(result.get(key), kind):
            raise RunError(f"{path}: {key}: expected {kind.__name__}, got {_short(result.get(key))}")
    settings_from(result["settings"], str(path))
    lrs, losses = result["lrs"], result["losses"]
    numbers = all(isinstance(v, float) or specs.finite(v) for v in lrs + losses)
    if not (numbers and len(lrs) == len(losses) and lrs and all(specs.finite(v) and v > 0 for v in lrs)):
        raise RunError(f"{path}: lrs and losses: expected as many numbers of each, the rates finite and > 0")
    return result


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def final_accuracy(run: str | Path) -> float:
    _, epochs, _ = read_metrics(run)
    if not epochs:
        raise RunError(f"{run}: no epoch has finished")
    return epochs[-1]["test_accuracy"]
