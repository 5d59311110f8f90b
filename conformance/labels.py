"""Which records a comparison was given: a label per record for the matrix's columns, the framework
versions they name, and copies (a record compared with its own copy checks nothing)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conformance.records import Record


def _kind_label(rec: Record) -> str:
    """torch/eager; jax->torch/eager for a resume record; torch/dp2 for a data-parallel one (/sync-bn: its
    synchronised batch norm asked for; /per-replica-bn: its statistics per replica)."""
    source, dp = rec.meta.get("resumed_from"), rec.meta.get("data_parallel")
    if source:
        return f"{source['backend']}->{rec.backend}/{rec.meta['compile']}"
    if dp:
        bn = "/per-replica-bn" if dp["batch_norm"] == "per replica" else "/sync-bn" if dp["sync_batch_norm"] else ""
        return f"{rec.backend}/dp{dp['devices']}{bn}"
    return f"{rec.backend}/{rec.meta['compile']}"


def labels(recs: list[Record]) -> dict[int, str]:
    """The kind of record (_kind_label), plus device and precision where the records differ in them, plus
    the file name where two records would still read the same."""
    differ = {k: len({r.meta[k] for r in recs}) > 1 for k in ("device", "precision")}
    base = {}
    for i, r in enumerate(recs):
        extra = [r.meta[k] for k in ("device", "precision") if differ[k]]
        base[i] = _kind_label(r) + (f"@{'-'.join(extra)}" if extra else "")
    counts = {t: list(base.values()).count(t) for t in base.values()}
    out = {i: t if counts[t] == 1 else f"{t} ({recs[i].path.name})" for i, t in base.items()}
    counts = {t: list(out.values()).count(t) for t in out.values()}
    return {i: t if counts[t] == 1 else f"{base[i]} ({recs[i].path})" for i, t in out.items()}


def versions_of(recs: list[Record], names: dict[int, str]) -> dict[str, dict]:
    """The frameworks' versions the records name, by backend; by record label for the records of a
    backend whose records name different versions (two versions of one framework compared)."""
    by_backend: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by_backend.setdefault(r.backend, []).append(i)
    out = {}
    for backend, held in by_backend.items():
        seen = [dict(recs[i].meta.get("versions", {})) for i in held]
        if all(v == seen[0] for v in seen):
            out[backend] = seen[0]
        else:
            out.update({names[i]: v for i, v in zip(held, seen)})
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_of(path: Path, earlier: list[Path]) -> Path | None:
    """An earlier record with the same bytes: a copy compared with itself checks nothing."""
    try:
        same_size = [q for q in earlier if q.stat().st_size == path.stat().st_size]
        return next((q for q in same_size if _digest(q) == _digest(path)), None) if same_size else None
    except OSError:
        return None
