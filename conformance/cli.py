"""The conformance driver's commands, added to the `nin` command (nin/cli.py calls add_commands).

    nin summary      shapes, parameters, MACs and memory of a variant or a JSON spec
    nin record       one backend's conformance record, written in that backend's own environment
    nin compare      records against the float64 reference and each other: the matrix
    nin conformance  record every installed backend, then compare (the README's main job)
    nin error-model  the spreads behind every tolerance: show them, or measure and store them

What they refuse before any work is in conformance/inputs.py; the workers and the sweep in
conformance/sweep.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from common import backends, calc, tables
from common import spec as specs
from common.fsio import check_writable, exclusive
from harness import flags
from harness.flags import UsageError

from . import inputs, records, sweep

PRECISIONS = ("fp32", "fp64", "fast")


def _spec_from(args) -> specs.NetSpec:
    return specs.NetSpec.from_json_file(args.spec) if getattr(args, "spec", None) else specs.get(args.variant)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


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


def cmd_record(args) -> int:
    variants = inputs.variants(args)
    folder = Path("records") / ("quick" if args.quick else "data-parallel" if args.devices > 1 else "")
    out = Path(args.out or folder / sweep.record_name(args.backend, device=args.device, precision=args.precision,
                                                compile=args.compile, devices=args.devices,
                                                sync_batch_norm=args.sync_batch_norm))
    if args.sync_batch_norm and args.devices < 2:
        raise UsageError(f"--sync-batch-norm: needs --devices 2 or more, got --devices {args.devices}")
    check_writable(out, "--out")
    inputs.not_an_input(out, "--out", [v for v in variants if v.endswith(".json")])
    inputs.recordable(args, variants, precisions=[args.precision])
    inputs.not_another_record(out, args, label=(args.backend, args.device, args.precision, args.compile),
                        variants=variants)
    with exclusive(out, "--out"):  # a second `nin record` to this file is refused while this one runs
        r = sweep.run_record(args.backend, variants, device=args.device, precision=args.precision, compile=args.compile,
                       out=out, quiet=True, timeout=args.timeout, quick=args.quick, devices=args.devices,
                       sync_batch_norm=args.sync_batch_norm)
    if r.returncode == 0:
        print(out)
        return 0
    print(f"nin record: {args.backend}: {sweep.worker_failure(r)}", file=sys.stderr)
    return r.returncode if r.returncode in (2, 3, 124) else 1


def cmd_compare(args) -> int:
    inputs.existing_files(args.records, "record")
    outputs = inputs.matrix_outputs(args, args.records)
    with contextlib.ExitStack() as held:
        for flag, path in outputs.items():
            held.enter_context(exclusive(path, flag))  # a second writer of the report is refused meanwhile
        return sweep.compare_and_write(args)


def cmd_conformance(args) -> int:
    variants = inputs.variants(args)
    compiled = inputs.compiled_only(args, variants)
    outputs = inputs.matrix_outputs(args, [v for v in variants if v.endswith(".json")])
    outdir = Path(args.out_dir or (Path("records") / "quick" if args.quick else "records"))
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--out-dir {outdir} is a file, not a folder")
    probe = sweep.record_name("probe", device=args.device, precision="fp32", compile="eager")
    check_writable(outdir / probe, "--out-dir")
    jobs = sweep.conformance_jobs(args, variants, compiled, outdir)
    inputs.recordable(args, variants, precisions=args.precision)
    for name, precision, compile, chosen, out in jobs:
        check_writable(out, "--out-dir")
        inputs.not_another_record(out, args, label=(name, args.device, precision, compile), variants=chosen)
    with contextlib.ExitStack() as held:  # every file this sweep writes: a second writer is refused meanwhile
        for path, flag in [(job[4], "--out-dir") for job in jobs] + [(p, f) for f, p in outputs.items()]:
            held.enter_context(exclusive(path, flag))
        return sweep.record_and_compare(args, variants, jobs)


_SHOWN = ("logits", "loss", "grad/", "trajectory", "final/", "momentum/trajectory", "momentum/final/",
          "scheduled/trajectory", "scheduled/final/")


def cmd_error_model(args) -> int:
    import numpy as np

    from common import weights

    from . import errormodel
    from .cases import Cases, reference_results
    from .compare import as_updates

    if args.again and not args.write:
        raise UsageError("--again: measures spreads again to store them; it needs --write")
    cases = Cases()
    rows = []
    progress = (lambda m: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    for name in inputs.variants(args):
        spec = specs.get(name)
        records.check_recordable(spec, cases, f"--variant {name}")  # the spreads repeat the reference's work
        calc.check_memory(records.record_memory(spec, cases, "fp64"), what=f"--variant {name}: its float64 runs")
        ref = as_updates(reference_results(spec, cases), weights.init(spec, cases.init_seed))
        for precision in args.precision:
            if args.write:  # stored as it goes: an interrupted run keeps what it measured
                errormodel.store(errormodel.entries(spec, cases, precision, progress=progress, fresh=args.again))
            spread = errormodel.spreads(spec, cases, precision, progress=progress)
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
        q.add_argument("--devices", nargs="+", type=flags.count(1, backends.MAX_DEVICES), default=[2, 4], metavar="N",
                       help="replica counts of the data-parallel case, fp64 (docs/distributed.md); default 2 4; "
                            "1: none")
    else:
        q.add_argument("--backend", required=True, choices=names, metavar="NAME", help=", ".join(names))
        q.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), fp64 or fast")
        q.add_argument("--compile", choices=("eager", "compiled"), default="eager", help="eager (default) or compiled")
        q.add_argument("--devices", type=flags.count(1, backends.MAX_DEVICES), default=1, metavar="N",
                       help="the data-parallel case on N replicas of the framework's own engine (simulated on a "
                            "CPU; docs/distributed.md): the constant-rate runs only (default 1: the full record)")
        q.add_argument("--sync-batch-norm", action="store_true",
                       help="with --devices: the framework's synchronised batch norm instead of its default")
    q.add_argument("--variant", nargs="+", action=flags.Distinct,
                   help="variants (names or .json spec files) to record (default: all)")
    q.add_argument("--quick", action="store_true",
                   help="the quick tier: a small probe network (conformance.cases.PROBE) instead of the variants, "
                        "eager only; the case every planted bug is judged on (records/quick/ by default)")
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


def add_commands(sub) -> None:
    """Add this driver's subcommands to the `nin` parser's subparsers (nin/cli.py calls it)."""
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

    e = sub.add_parser("error-model", help="the spreads behind every tolerance (conformance/error_model.json)")
    e.add_argument("--variant", nargs="+", action=flags.Distinct, help="variants (default: all)")
    e.add_argument("--precision", nargs="+", action=flags.Distinct, choices=PRECISIONS, default=list(PRECISIONS),
                   help="precisions whose spreads to show (default: all)")
    e.add_argument("--write", action="store_true",
                   help="store in conformance/error_model.json what it lacks, measured now")
    e.add_argument("--again", action="store_true", help="with --write: measure every spread again")
    e.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    e.set_defaults(func=cmd_error_model)
