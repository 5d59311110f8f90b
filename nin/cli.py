"""The `nin` command.

    nin summary      shapes, parameters, MACs and memory of a variant or a JSON spec
    nin record       one backend's conformance record, written in that backend's own environment
    nin compare      records against the float64 reference and each other: the matrix
    nin conformance  record every installed backend, then compare (the README's main job)
    nin error-model  the spreads behind every tolerance: show them, or measure and store them
    nin bench        throughput per backend (benchmarks/runner.py)
    nin data         Fashion-MNIST: find it, or download it, and verify it (`make setup` runs it)

Exit status (docs/bad-inputs.md): 0 done and every check passed; 1 a check failed, a record or a
benchmark configuration failed (the sweep goes on and says so), or an internal error; 2 input that
cannot work (a flag, a spec, a data file, an output path, no GPU), with one line naming the file or
flag, the field and what was expected; 3 the backend's framework is not installed; 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM): temporary files are removed, finished files are kept whole.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks import runner
from common import backends, calc, records, tables
from common import spec as specs
from common.backends import BackendError
from common.calc import CostError
from common.cases import DATA_PARALLEL_PROBE, PROBE, PROBE_CASES, Cases
from common.data import DataError
from common.fsio import OutputError, atomic_write_text, check_writable, exclusive, remove_stale_temporaries
from common.records import RecordError
from common.spec import SpecError
from common.weights import WeightsError
from conformance import distributed
from harness import flags, processes
from idioms import cli as idioms_cli
from training import cli as training_cli

ROOT = backends.ROOT
PRECISIONS = ("fp32", "fp64", "fast")


class UsageError(ValueError):
    """A flag or argument that cannot work; the message names it."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (with where to look) instead of the usage and the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _spec_from(args) -> specs.NetSpec:
    return specs.NetSpec.from_json_file(args.spec) if getattr(args, "spec", None) else specs.get(args.variant)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- summary -------------------------------------------------------------------------------
def cmd_summary(args) -> int:
    spec = _spec_from(args)
    s = calc.summary(spec, args.batch_size, args.dtype)
    rows = calc.summary_rows(spec, args.depth)
    if args.json:
        out = s.to_dict()
        out["ops"] = out.pop("layers")  # every op (conv, bn, relu, ...) apart
        out["layers"] = calc.spec_layers(spec)  # one per spec layer, as the network is written
        out["trainable_params"], out["non_trainable_params"] = s.total_params, s.total_state
        out["rows"] = rows  # the table's rows at --depth
        print(json.dumps(out, indent=2))
        return 0
    c, h, w = spec.input_shape
    print(f"{spec.name}: input {c}x{h}x{w}, {spec.num_classes} classes, batch {args.batch_size}, {args.dtype}")
    header = ("#", "layer", "type", "arguments", "output", "trainable", "non-trainable", "MACs", "activations")
    table = [(r["index"], "  " * (r["depth"] - 1) + r["name"], r["type"], r["details"],
              "x".join(map(str, r["output_shape"])), f"{r['trainable']:,}", f"{r['non_trainable']:,}",
              f"{r['macs']:,}", f"{r['activations']:,}") for r in rows]
    print("\n".join(tables.text(header, table, right=(5, 6, 7, 8))))
    print()
    flops = f"({s.forward_flops / 1e9:.3f} GFLOP forward, {s.train_flops / 1e9:.3f} GFLOP train)"
    print(f"parameters          {s.total_params + s.total_state:,}: {s.total_params:,} trainable, "
          f"{s.total_state:,} non-trainable" + (" (batch norm's running means and variances)" if s.total_state else ""))
    print(f"MACs per image      {s.total_macs:,}  {flops}")
    print(f"activations/image   {s.activations:,} elements kept for backward")
    print(f"weights             {_mib(s.weights_bytes)}")
    print(f"training memory     {_mib(s.train_memory_bytes)}  "
          f"(weights + grads + momentum + activations, batch {args.batch_size})")
    print(f"inference memory    {_mib(s.inference_memory_bytes)}  (weights + largest consecutive pair of activations)")
    if args.depth == 1 and any(r["type"] == "NiNBlock" for r in rows):
        print("(--depth 2 lists each block's convolutions, batch norms and ReLUs)")
    return 0


