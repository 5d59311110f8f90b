"""The `nin` command.

    nin summary      shapes, parameters, MACs and memory of a variant or a JSON spec
    nin record       one backend's conformance record, written in that backend's own environment
    nin compare      records against the float64 reference and each other: the matrix
    nin conformance  record every installed backend, then compare (the README's main job)
    nin error-model  the spreads behind every tolerance: show them, or measure and store them
    nin bench        throughput per backend (benchmarks/runner.py)

Bad input ends with one line naming the file, flag or field and what was expected, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import runner
from common import backends, calc, tables
from common import spec as specs
from common.backends import BackendError
from common.data import DataError
from common.fsio import OutputError, atomic_write_text, check_writable
from common.records import RecordError
from common.spec import SpecError
from common.weights import WeightsError
from harness import processes
from idioms import cli as idioms_cli
from training import cli as training_cli

ROOT = backends.ROOT
PRECISIONS = ("fp32", "fp64", "fast")


class UsageError(ValueError):
    """A flag or argument that cannot work; the message names it."""


def _count(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 7 * 24 * 3600:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 and below a week, got {text!r}")
    return value


def _spec_from(args) -> specs.NetSpec:
    return specs.NetSpec.from_json_file(args.spec) if getattr(args, "spec", None) else specs.get(args.variant)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- summary -------------------------------------------------------------------------------
def cmd_summary(args) -> int:
    spec = _spec_from(args)
    s = calc.summary(spec, args.batch_size, args.dtype)
    rows = calc.spec_layers(spec)
    if args.json:
        out = s.to_dict()
        out["ops"] = out.pop("layers")  # every op (conv, bn, relu, ...) apart
        out["layers"] = rows  # one per spec layer, as the network is written
        print(json.dumps(out, indent=2))
        return 0
    c, h, w = spec.input_shape
    print(f"{spec.name}: input {c}x{h}x{w}, {spec.num_classes} classes, batch {args.batch_size}, {args.dtype}")
    header = ("#", "layer", "output", "params", "MACs", "activations")
    table = [(r["index"], r["name"], "x".join(map(str, r["output_shape"])), f"{r['params']:,}", f"{r['macs']:,}",
              f"{r['activations']:,}") for r in rows]
    print("\n".join(tables.text(header, table, right=(0, 3, 4, 5))))
    print()
    state = f" (+{s.total_state:,} batch-norm statistics)" if s.total_state else ""
    flops = f"({s.forward_flops / 1e9:.3f} GFLOP forward, {s.train_flops / 1e9:.3f} GFLOP train)"
    print(f"parameters          {s.total_params:,}{state}")
    print(f"MACs per image      {s.total_macs:,}  {flops}")
    print(f"activations/image   {s.activations:,} elements kept for backward")
    print(f"weights             {_mib(s.weights_bytes)}")
    print(f"training memory     {_mib(s.train_memory_bytes)}  "
          f"(weights + grads + momentum + activations, batch {args.batch_size})")
    print(f"inference memory    {_mib(s.inference_memory_bytes)}  (weights + largest consecutive pair of activations)")
    return 0


# --- record / compare / conformance ----------------------------------------------------------
def _variants(args) -> list[str]:
    """Named variants, or JSON spec files (made absolute: the worker runs from the repository)."""
    names = list(specs.VARIANTS) if args.variant in (None, ["all"]) else args.variant
    out = []
    for name in names:
        specs.get(name)  # a bad name or file fails here, with the list of good ones
        out.append(str(Path(name).resolve()) if name.endswith(".json") else name)
    return out


def run_record(backend: str, variants: list[str], *, device: str, precision: str, compile: str, out: Path,
               quiet: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run conformance.record in the backend's own interpreter and environment (MXNet's is .venv-mxnet)."""
    cmd = processes.worker_command(backend, "conformance.record", [
        "--backend", backend, "--device", device, "--precision", precision, "--compile", compile,
        "--out", str(Path(out).resolve()), "--variant", *variants])
    try:
        return subprocess.run(cmd, env=processes.environment_for(backend), cwd=ROOT, text=True,
                              capture_output=quiet, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:g} s")


