"""The conformance sweep: record workers run in each backend's own process, then the comparison.

    run_record          one record, by `python -m conformance.record` in the backend's interpreter
    record_and_compare  `nin conformance`'s records, the longest first, `--jobs` at a time; then the
                        cross-framework resume ring and the data-parallel case; then the matrix
    compare_and_write   the matrix printed, and written to --report and --json-out

Exit statuses are the workers' (conformance.record.main): 3 where the framework is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import backends
from common import spec as specs
from common.fsio import atomic_write_text, cache_dir, remove_stale_temporaries
from harness import processes

from . import distributed
from .cases import DATA_PARALLEL_PROBE, HYPERPARAMETERS, PROBE, PROBE_CASES, Cases, as_kernels_see, reference_results


def run_record(backend: str, variants: list[str], *, device: str, precision: str, compile: str, out: Path,
               quiet: bool = False, timeout: float | None = None, quick: bool = False,
               resume_from: Path | None = None, devices: int = 1,
               sync_batch_norm: bool = False) -> subprocess.CompletedProcess:
    """Run conformance.record in the backend's own interpreter and environment (MXNet's is .venv-mxnet).
    Its exit status is the worker's (conformance.record.main), 124 after `timeout`; a timeout or an
    interruption asks the worker to stop and clean up first. Nothing it began is left behind.
    quick: the quick tier's case (conformance.cases.PROBE) instead of `variants`; resume_from: a resume record
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


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def worker_failure(r: subprocess.CompletedProcess) -> str:
    """What a worker's failure was, in one line."""
    if r.returncode < 0:
        name = {9: "SIGKILL (out of memory?)", 15: "SIGTERM", 2: "SIGINT", 6: "SIGABRT", 11: "SIGSEGV"}.get(
            -r.returncode, str(-r.returncode))
        return f"the worker was killed by signal {name}; its last line: {last_line(r.stderr)}"
    return last_line(r.stderr)


def compare_and_write(args) -> int:
    """Compare args.records, print the matrix and write --report and --json-out (their locks held)."""
    from . import compare, matrix  # the comparison's modules load only when it runs

    result = compare.compare(args.records, use_cache=not args.no_cache,
                             progress=None if args.json else lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    text = matrix.render(result)
    print(json.dumps(matrix.to_json(result), indent=2) if args.json else text)
    if args.report:  # Markdown tables for a browser, the heatmap beside it as .png and .html
        matrix.write_report(result, args.report)
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(matrix.to_json(result), indent=2) + "\n")
    return 0 if result.passed else 1


def conformance_jobs(args, variants: list[str], compiled: set[str] | None, outdir: Path) -> list[tuple]:
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


def record_and_compare(args, variants: list[str], jobs: list[tuple]) -> int:
    """Record every job, the longest first, then compare what was made; 1 when a record failed."""
    # The longest first, so that the workers finish together: how long each took last time on this
    # machine, else a guess (a compiled record about twice its eager one, float64 1.3 times float32).
    # The matrix lists the records in the registry's order whatever order they were made in.
    took = _record_seconds()
    cost = {i: took.get(_job_key(job), len(job[3]) * 60.0 * (2.0 if job[2] == "compiled" else 1.0)
                        * (1.3 if job[1] == "fp64" else 1.0)) for i, job in enumerate(jobs)}
    order = sorted(range(len(jobs)), key=lambda i: -cost[i])
    cases = PROBE_CASES if args.quick else Cases()
    references = None if args.no_cache else references_ahead(
        [PROBE] if args.quick else [specs.get(v) for v in variants], cases)
    results = _record_all([jobs[i] for i in order], args, workers=args.jobs)
    results = {order[k]: r for k, r in results.items()}
    made, skipped, failed = [], [], []
    for i, (name, precision, compile, _chosen, out) in enumerate(jobs):
        r = results[i]
        if r.returncode == 3:
            skipped.append(f"{name}: {last_line(r.stderr)}")
        elif r.returncode != 0:  # recorded, and the sweep goes on; the exit status says so
            failed.append(f"{name} {precision} {compile}: {worker_failure(r)}")
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
    status = compare_and_write(args)
    return 1 if failed else status


def resume_pairs(available: list[str]) -> list[tuple[str, str]]:
    """(source, target) pairs of the cross-framework resume case among the backends recorded: a ring in
    the registry's order, in which each backend continues the next one's midpoint checkpoint, so that every
    backend saves once and resumes once per precision (a lone backend resumes its own, in a fresh process)."""
    ring = [b for b in backends.BACKENDS if b in available] + [b for b in available if b not in backends.BACKENDS]
    return [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))]


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
                print(f"skipped resuming {source} in {target}: {last_line(r.stderr)}", file=sys.stderr)
            else:
                failed.append(f"{target} {precision} resuming {source}: {worker_failure(r)}")
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
                print(f"skipped {name} on {devices} replicas: {last_line(r.stderr)}", file=sys.stderr)
            else:
                failed.append(f"{name} on {devices} replicas: {worker_failure(r)}")
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


def references_ahead(specs_: list, cases):
    """A started thread that computes the float64 reference of each variant (as every kind of kernel
    sees it) while the backends record, so that the comparison finds them cached (conformance.cases: on
    disk). Both kinds always (MXNet's float32 hyperparameters too, even when MXNet is not installed:
    about 9 s per variant, once, then cached). Best effort: whatever fails here is computed again, and
    reported, by the comparison. A daemon: an interruption does not wait for it."""
    import threading

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