# --- record / compare / conformance ----------------------------------------------------------
def _variants(args) -> list[str]:
    """Named variants, or JSON spec files (made absolute: the worker runs from the repository).
    Each name once: two different networks under one name would overwrite each other in a record.
    With --quick, the quick tier's one network (common.cases.PROBE), and no --variant."""
    if getattr(args, "quick", False):
        if args.variant or getattr(args, "compile_variants", None):
            raise UsageError("--quick records its own small network (common.cases.PROBE): "
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


def run_record(backend: str, variants: list[str], *, device: str, precision: str, compile: str, out: Path,
               quiet: bool = False, timeout: float | None = None, quick: bool = False,
               resume_from: Path | None = None, devices: int = 1,
               sync_batch_norm: bool = False) -> subprocess.CompletedProcess:
    """Run conformance.record in the backend's own interpreter and environment (MXNet's is .venv-mxnet).
    Its exit status is the worker's (conformance.record.main), 124 after `timeout`; a timeout or an
    interruption asks the worker to stop and clean up first. Nothing it began is left behind.
    quick: the quick tier's case (common.cases.PROBE) instead of `variants`; resume_from: a resume record
    of that record's variants (the cross-framework resume case); devices > 1: the data-parallel case on
    that many replicas (conformance.distributed), with the synchronised batch norm if sync_batch_norm."""
    out = Path(out).resolve()
    what = (["--resume-from", str(Path(resume_from).resolve())] if resume_from else ["--quick"] if quick
            else ["--variant", *variants])
    what += ["--devices", str(devices)] + (["--sync-batch-norm"] if sync_batch_norm else [])
    cmd = processes.worker_command(backend, "conformance.record", [
        "--backend", backend, "--device", device, "--precision", precision, "--compile", compile,
        "--out", str(out), *what])
    try:
        r = processes.run(cmd, env=processes.environment_for(backend), timeout=timeout, capture=quiet)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 3, "", f"cannot start {cmd[0]}: {e.strerror or e}")
    finally:
        remove_stale_temporaries(out)  # a worker killed (SIGKILL: out of memory, past its grace) leaves one
    return r


def record_name(backend: str, *, device: str, precision: str, compile: str, devices: int = 1,
                sync_batch_norm: bool = False) -> str:
    if devices > 1:  # the data-parallel case (records/data-parallel/)
        return f"{backend}-{device}-{precision}-dp{devices}{'-syncbn' if sync_batch_norm else ''}.safetensors"
    return f"{backend}-{device}-{precision}-{compile}.safetensors"


def cmd_record(args) -> int:
    variants = _variants(args)
    folder = Path("records") / ("quick" if args.quick else "data-parallel" if args.devices > 1 else "")
    out = Path(args.out or folder / record_name(args.backend, device=args.device, precision=args.precision,
                                                compile=args.compile, devices=args.devices,
                                                sync_batch_norm=args.sync_batch_norm))
    if args.sync_batch_norm and args.devices < 2:
        raise UsageError(f"--sync-batch-norm: needs --devices 2 or more, got --devices {args.devices}")
    check_writable(out, "--out")
    _not_an_input(out, "--out", [v for v in variants if v.endswith(".json")])
    _recordable(args, variants, precisions=[args.precision])
    _not_another_record(out, args, label=(args.backend, args.device, args.precision, args.compile),
                        variants=variants)
    with exclusive(out, "--out"):  # a second `nin record` to this file is refused while this one runs
        r = run_record(args.backend, variants, device=args.device, precision=args.precision, compile=args.compile,
                       out=out, quiet=True, timeout=args.timeout, quick=args.quick, devices=args.devices,
                       sync_batch_norm=args.sync_batch_norm)
    if r.returncode == 0:
        print(out)
        return 0
    print(f"nin record: {args.backend}: {_worker_failure(r)}", file=sys.stderr)
    return r.returncode if r.returncode in (2, 3, 124) else 1


