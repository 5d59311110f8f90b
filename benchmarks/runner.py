"""`nin bench`: images per second of every backend, one process per backend and configuration.

    python -m benchmarks.runner --backend torch jax --mode train infer --batch-size 32 128 \
        --precision bf16 --compile eager compiled --device gpu

Each configuration runs `python -m benchmarks.worker` with its backend's interpreter and
environment (harness.processes), so that no framework preallocates device memory under another and
MXNet can live in its own environment. The results go to one JSON file (device, driver, versions,
every setting and timing, the command line), with a Markdown table (.md) and a bar plot (.png)
beside it. A configuration that runs out of device memory is recorded as "oom" and the sweep goes
on; a backend whose framework or bench.py is absent is recorded as "skipped", with the reason.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from common import backends, calc
from common import spec as specs
from common.calc import CostError
from common.fsio import OutputError, check_writable, exclusive
from harness import flags, processes

from . import report, utilization, verify_timing, worker

RESULTS = backends.ROOT / "benchmarks" / "results"
# environment variables that change speed (threads, visible devices, allocators, compilers): recorded with the run
ENVIRONMENT = ("OMP_", "MKL_", "KMP_", "CUDA_", "NVIDIA_TF32", "XLA_", "TF_ENABLE_", "TF_GPU_", "TF_XLA_",
               "TF_FORCE_", "MXNET_", "TORCH", "PYTORCH_", "NIN_PYTHON_")


COMPILE_MODES = ("eager", "graph", "compiled", "plain")
MOMENTUM = False  # every bench.make_step times plain SGD: no momentum buffer in memory or traffic
LOOP_COMPILES = ("eager", "compiled")  # what the training loop (loop.make_trainer) takes, as `nin train --compile`
MAX_BATCH = 1_000_000  # images per step: past this a batch's index overflows some frameworks' 32-bit sizes


def _compiles(backend: str, asked: list[str], devices: list[int] | None = None) -> list[str]:
    """The compile modes to run for a backend: those asked for; "all" stands for every mode it offers
    (with --devices, those of the training loop: eager and compiled)."""
    offered = [m for m in backends.get(backend).compile_modes if not devices or m in LOOP_COMPILES]
    expanded = [m for a in asked for m in (offered if a == "all" else [a])]
    return list(dict.fromkeys(expanded))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `nin bench`; each list option sweeps every value given."""
    parser.add_argument("--backend", nargs="+", action=flags.Distinct, dest="backends", metavar="NAME",
                        choices=sorted(backends.BACKENDS),
                        default=list(backends.BACKENDS), help="backends to run (default: all)")
    parser.add_argument("--variant", default="d2l", type=flags.path,
                        help="a named variant or a .json spec file (default: d2l)")
    parser.add_argument("--mode", nargs="+", action=flags.Distinct, dest="modes", choices=worker.MODES,
                        help="train (forward, backward, SGD step) and/or infer (default: both; with --devices: train)")
    parser.add_argument("--batch-size", nargs="+", action=flags.Distinct, dest="batch_sizes",
                        type=flags.count(1, MAX_BATCH), metavar="N",
                        default=[128],
                        help="batch sizes (default: 128)")
    parser.add_argument("--precision", nargs="+", action=flags.Distinct, dest="precisions",
                        choices=worker.PRECISIONS, default=["fp32"],
                        help="fp32 (TF32 off), tf32, bf16 (mixed precision) (default: fp32)")
    parser.add_argument("--compile", nargs="+", action=flags.Distinct, dest="compiles", metavar="MODE", default=["all"],
                        help="eager, compiled (torch.compile, XLA, jax.jit, hybridize), graph (Keras: tf.function "
                             "without XLA), all: every mode each backend offers (default), plain: the chapter's "
                             "d2l code in the backend's framework, the yardstick (its bench.plain_step)")
    parser.add_argument("--device", choices=("auto",) + worker.DEVICES, default="auto",
                        help="auto: gpu when nvidia-smi lists one, else cpu")
    parser.add_argument("--warmup", type=flags.count(0, 100_000), default=5,
                        help="untimed steps after the first (default: 5)")
    parser.add_argument("--windows", type=flags.count(1, 1000), default=5,
                        help="timed windows; the median is reported (default: 5)")
    parser.add_argument("--steps", type=flags.count(1, 100_000), default=10,
                        help="steps per timed window (default: 10)")
    parser.add_argument("--devices", nargs="+", action=flags.Distinct, type=flags.count(1, backends.MAX_DEVICES),
                        metavar="N",
                        help="time the training loop (loop.py, as `nin train --devices N` runs it: the resize, the "
                             "step, the engine's all-reduce; dropout off) on N data-parallel replicas of the "
                             "framework's own engine, for each N; the table's scaling column is images/s over N "
                             "times --devices 1's (include 1). fp32, --mode train")
    parser.add_argument("--timeout", type=flags.seconds, default=1800, help="seconds allowed per configuration")
    parser.add_argument("--verify", action="store_true",
                        help="time each configuration again in one plain loop, synchronised at its ends only "
                             "(benchmarks.verify_timing)")
    parser.add_argument("--out", type=flags.path, help="result file (default: benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    return parser


# --- the device, without importing a framework ---------------------------------------------
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict:
    """{"kind": "cpu" | "gpu", "name", "driver", "memory_bytes", "count"}; device "auto" picks one."""
    gpus = processes.gpus() if device in ("auto", "gpu") else []
    if device == "gpu" or gpus:
        first = gpus[0] if gpus else {"name": None, "driver": None, "memory_bytes": None}
        return {"kind": "gpu", **first, "count": len(gpus)}
    return {"kind": "cpu", "name": _cpu_name(), "driver": None, "memory_bytes": None, "count": os.cpu_count()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def command_line(argv: list[str]) -> str:
    """The command as typed: `nin bench ...`, or `python -m benchmarks.runner ...` for a module of this repository."""
    if not argv:
        return ""
    program = Path(argv[0]).resolve()
    if program.suffix == ".py" and program.is_relative_to(backends.ROOT):
        module = ".".join(program.relative_to(backends.ROOT).with_suffix("").parts).removesuffix(".__main__")
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join([Path(argv[0]).name, *argv[1:]])


# --- one configuration ----------------------------------------------------------------------
def annotate(result: dict, spec: specs.NetSpec, peak: utilization.DevicePeak | None) -> dict:
    """Add the spread over windows, calc's memory prediction and the utilisation to a worker result."""
    train = result["mode"] == "train"
    dtype = "bfloat16" if result["precision"] == "bf16" else "float32"
    s = calc.summary(spec, result["batch_size"], dtype, momentum=MOMENTUM)
    result["predicted_memory_bytes"] = s.train_memory_bytes if train else s.inference_memory_bytes
    if result["status"] != "ok":
        return result
    flops = s.train_flops if train else s.forward_flops
    moved = calc.traffic_bytes_per_image(spec, result["batch_size"], dtype, train=train, momentum=MOMENTUM)
    result["utilization"] = utilization.utilization(
        result["images_per_second"], flops, moved,
        peak=utilization.peak_for(result.get("device_name")) or peak, precision=result["precision"])
    return result


class BenchError(ValueError):
    """A flag that cannot work on this machine (`--device gpu` where no GPU is visible)."""


def main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Check everything before the first worker (the spec, --out, the device, the memory each
    configuration needs), then run the sweep and write the results; 2 and one line when a check fails."""
    argv = list(sys.argv if argv is None else argv)
    try:
        spec, variant, device, out = _prepare(args)
        configs = [{"backend": b, "variant": variant, "mode": m, "batch_size": n, "precision": p, "compile": c,
                    "device": device["kind"], "warmup": args.warmup, "windows": args.windows, "steps": args.steps,
                    **({"devices": d} if d else {})}
                   for b in args.backends for m, p, c, n, d in itertools.product(
                       _modes(args), args.precisions, _compiles(b, args.compiles, args.devices),
                       sorted(args.batch_sizes), sorted(args.devices or [0]))]
        _check_memory(configs, spec, variant=args.variant, device=device["kind"])
        with exclusive(out, "--out"):  # a second `nin bench` writing the same file is refused meanwhile
            return _run(args, argv, configs, spec=spec, variant=variant, device=device, out=out)
    except (specs.SpecError, OutputError, CostError, BenchError) as e:
        print(f"nin bench: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _modes(args) -> list[str]:
    """--mode, train and infer by default; with --devices the training loop's step only."""
    if not args.devices:
        return args.modes or list(worker.MODES)
    if args.modes not in (None, ["train"]):
        raise BenchError(f"--devices times the training loop (nin train --devices): --mode train only, got "
                         f"{args.modes}")
    return ["train"]


def _check_devices(args) -> None:
    """--devices: the loop in fp32, every batch split evenly over each replica count."""
    if not args.devices:
        return
    if args.precisions != ["fp32"]:
        raise BenchError(f"--devices times the training loop, in fp32 only: got --precision {args.precisions}")
    for n, d in itertools.product(args.batch_sizes, args.devices):
        if n % d:
            raise BenchError(f"--devices {d}: --batch-size {n} does not split evenly over {d} replicas")


def _prepare(args) -> tuple[specs.NetSpec, str, dict, Path]:
    """(spec, the variant as a worker is given it, the device, --out), each checked before any work."""
    _check_devices(args)
    spec = specs.get(args.variant)
    # the workers run from the repository root: a spec file must not depend on the current directory
    variant = str(Path(args.variant).resolve()) if args.variant.endswith(".json") else args.variant
    bad = [c for c in args.compiles if c not in COMPILE_MODES + ("all",)]
    if bad:
        raise BenchError(f"--compile {bad[0]!r}: expected some of {list(COMPILE_MODES)} or all")
    device = device_info(args.device)
    if args.device == "gpu" and not device["count"]:
        raise BenchError("--device gpu: no GPU is visible (nvidia-smi lists none); run on a machine with one, "
                         "or give --device cpu")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or RESULTS / f"{_slug(device['name'] or device['kind'])}-{stamp}.json")
    check_writable(out, "--out")  # before the work: a bad path must not lose a finished sweep
    if out.suffix != ".json":  # the .md and .png go beside it, named by replacing the suffix
        raise OutputError(f"--out {out}: expected a .json file name (the .md table and .png plot go beside it)")
    for path in (out.with_suffix(".md"), out.with_suffix(".png")):
        check_writable(path, f"--out's {path.suffix}")
    return spec, variant, device, out


def _check_memory(configs: list[dict], spec: specs.NetSpec, *, variant: str, device: str) -> None:
    """CostError for the configuration that needs the most memory, when it needs more than the device
    has (calc.summary's estimate, a lower bound), before any worker starts."""
    def need(c: dict) -> int:
        s = calc.summary(spec, c["batch_size"], "bfloat16" if c["precision"] == "bf16" else "float32",
                         momentum=MOMENTUM)
        return s.train_memory_bytes if c["mode"] == "train" else s.inference_memory_bytes

    if configs:
        worst = max(configs, key=need)
        processes.check_memory(need(worst), device=device, what=f"--variant {variant} in {worst['mode']} mode at "
                               f"--batch-size {worst['batch_size']} ({worst['precision']})")


def _run(args, argv: list[str], configs: list[dict], *, spec, variant: str, device: dict, out: Path) -> int:
    """The sweep, its result files and its summary lines; 1 when a configuration errored."""
    peak = utilization.peak_for(device["name"])
    results, skipped = [], {}
    load_before = os.getloadavg()  # other processes on the machine show up here, and in the spread
    bar = tqdm(configs, desc="nin bench", unit="config", file=sys.stderr, dynamic_ncols=True)
    try:
        _sweep(bar, results, skipped, spec=spec, peak=peak, timeout=args.timeout)
        report.add_scaling(results)
        if args.verify:
            verify_timing.check(results, args.timeout)
        interrupted = None
    except KeyboardInterrupt as e:  # keep what was measured: the results so far are written below
        interrupted = e
    bar.close()
    doc, written = _write(args, argv, results, spec=spec, device=device, peak=peak, variant=variant, out=out,
                          load_before=load_before, interrupted=interrupted is not None)
    if interrupted:
        print(f"nin bench: interrupted after {len(results)} of {len(configs)} configurations; wrote "
              + ", ".join(str(p) for p in written), file=sys.stderr)
        raise interrupted
    print(json.dumps(doc, indent=2) if args.json else report.terminal(results, report.busy(doc)))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return _failures(results, gpu=device["kind"] == "gpu")


def _failures(results: list[dict], *, gpu: bool) -> int:
    """One line per configuration that errored or whose timing check disagreed; 1 when there is one."""
    failed = [r for r in results if r["status"] == "error"]
    disagree = [r for r in results if gpu and (r.get("verify") or {}).get("agrees") is False]
    for r in failed:  # one line each; the whole reason and traceback are in the result file
        reason = next((line for line in str(r.get("reason", "")).splitlines() if line.strip()), "(no reason)")
        print(f"error: {r['backend']} {r['mode']} batch {r['batch_size']} {r['compile']}: {reason[:300]}",
              file=sys.stderr)
    for r in disagree:
        print(f"timing check failed: {r['backend']} {r['mode']} batch {r['batch_size']}: harness "
              f"{r['images_per_second']:.1f} vs loop {r['verify']['images_per_second']:.1f} images/s", file=sys.stderr)
    return 1 if failed or disagree else 0


def _sweep(bar, results: list, skipped: dict, *, spec, peak, timeout: float) -> None:
    """Run every configuration, one worker process each; a failure is a result, and the sweep goes on."""
    for config in bar:
        bar.set_postfix_str(f"{config['backend']} {config['mode']} batch {config['batch_size']} {config['precision']} "
                            + config["compile"])
        cmd = processes.worker_command(config["backend"], "benchmarks.worker", worker.arguments(config))
        if config["backend"] in skipped:  # one look is enough: the next configuration would skip too
            result = {**config, "status": "skipped", "reason": skipped[config["backend"]]}
        else:
            result = {**config, **processes.call(config["backend"], "benchmarks.worker", worker.arguments(config),
                                                 timeout), "worker_command": shlex.join(cmd)}
        if result["status"] == "skipped" and "not installed" in result.get("reason", ""):
            skipped[config["backend"]] = result["reason"]
        results.append(annotate(result, spec, peak))


def _write(args, argv: list[str], results: list, *, spec, device: dict, peak, variant: str, out: Path,
           load_before, interrupted: bool) -> tuple[dict, list[Path]]:
    """The result document, its table and its plot, each written atomically."""
    s = calc.summary(spec)
    doc = {
        "command": command_line(argv),
        "argv": argv,
        "cwd": os.getcwd(),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENVIRONMENT)},
        "device": {**device, "peak": peak.to_dict() if peak else None},
        "settings": {"backends": args.backends, "variant": variant, "modes": _modes(args), "devices": args.devices,
                     "batch_sizes": sorted(args.batch_sizes), "precisions": args.precisions,
                     "compile": args.compiles, "device": args.device, "warmup": args.warmup,
                     "windows": args.windows, "steps": args.steps, "timeout_s": args.timeout,
                     "verify": args.verify},
        "model": {"variant": spec.name, "params": s.total_params, "forward_flops_per_image": s.forward_flops,
                  "train_flops_per_image": s.train_flops, "forward_bytes_per_image_fp32": s.bytes_moved},
        "versions": {r["backend"]: r["versions"] for r in results if r.get("versions")},
        "results": results,
    }
    if interrupted:
        doc["interrupted"] = True  # results holds the configurations that ran before the interruption
    if device["name"] is None:  # a GPU that nvidia-smi did not describe: take the framework's name
        device["name"] = doc["device"]["name"] = next((r["device_name"] for r in results if r.get("device_name")), None)
    return doc, report.write(doc, out)


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m benchmarks.runner",
                                                 description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