def record_name(backend: str, *, device: str, precision: str, compile: str) -> str:
    return f"{backend}-{device}-{precision}-{compile}.safetensors"


def cmd_record(args) -> int:
    variants = _variants(args)
    out = Path(args.out or Path("records") / record_name(args.backend, device=args.device, precision=args.precision,
                                                         compile=args.compile))
    check_writable(out, "--out")
    r = run_record(args.backend, variants, device=args.device, precision=args.precision, compile=args.compile,
                   out=out, quiet=True, timeout=args.timeout)
    if r.returncode == 0:
        print(out)
        return 0
    print(f"nin record: {args.backend} failed: {_last_line(r.stderr)}", file=sys.stderr)
    return 3 if r.returncode == 3 else 1


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _matrix_outputs(args) -> None:
    for flag in ("report", "json_out"):
        if getattr(args, flag, None):
            check_writable(getattr(args, flag), f"--{flag.replace('_', '-')}")


def cmd_compare(args) -> int:
    from conformance import compare, matrix

    _matrix_outputs(args)
    result = compare.compare(args.records, use_cache=not args.no_cache,
                             progress=None if args.json else lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    text = matrix.render(result)
    print(json.dumps(matrix.to_json(result), indent=2) if args.json else text)
    if args.report:
        atomic_write_text(args.report, "```\n" + text + "\n```\n")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(matrix.to_json(result), indent=2) + "\n")
    return 0 if result.passed else 1


def cmd_conformance(args) -> int:
    from tqdm import tqdm

    variants = _variants(args)
    _matrix_outputs(args)
    outdir = Path(args.out_dir)
    check_writable(outdir / ".probe", "--out-dir")
    plan = [(b, p, c) for b in (args.backend or list(backends.BACKENDS)) for p in args.precision for c in args.compile
            if c in backends.get(b).compile_modes]
    made, skipped, failed = [], [], []
    bar = tqdm(plan, desc="recording", unit="record", disable=args.json, file=sys.stderr, dynamic_ncols=True)
    for name, precision, compile in bar:
        bar.set_postfix_str(f"{name} {precision} {compile}")
        out = outdir / record_name(name, device=args.device, precision=precision, compile=compile)
        chosen = variants if compile == "eager" or args.compile_variants is None else [
            v for v in variants if v in args.compile_variants]
        if not chosen:
            continue
        t = time.time()
        r = run_record(name, chosen, device=args.device, precision=precision, compile=compile, out=out, quiet=True,
                       timeout=args.timeout)
        if r.returncode == 3:
            skipped.append(f"{name}: {_last_line(r.stderr)}")
        elif r.returncode != 0:
            failed.append(f"{name} {precision} {compile}: {_last_line(r.stderr)}")
        else:
            made.append(out)
            if not args.json:
                tqdm.write(f"  {name} {precision} {compile}: {len(chosen)} variant(s) in {time.time() - t:.0f} s "
                           f"-> {out}", file=sys.stderr)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    for f in failed:
        print(f"nin conformance: recording failed: {f}", file=sys.stderr)
    if not made:
        print("nin conformance: no backend could be recorded", file=sys.stderr)
        return 1
    args.records = [str(p) for p in made]
    status = cmd_compare(args)
    return 1 if failed else status


# --- error model -----------------------------------------------------------------------------
_SHOWN = ("logits", "loss", "grad/", "trajectory", "final/", "momentum/trajectory", "momentum/final/")


def cmd_error_model(args) -> int:
    import numpy as np

    from common import errormodel, weights
    from common.cases import Cases, reference_results
    from conformance.compare import as_updates

    cases = Cases()
    rows, entries = [], {}
    progress = lambda m: print(f"  {m}", file=sys.stderr, flush=True)
    for name in _variants(args):
        spec = specs.get(name)
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
            rows.append([spec.name, precision] + [f"{w:.1e}" for w in worst])
    if args.write:
        print(f"wrote {errormodel.STORE}", file=sys.stderr)
    print("Largest spread of each quantity relative to its size (elementwise |reference|, or ||reference||; "
          "weights as updates):")
    print("\n".join(tables.text(["variant", "precision"] + [k.rstrip("/") for k in _SHOWN], rows)))
    return 0