def _recordable(args, variants: list[str], *, precisions: list[str]) -> None:
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


def _not_another_record(out: Path, args, *, label: tuple, variants: list[str]) -> None:
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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _worker_failure(r: subprocess.CompletedProcess) -> str:
    """What a worker's failure was, in one line."""
    if r.returncode < 0:
        name = {9: "SIGKILL (out of memory?)", 15: "SIGTERM", 2: "SIGINT", 6: "SIGABRT", 11: "SIGSEGV"}.get(
            -r.returncode, str(-r.returncode))
        return f"the worker was killed by signal {name}; its last line: {_last_line(r.stderr)}"
    return _last_line(r.stderr)


def _resolved(path, flag: str) -> Path:
    """The absolute path with links followed; a loop of symbolic links is a UsageError naming the flag
    (Python 3.11's resolve() raises RuntimeError for it)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise UsageError(f"{flag} {path}: cannot be followed: {getattr(e, 'strerror', None) or e}") from None


def _not_an_input(out: Path, flag: str, inputs: list) -> None:
    """Refuse to write over a file this command reads."""
    for p in inputs:
        if _resolved(p, "input") == _resolved(out, flag):
            raise UsageError(f"{flag} {out} is also an input of this command: it would be overwritten")


def _matrix_outputs(args, inputs: list) -> dict[str, Path]:
    """--report and --json-out, each checked before the work: writable, not an input, not one file."""
    outputs = {}
    for flag in ("report", "json_out"):
        path = getattr(args, flag, None)
        if path:
            name = f"--{flag.replace('_', '-')}"
            check_writable(path, name)
            _not_an_input(Path(path), name, inputs)
            outputs[name] = Path(path)
    if len({_resolved(p, "--report") for p in outputs.values()}) < len(outputs):
        raise UsageError(f"--report and --json-out are the same file, {args.report}: one would overwrite the other")
    return outputs


def _existing_files(paths: list, what: str) -> None:
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


def cmd_compare(args) -> int:
    _existing_files(args.records, "record")
    outputs = _matrix_outputs(args, args.records)
    with contextlib.ExitStack() as held:
        for flag, path in outputs.items():
            held.enter_context(exclusive(path, flag))  # a second writer of the report is refused meanwhile
        return _compare_and_write(args)


def _compare_and_write(args) -> int:
    """Compare args.records, print the matrix and write --report and --json-out (their locks held)."""
    from conformance import compare, matrix

    result = compare.compare(args.records, use_cache=not args.no_cache,
                             progress=None if args.json else lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    text = matrix.render(result)
    print(json.dumps(matrix.to_json(result), indent=2) if args.json else text)
    if args.report:  # Markdown tables for a browser, the heatmap beside it as .png and .html
        matrix.write_report(result, args.report)
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(matrix.to_json(result), indent=2) + "\n")
    return 0 if result.passed else 1


def _compiled_only(args, variants: list[str]) -> set[str] | None:
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


def cmd_conformance(args) -> int:
    variants = _variants(args)
    compiled = _compiled_only(args, variants)
    outputs = _matrix_outputs(args, [v for v in variants if v.endswith(".json")])
    outdir = Path(args.out_dir or (Path("records") / "quick" if args.quick else "records"))
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--out-dir {outdir} is a file, not a folder")
    check_writable(outdir / record_name("probe", device=args.device, precision="fp32", compile="eager"), "--out-dir")
    jobs = _conformance_jobs(args, variants, compiled, outdir)
    _recordable(args, variants, precisions=args.precision)
    for name, precision, compile, chosen, out in jobs:
        check_writable(out, "--out-dir")
        _not_another_record(out, args, label=(name, args.device, precision, compile), variants=chosen)
    with contextlib.ExitStack() as held:  # every file this sweep writes: a second writer is refused meanwhile
        for path, flag in [(job[4], "--out-dir") for job in jobs] + [(p, f) for f, p in outputs.items()]:
            held.enter_context(exclusive(path, flag))
        return _record_and_compare(args, variants, jobs)


def _conformance_jobs(args, variants: list[str], compiled: set[str] | None, outdir: Path) -> list[tuple]:
    """(backend, precision, compile, variants, record path) of every record the sweep makes."""
    modes = ["eager"] if args.quick else args.compile  # the quick tier: eager only
    plan = [(b, p, c) for b in (args.backend or list(backends.BACKENDS)) for p in args.precision for c in modes
            if c in backends.get(b).compile_modes]
    jobs = []
    for name, precision, compile in plan:
        chosen = variants if compile == "eager" or compiled is None else [v for v in variants if v in compiled]
        if chosen:
            jobs.append((name, precision, compile, chosen,
                         outdir / record_name(name, device=args.device, precision=precision, compile=compile)))
    return jobs


def _record_and_compare(args, variants: list[str], jobs: list[tuple]) -> int:
    """Record every job, the longest first, then compare what was made; 1 when a record failed."""
    # The longest first, so that the workers finish together: how long each took last time on this
    # machine, else a guess (a compiled record about twice its eager one, float64 1.3 times float32).
    # The matrix lists the records in the registry's order whatever order they were made in.
    took = _record_seconds()
    cost = {i: took.get(_job_key(job), len(job[3]) * 60.0 * (2.0 if job[2] == "compiled" else 1.0)
                        * (1.3 if job[1] == "fp64" else 1.0)) for i, job in enumerate(jobs)}
    order = sorted(range(len(jobs)), key=lambda i: -cost[i])
    cases = PROBE_CASES if args.quick else Cases()
    references = None if args.no_cache else _references_ahead(
        [PROBE] if args.quick else [specs.get(v) for v in variants], cases)
    results = _record_all([jobs[i] for i in order], args, workers=args.jobs)
    results = {order[k]: r for k, r in results.items()}
    made, skipped, failed = [], [], []
    for i, (name, precision, compile, _chosen, out) in enumerate(jobs):
        r = results[i]
        if r.returncode == 3:
            skipped.append(f"{name}: {_last_line(r.stderr)}")
        elif r.returncode != 0:  # recorded, and the sweep goes on; the exit status says so
            failed.append(f"{name} {precision} {compile}: {_worker_failure(r)}")
        else:
            made.append(out)
    if references:
        references.join()
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    for line in failed:
        print(f"nin conformance: recording failed: {line}", file=sys.stderr)
    if not made:
        print("nin conformance: no backend could be recorded", file=sys.stderr)
        return 1
    resumed, resume_failed = _resume_all(args, jobs, made)
    parallel, parallel_failed = _data_parallel_all(args, variants, jobs, made)
    failed += resume_failed + parallel_failed
    args.records = [str(p) for p in made + resumed + parallel]
    status = _compare_and_write(args)
    return 1 if failed else status


# The cross-framework resume case: each backend continues the next one's midpoint checkpoint, a ring
# over the registry in which every backend saves once and resumes once per precision.
RESUME_RING = ("torch", "jax", "keras-tf", "mxnet", "keras-jax", "keras-torch")


def resume_pairs(available: list[str]) -> list[tuple[str, str]]:
    """(source, target) pairs of the ring among the backends recorded, in ring order (a lone backend
    resumes its own checkpoint, in a fresh process)."""
    ring = [b for b in RESUME_RING if b in available] + [b for b in available if b not in RESUME_RING]
    return [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))]  # one backend: its own checkpoint


def _resume_all(args, jobs: list[tuple], made: list[Path]) -> tuple[list[Path], list[str]]:
    """Resume records (nin record --resume-from) of the ring's pairs, from the eager records just made,
    `--jobs` at a time; (made, failures)."""
    from concurrent.futures import ThreadPoolExecutor

    eager = {(j[0], j[1]): j[4] for j in jobs if j[2] == "eager" and j[4] in made}
    pairs = [(source, target, precision) for precision in args.precision
             for source, target in resume_pairs([b for b, p in eager if p == precision])]

    def one(pair):
        source, target, precision = pair
        name = f"{source}-to-{target}-{args.device}-{precision}.safetensors"
        path = eager[source, precision].parent / "resume" / name
        return path, run_record(target, [], device=args.device, precision=precision, compile="eager", out=path,
                                quiet=True, timeout=args.timeout, resume_from=eager[source, precision])

    out, failed = [], []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for (source, target, precision), (path, r) in zip(pairs, pool.map(one, pairs)):
            if r.returncode == 0:
                out.append(path)
                if not args.json:
                    print(f"  {target} {precision}: resumed {source}'s checkpoint -> {path}", file=sys.stderr)
            elif r.returncode == 3:  # the framework is not installed here: as in the sweep, skipped
                print(f"skipped resuming {source} in {target}: {_last_line(r.stderr)}", file=sys.stderr)
            else:
                failed.append(f"{target} {precision} resuming {source}: {_worker_failure(r)}")
    return out, failed


def _data_parallel_all(args, variants: list[str], jobs: list[tuple], made: list[Path]) -> tuple[list[Path], list[str]]:
    """The data-parallel case (conformance.distributed.plan) of every backend recorded in fp64, one
    record at a time: each one's replicas are processes or devices of their own; (made, failures)."""
    recorded = list(dict.fromkeys(j[0] for j in jobs if j[1] == "fp64" and j[4] in made))
    chosen = [DATA_PARALLEL_PROBE, PROBE] if args.quick else variants
    out, failed = [], []
    for name in recorded:
        for devices, sync, held in distributed.plan(chosen, args.devices):
            path = jobs[0][4].parent / "data-parallel" / record_name(name, device=args.device, precision="fp64",
                                                                      compile="eager", devices=devices,
                                                                      sync_batch_norm=sync)
            r = run_record(name, [v for v in held if isinstance(v, str)], device=args.device, precision="fp64",
                           compile="eager", out=path, quiet=True, timeout=args.timeout, quick=args.quick,
                           devices=devices, sync_batch_norm=sync)
            if r.returncode == 0:
                out.append(path)
            elif r.returncode == 3:  # not installed, or not possible here (torch's SyncBatchNorm on a CPU)
                print(f"skipped {name} on {devices} replicas: {_last_line(r.stderr)}", file=sys.stderr)
            else:
                failed.append(f"{name} on {devices} replicas: {_worker_failure(r)}")
    return out, failed


