"""What the conformance commands refuse before any work starts, each as one line naming the flag.

A refused command has written nothing and started no worker: an unknown or duplicate variant, a
network too large to record, an output that is an input or another record, a missing record file.
"""

from __future__ import annotations

import os
from pathlib import Path

from common import spec as specs
from common.fsio import check_writable
from harness import processes
from harness.flags import UsageError

from . import records
from .cases import PROBE, PROBE_CASES, Cases


def variants(args) -> list[str]:
    """Named variants, or JSON spec files (made absolute: the worker runs from the repository).
    Each name once: two different networks under one name would overwrite each other in a record.
    With --quick, the quick tier's one network (conformance.cases.PROBE), and no --variant."""
    if getattr(args, "quick", False):
        if args.variant or getattr(args, "compile_variants", None):
            raise UsageError("--quick records its own small network (conformance.cases.PROBE): "
                             "give no --variant or --compile-variants with it")
        return [PROBE.name]
    names = list(specs.VARIANTS) if args.variant in (None, ["all"]) else args.variant
    out, seen = [], {}
    for name in dict.fromkeys(names):
        spec = specs.get(name)  # a bad name or file fails here, with the list of good ones
        if spec.name in seen and seen[spec.name][1] != spec:
            raise UsageError(f"--variant: {seen[spec.name][0]} and {name} are different networks with one name, "
                             f"{spec.name!r}; rename one (its \"name\" field)")
        if spec.name in seen:
            continue
        seen[spec.name] = (name, spec)
        out.append(str(Path(name).resolve()) if name.endswith(".json") else name)
    return out


def recordable(args, variants: list[str], *, precisions: list[str]) -> None:
    """Before any worker starts: every network can be recorded (Fashion-MNIST's ten classes, reference
    work within what `nin compare` accepts: records.check_recordable) and fits in the memory of
    --device at the largest precision asked for. Refused with the --variant (or --quick) named."""
    cases = PROBE_CASES if args.quick else Cases()
    for name in variants:
        spec, where = (PROBE, "--quick") if args.quick else (specs.get(name), f"--variant {name}")
        records.check_recordable(spec, cases, where)
        precision = max(precisions, key=lambda p: records.record_memory(spec, cases, p))
        processes.check_memory(records.record_memory(spec, cases, precision), device=args.device,
                               what=f"recording {where} in {precision} on the {args.device}")


def _record_label(meta: dict) -> tuple:
    return tuple(meta.get(k) for k in ("backend", "device", "precision", "compile"))


def not_another_record(out: Path, args, *, label: tuple, variants: list[str]) -> None:
    """Refuse, unless --overwrite, to replace a file at `out` that is not a record, or a record that
    holds what this command will not write again (another backend, device, precision or compile
    mode; a variant it does not record, or records as another network): two `nin record` runs of
    different networks to one --out would otherwise both succeed, and the first record be lost."""
    if args.overwrite or not out.exists():
        return
    meta = records.peek(out)
    if meta is None or not isinstance(meta.get("variants"), dict):
        raise UsageError(f"--out {out} exists and is not a record; give another --out, or --overwrite to replace it")
    new = {PROBE.name: PROBE.to_dict()} if args.quick else {s.name: s.to_dict() for s in map(specs.get, variants)}
    old = meta["variants"]
    lost = sorted(name for name, info in old.items()
                  if name not in new or not isinstance(info, dict) or info.get("spec") != new[name])
    if _record_label(meta) != tuple(label) or lost:
        held = " ".join(map(str, _record_label(meta)))
        raise UsageError(f"--out {out} holds a {held} record of {sorted(old)}; this one would be "
                         f"{' '.join(label)} of {sorted(new)}, and {lost or sorted(old)} would be lost: give "
                         "another --out, or --overwrite to replace it")


def _resolved(path, flag: str) -> Path:
    """The absolute path with links followed; a loop of symbolic links is a UsageError naming the flag
    (Python 3.11's resolve() raises RuntimeError for it)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise UsageError(f"{flag} {path}: cannot be followed: {getattr(e, 'strerror', None) or e}") from None


def not_an_input(out: Path, flag: str, inputs: list) -> None:
    """Refuse to write over a file this command reads."""
    for p in inputs:
        if _resolved(p, "input") == _resolved(out, flag):
            raise UsageError(f"{flag} {out} is also an input of this command: it would be overwritten")


def matrix_outputs(args, inputs: list) -> dict[str, Path]:
    """--report and --json-out, each checked before the work: writable, not an input, not one file."""
    outputs = {}
    for flag in ("report", "json_out"):
        path = getattr(args, flag, None)
        if path:
            name = f"--{flag.replace('_', '-')}"
            check_writable(path, name)
            not_an_input(Path(path), name, inputs)
            outputs[name] = Path(path)
    if len({_resolved(p, "--report") for p in outputs.values()}) < len(outputs):
        raise UsageError(f"--report and --json-out are the same file, {args.report}: one would overwrite the other")
    return outputs


def existing_files(paths: list, what: str) -> None:
    """Refuse, before any work, a path that is not there or is not a file (a typo, an unexpanded glob)."""
    for path in paths:
        p = Path(path)
        if not p.exists() and os.path.lexists(p):
            raise UsageError(f"{what} {path}: a symbolic link that leads nowhere, or a loop of them")
        if not p.exists():
            raise UsageError(f"{what} {path}: no such file")
        if p.is_dir():
            raise UsageError(f"{what} {path}: a directory, not a {what} file")
        if not p.is_file():
            raise UsageError(f"{what} {path}: not a regular file")


def compiled_only(args, variants: list[str]) -> set[str] | None:
    """The variants to record in compiled mode too (--compile-variants), or None: all of them."""
    if args.compile_variants is None:
        return None
    names = {specs.get(v).name: v for v in variants}
    names.update({v: v for v in variants})
    asked = [str(Path(v).resolve()) if v.endswith(".json") else v for v in args.compile_variants]
    unknown = [v for v, a in zip(args.compile_variants, asked) if a not in names]
    if unknown:
        raise UsageError(f"--compile-variants: {unknown} not among the variants recorded, "
                         f"{sorted(specs.get(v).name for v in variants)}")
    return {names[a] for a in asked}