# --- the parser --------------------------------------------------------------------------
def _add_spec_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--variant", default="d2l", choices=sorted(specs.VARIANTS), help="a named network (default d2l)")
    g.add_argument("--spec", metavar="FILE", help="a network spec as JSON (the format: docs/architecture.md)")


def _record_args(q, many: bool) -> None:
    names = sorted(backends.BACKENDS)
    if many:
        q.add_argument("--backend", nargs="+", choices=names, metavar="NAME",
                       help=f"backends to record (default: all of {', '.join(names)})")
        q.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "fp64"],
                       help="fp32 (TF32 off, deterministic), fp64 (float64 everywhere), fast (TF32 / bf16 allowed); "
                            "default: fp32 fp64")
        q.add_argument("--compile", nargs="+", choices=("eager", "compiled"), default=["eager", "compiled"],
                       help="eager and/or each framework's compiler (default: both)")
        q.add_argument("--compile-variants", nargs="+", metavar="VARIANT",
                       help="record compiled mode for these variants only (compilation is slow on a CPU)")
    else:
        q.add_argument("--backend", required=True, choices=names, metavar="NAME", help=", ".join(names))
        q.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), fp64 or fast")
        q.add_argument("--compile", choices=("eager", "compiled"), default="eager", help="eager (default) or compiled")
    q.add_argument("--variant", nargs="+", help="variants (names or .json spec files) to record (default: all)")
    q.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    q.add_argument("--timeout", type=_seconds, default=3600, help="seconds allowed per record (default 3600)")


def _matrix_args(q) -> None:
    q.add_argument("--json", action="store_true", help="print one JSON object instead of the matrix")
    q.add_argument("--report", metavar="FILE", help="also write the matrix to this Markdown file")
    q.add_argument("--json-out", metavar="FILE", help="also write the JSON to this file")
    q.add_argument("--no-cache", action="store_true", help="recompute the float64 reference")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nin",
                                description="Network in Network in four frameworks, and the proof they agree.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs; memory for training and inference")
    _add_spec_args(s)
    s.add_argument("--batch-size", type=_count(1, 1_000_000), default=1)
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    s.set_defaults(func=cmd_summary)

    r = sub.add_parser("record", help="write one backend's conformance record (runs in that backend's environment)")
    _record_args(r, False)
    r.add_argument("--out", help="record file (default records/<backend>-<device>-<precision>-<compile>.safetensors)")
    r.set_defaults(func=cmd_record)

    c = sub.add_parser("compare", help="compare records with the reference and with each other")
    c.add_argument("records", nargs="+", help="record files")
    _matrix_args(c)
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("conformance", help="record every installed backend and compare (the main job)")
    _record_args(k, True)
    k.add_argument("--out-dir", default="records", help="where the records go (default records/)")
    _matrix_args(k)
    k.set_defaults(func=cmd_conformance)

    e = sub.add_parser("error-model", help="the spreads behind every tolerance (common/error_model.json)")
    e.add_argument("--variant", nargs="+", help="variants (default: all)")
    e.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    e.add_argument("--write", action="store_true", help="measure again and store in common/error_model.json")
    e.set_defaults(func=cmd_error_model)

    b = sub.add_parser("bench", help="training and inference throughput per backend")
    runner.add_arguments(b)
    b.set_defaults(func=runner.main)

    training_cli.add_commands(sub)  # train, plot, lr-find: training/cli.py
    idioms_cli.add_commands(sub)  # idioms: idioms/cli.py
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(f"nin: bad spec: {e}", file=sys.stderr)
    except (RecordError, WeightsError, DataError, OutputError, BackendError, UsageError) as e:
        print(f"nin: {e}", file=sys.stderr)
    except OSError as e:
        print(f"nin: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("nin: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