def _record_all(jobs: list[tuple], args, *, workers: int) -> dict[int, subprocess.CompletedProcess]:
    """Run the record jobs, `workers` at a time (each in its backend's own process), with one
    progress bar; each one's result by its index in `jobs`. An interruption stops every worker
    (processes.stop_all: each removes its temporary file) and is raised again."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    def one(i: int):
        name, precision, compile, chosen, out = jobs[i]
        t = time.time()
        r = run_record(name, chosen, device=args.device, precision=precision, compile=compile, out=out, quiet=True,
                       timeout=args.timeout, quick=args.quick)
        return i, r, time.time() - t

    results, seconds_of = {}, {}
    bar = tqdm(total=len(jobs), desc="recording", unit="record", disable=args.json, file=sys.stderr,
               dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for future in as_completed([pool.submit(one, i) for i in range(len(jobs))]):
            i, r, seconds = future.result()
            results[i] = r
            name, precision, compile, chosen, out = jobs[i]
            if r.returncode == 0:
                seconds_of[_job_key(jobs[i])] = seconds
            if r.returncode == 0 and not args.json:
                tqdm.write(f"  {name} {precision} {compile}: {len(chosen)} variant(s) in {seconds:.0f} s -> {out}",
                           file=sys.stderr)
            bar.update()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        processes.stop_all()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    _record_seconds(seconds_of)
    return results


def _job_key(job: tuple) -> str:
    name, precision, compile, chosen, _ = job
    return f"{name} {precision} {compile} {' '.join(chosen)}"


def _record_seconds(update: dict[str, float] | None = None) -> dict[str, float]:
    """How long each kind of record took when last made here (the suite's cache folder): the order
    of the next sweep. A missing or damaged file is no history."""
    from common.cases import cache_dir

    path = cache_dir() / "record-seconds.json"
    try:
        known = json.loads(path.read_text())
        known = {k: float(v) for k, v in known.items()} if isinstance(known, dict) else {}
    except (OSError, ValueError, TypeError):
        known = {}
    if update:
        known.update(update)
        try:
            atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only cache: the next sweep guesses again
            pass
    return known


def _references_ahead(specs_: list, cases):
    """A started thread that computes the float64 reference of each variant (as every kind of kernel
    sees it) while the backends record, so that the comparison finds them cached (common.cases: on
    disk). Both kinds always (MXNet's float32 hyperparameters too, even when MXNet is not installed:
    about 9 s per variant, once, then cached). Best effort: whatever fails here is computed again, and
    reported, by the comparison. A daemon: an interruption does not wait for it."""
    import threading

    from common.cases import HYPERPARAMETERS, as_kernels_see, reference_results

    def run() -> None:
        for spec in specs_:
            for kind in HYPERPARAMETERS:
                try:
                    reference_results(*as_kernels_see(spec, cases, kind))
                except Exception:  # noqa: BLE001 - the comparison computes it again and says what is wrong
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- error model -----------------------------------------------------------------------------
_SHOWN = ("logits", "loss", "grad/", "trajectory", "final/", "momentum/trajectory", "momentum/final/")


def cmd_error_model(args) -> int:
    import numpy as np

    from common import errormodel, weights
    from common.cases import Cases, reference_results
    from conformance.compare import as_updates

    cases = Cases()
    rows, entries = [], {}
    progress = (lambda m: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    for name in _variants(args):
        spec = specs.get(name)
        records.check_recordable(spec, cases, f"--variant {name}")  # the spreads repeat the reference's work
        calc.check_memory(records.record_memory(spec, cases, "fp64"), what=f"--variant {name}: its float64 runs")
        ref = as_updates(reference_results(spec, cases), weights.init(spec, cases.init_seed))
        for precision in args.precision:
            if args.write:
                entries[errormodel.key(spec, cases, precision)] = {
                    "variant": spec.name, "precision": precision, "unit": errormodel.UNITS[precision],
                    "members": errormodel.MEMBERS,
                    "spreads": errormodel.compute_spreads(spec, cases, precision, progress=progress)}
                errormodel.store(entries)  # as it goes: an interrupted run keeps what it measured
            spread = entries[errormodel.key(spec, cases, precision)]["spreads"] if args.write else \
                errormodel.spreads(spec, cases, precision, progress=progress)
            worst = []
            for kind in _SHOWN:
                keys = [k for k in ref if (k.startswith(kind) if kind.endswith("/") else k == kind)]
                scale = {k: np.abs(ref[k]).reshape(-1) if errormodel.measure(kind) == "max"
                         else np.linalg.norm(ref[k]) for k in keys}
                worst.append(max(float(np.max(np.asarray(spread[k]) / np.maximum(scale[k], 1e-300))) for k in keys))
            rows.append([spec.name, precision, *worst])
    if args.write:
        print(f"wrote {errormodel.STORE}", file=sys.stderr)
    header = ["variant", "precision"] + [k.rstrip("/") for k in _SHOWN]
    if args.json:
        print(json.dumps({"relative_spread": [dict(zip(header, r)) for r in rows], "store": str(errormodel.STORE)},
                          indent=2))
        return 0
    print("Largest spread of each quantity relative to its size (elementwise |reference|, or ||reference||; "
          "weights as updates):")
    print("\n".join(tables.text(header, [r[:2] + [f"{w:.1e}" for w in r[2:]] for r in rows])))
    return 0


# --- data ----------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    """Fashion-MNIST available and verified, downloaded once where it is missing (`make setup`)."""
    from common import data

    found = data.ensure(args.data_dir, download=not args.no_download)
    if args.json:
        print(json.dumps({"files": {k: str(v) for k, v in found.items()}, "verified": "sha256"}, indent=2))
        return 0
    folders = sorted({str(p.parent) for p in found.values()})
    print(f"Fashion-MNIST: {len(found)} files, sha256 verified, in {', '.join(folders)}")
    return 0


# --- the parser --------------------------------------------------------------------------
def _add_spec_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--variant", default="d2l", choices=sorted(specs.VARIANTS), help="a named network (default d2l)")
    g.add_argument("--spec", metavar="FILE", type=flags.path,
                   help="a network spec as JSON (the format: docs/architecture.md)")


def _record_args(q, many: bool) -> None:
    names = sorted(backends.BACKENDS)
    if many:
        q.add_argument("--backend", nargs="+", action=flags.Distinct, choices=names, metavar="NAME",
                       help=f"backends to record (default: all of {', '.join(names)})")
        q.add_argument("--precision", nargs="+", action=flags.Distinct, choices=PRECISIONS, default=["fp32", "fp64"],
                       help="fp32 (TF32 off, deterministic), fp64 (float64 everywhere), fast (TF32 / bf16 allowed); "
                            "default: fp32 fp64")
        q.add_argument("--compile", nargs="+", action=flags.Distinct, choices=("eager", "compiled"),
                       default=["eager", "compiled"], help="eager and/or each framework's compiler (default: both)")
        q.add_argument("--compile-variants", nargs="+", action=flags.Distinct, metavar="VARIANT",
                       help="record compiled mode for these variants only (compilation is slow on a CPU)")
        q.add_argument("--devices", nargs="+", type=flags.count(1, records.MAX_DEVICES), default=[2, 4], metavar="N",
                       help="replica counts of the data-parallel case, fp64 (docs/distributed.md); default 2 4; "
                            "1: none")
    else:
        q.add_argument("--backend", required=True, choices=names, metavar="NAME", help=", ".join(names))
        q.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), fp64 or fast")
        q.add_argument("--compile", choices=("eager", "compiled"), default="eager", help="eager (default) or compiled")
        q.add_argument("--devices", type=flags.count(1, records.MAX_DEVICES), default=1, metavar="N",
                       help="the data-parallel case on N replicas of the framework's own engine (simulated on a "
                            "CPU; docs/distributed.md): the constant-rate runs only (default 1: the full record)")
        q.add_argument("--sync-batch-norm", action="store_true",
                       help="with --devices: the framework's synchronised batch norm instead of its default")
    q.add_argument("--variant", nargs="+", action=flags.Distinct,
                   help="variants (names or .json spec files) to record (default: all)")
    q.add_argument("--quick", action="store_true",
                   help="the quick tier: a small probe network (common.cases.PROBE) instead of the variants, eager "
                        "only; the case every planted bug is judged on (records/quick/ by default)")
    q.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where the backend computes (default cpu)")
    q.add_argument("--timeout", type=flags.seconds, default=3600, help="seconds allowed per record (default 3600)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing record even when it holds another backend, device, precision, compile "
                        "mode or variant (refused without it: that record would be lost)")


def _matrix_args(q) -> None:
    q.add_argument("--json", action="store_true", help="print one JSON object instead of the matrix")
    q.add_argument("--report", metavar="FILE", type=flags.path, help="also write the matrix to this Markdown file")
    q.add_argument("--json-out", metavar="FILE", type=flags.path, help="also write the JSON to this file")
    q.add_argument("--no-cache", action="store_true", help="recompute the float64 reference")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nin",
                                description="Network in Network in four frameworks, and the proof they agree.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs; memory for training and inference")
    _add_spec_args(s)
    s.add_argument("--batch-size", type=flags.count(1, 1_000_000), default=1,
                   help="images per batch, for the memory figures (default 1)")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="element type of weights and activations, for the memory figures (default float32)")
    s.add_argument("--depth", type=flags.count(1, 10), default=1,
                   help="1 (default): one row per layer as the network is written; 2: each NiN block's "
                        "convolutions, batch norms and ReLUs below it")
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    s.set_defaults(func=cmd_summary)

    r = sub.add_parser("record", help="write one backend's conformance record (runs in that backend's environment)")
    _record_args(r, False)
    r.add_argument("--out", type=flags.path,
                   help="record file (default records/<backend>-<device>-<precision>-<compile>.safetensors)")
    r.set_defaults(func=cmd_record)

    c = sub.add_parser("compare", help="compare records with the reference and with each other")
    c.add_argument("records", nargs="+", type=flags.path, help="record files")
    _matrix_args(c)
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("conformance", help="record every installed backend and compare (the main job)")
    _record_args(k, True)
    k.add_argument("--out-dir", type=flags.path,
                   help="where the records go (default records/, records/quick/ with --quick)")
    k.add_argument("--jobs", type=flags.count(1, 64), default=min(4, os.cpu_count() or 1),
                   help="records made at once, each in its own process (default: the CPUs, at most 4)")
    _matrix_args(k)
    k.set_defaults(func=cmd_conformance)

    e = sub.add_parser("error-model", help="the spreads behind every tolerance (common/error_model.json)")
    e.add_argument("--variant", nargs="+", action=flags.Distinct, help="variants (default: all)")
    e.add_argument("--precision", nargs="+", action=flags.Distinct, choices=PRECISIONS, default=list(PRECISIONS),
                   help="precisions whose spreads to show (default: all)")
    e.add_argument("--write", action="store_true", help="measure again and store in common/error_model.json")
    e.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    e.set_defaults(func=cmd_error_model)

    b = sub.add_parser("bench", help="training and inference throughput per backend")
    runner.add_arguments(b)
    b.set_defaults(func=runner.main)

    d = sub.add_parser("data", help="Fashion-MNIST: find it or download it (once), and verify it (sha256)")
    d.add_argument("--data-dir", metavar="DIR", type=flags.path,
                   help="look (and download) here only (default: $NIN_DATA_DIR, ../shared/data/fashion-mnist, "
                        "~/.cache/nin/fashion-mnist)")
    d.add_argument("--no-download", action="store_true", help="only find and verify; fail if a file is missing")
    d.add_argument("--json", action="store_true", help="one JSON object: where each file is")
    d.set_defaults(func=cmd_data)

    training_cli.add_commands(sub)  # train, plot, lr-find: training/cli.py
    idioms_cli.add_commands(sub)  # idioms: idioms/cli.py
    return p


def main(argv=None) -> int:
    with processes.sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: temporary files are removed
        try:
            args = parser().parse_args(argv)
            return args.func(args)
        except SpecError as e:
            print(f"nin: bad spec: {_one_line(e)}", file=sys.stderr)
        except (RecordError, WeightsError, DataError, OutputError, BackendError, UsageError, CostError) as e:
            print(f"nin: {_one_line(e)}", file=sys.stderr)
        except OSError as e:
            print(f"nin: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        except KeyboardInterrupt as e:
            how = e.name if isinstance(e, processes.Interrupted) else "Ctrl-C"
            print(f"nin: interrupted ({how}); finished files are whole, temporary files removed", file=sys.stderr)
            return processes.interrupted_status(e)
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("NIN_TRACEBACK"):
                traceback.print_exc()
            print(f"nin: internal error: {type(e).__name__}: {_one_line(e)} (NIN_TRACEBACK=1 shows where)",
                  file=sys.stderr)
            return 1
    return 2


def _version() -> str:
    """The suite's version as installed (pyproject.toml), else "unknown" (run from a plain checkout)."""
    from importlib import metadata

    try:
        return metadata.version("nin-suite")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
