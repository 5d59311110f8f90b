"""The `nin` command.

    nin summary      shapes, parameters, MACs and memory of a variant or a JSON spec
    nin record       one backend's conformance record, written in that backend's own environment
    nin compare      records against the NumPy reference and each other: the matrix
    nin conformance  record every installed backend, then compare (the README's main job)
    nin bench        throughput per backend (benchmarks/runner.py)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import backends, calc, spec as specs
from .spec import SpecError

ROOT = backends.ROOT


def _spec_from(args):
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
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for row in [header, tuple("-" * n for n in widths)] + table:
        print("  ".join(str(x).rjust(n) if i in (0, 3, 4, 5) else str(x).ljust(n) for i, (x, n) in enumerate(zip(row, widths))))
    print()
    print(f"parameters          {s.total_params:,}" + (f" (+{s.total_state:,} batch-norm statistics)" if s.total_state else ""))
    print(f"MACs per image      {s.total_macs:,}  ({s.forward_flops / 1e9:.3f} GFLOP forward, {s.train_flops / 1e9:.3f} GFLOP train)")
    print(f"activations/image   {s.activations:,} elements kept for backward")
    print(f"weights             {_mib(s.weights_bytes)}")
    print(f"training memory     {_mib(s.train_memory_bytes)}  (weights + grads + momentum + activations, batch {args.batch_size})")
    print(f"inference memory    {_mib(s.inference_memory_bytes)}  (weights + largest consecutive pair of activations)")
    return 0


# --- record / compare / conformance ----------------------------------------------------------
def _variants(args) -> list[str]:
    return list(specs.VARIANTS) if args.variant in (None, ["all"]) else args.variant


def run_record(backend: str, variants: list[str], device: str, precision: str, out: Path,
               quiet: bool = False) -> subprocess.CompletedProcess:
    """Run `nin record` in the backend's own interpreter (MXNet's is .venv-mxnet)."""
    cmd = [backends.python_for(backend), "-m", "common.cli", "_record", "--backend", backend, "--device", device,
           "--precision", precision, "--out", str(out), "--variant", *variants]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=quiet)


def cmd_record_here(args) -> int:
    from . import conformance

    if not backends.available_here(args.backend):
        print(f"nin record: {backends.get(args.backend).framework} is not installed in {sys.executable}", file=sys.stderr)
        return 3
    out = conformance.make_record(args.backend, args.variant, args.device, args.precision, Path(args.out),
                                  progress=lambda m: print(f"  recording {m}", file=sys.stderr, flush=True))
    print(out)
    return 0


def cmd_record(args) -> int:
    variants = _variants(args)
    for v in variants:
        specs.get(v)  # a bad name fails here, with the list of good ones
    out = Path(args.out or f"records/{args.backend}-{args.device}.safetensors")
    r = run_record(args.backend, variants, args.device, args.precision, out)
    return r.returncode


def cmd_compare(args) -> int:
    from . import conformance

    rows = conformance.compare(args.records, use_cache=not args.no_cache,
                               progress=None if args.json else lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(conformance.to_json(rows), indent=2))
    else:
        print(conformance.render(rows))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text("```\n" + conformance.render(rows) + "\n```\n")
    return 0 if rows and all(r.passed for r in rows) else 1


def cmd_conformance(args) -> int:
    from tqdm import tqdm

    variants = _variants(args)
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = args.backend or list(backends.BACKENDS)
    records, skipped = [], []
    for name in tqdm(names, desc="recording", unit="backend", disable=args.json):
        out = outdir / f"{name}-{args.device}{'' if args.precision == 'fp32' else '-fast'}.safetensors"
        t = time.time()
        r = run_record(name, variants, args.device, args.precision, out, quiet=True)
        if r.returncode == 3:
            skipped.append(f"{name}: {r.stderr.strip()}")
        elif r.returncode != 0:
            print(f"nin conformance: recording {name} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
            return 1
        else:
            records.append(out)
            if not args.json:
                tqdm.write(f"  {name}: {len(variants)} variant(s) in {time.time() - t:.0f} s -> {out}")
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    if not records:
        print("nin conformance: no backend could be recorded", file=sys.stderr)
        return 1
    args.records = [str(p) for p in records]
    return cmd_compare(args)


# --- the parser --------------------------------------------------------------------------
def _add_spec_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--variant", default="d2l", choices=sorted(specs.VARIANTS), help="a named network (default d2l)")
    g.add_argument("--spec", metavar="FILE", help="a network spec as JSON (the format: common/spec.py, NetSpec.to_json)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nin", description="Network in Network in four frameworks, and the proof they agree.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")  # hides the internal _record

    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs; memory for training and inference")
    _add_spec_args(s)
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    s.set_defaults(func=cmd_summary)

    def record_args(q, many_backends: bool):
        if many_backends:
            q.add_argument("--backend", nargs="+", choices=sorted(backends.BACKENDS), help="default: all four")
        else:
            q.add_argument("--backend", required=True, choices=sorted(backends.BACKENDS))
        q.add_argument("--variant", nargs="+", help="variants to record (default: all)")
        q.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
        q.add_argument("--precision", default="fp32", choices=("fp32", "fast"),
                       help="fp32: TF32 off, deterministic (default); fast: TF32/bf16 allowed, looser tolerances")

    r = sub.add_parser("record", help="write one backend's conformance record (runs in that backend's environment)")
    record_args(r, False)
    r.add_argument("--out", help="record file (default records/<backend>-<device>.safetensors)")
    r.set_defaults(func=cmd_record)

    h = sub.add_parser("_record")  # the in-process half of `record`
    record_args(h, False)
    h.add_argument("--out", required=True)
    h.set_defaults(func=cmd_record_here)

    def matrix_args(q):
        q.add_argument("--json", action="store_true", help="one JSON object instead of the matrix")
        q.add_argument("--report", help="also write the matrix to this Markdown file")
        q.add_argument("--no-cache", action="store_true", help="recompute the float64 reference")

    c = sub.add_parser("compare", help="compare records with the reference and with each other")
    c.add_argument("records", nargs="+", help="record files")
    matrix_args(c)
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("conformance", help="record every installed backend and compare (the main job)")
    record_args(k, True)
    k.add_argument("--out-dir", default="records", help="where the records go (default records/)")
    matrix_args(k)
    k.set_defaults(func=cmd_conformance)

    b = sub.add_parser("bench", help="training and inference throughput per backend")
    from benchmarks import runner
    runner.add_arguments(b)
    b.set_defaults(func=runner.main)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .data import DataError
    try:
        return args.func(args)
    except SpecError as e:
        print(f"nin: bad spec: {e}", file=sys.stderr)
        return 2
    except (ValueError, DataError, OSError) as e:  # WeightsError and RecordError are ValueErrors
        print(f"nin: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
