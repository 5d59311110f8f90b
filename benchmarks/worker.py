"""One benchmark configuration, run in the backend's own process and interpreter.

    python -m benchmarks.worker --backend torch --variant d2l --mode train --batch-size 128 \
        --precision bf16 --compile compiled --device gpu

prints one JSON object as the last line of stdout: the timing (benchmarks.timing) plus the
configuration, "status", the backend's settings, versions, numerics and device name. Status is "ok",
"oom" (the device or the host ran out of memory), "skipped" (the framework is absent here, or the
backend has no such compile mode; "reason" says which) or "error" ("reason" and "traceback").
The backend gives what only it knows (its bench.py: the step, synchronisation, peak memory); the
loop is benchmarks.timing's, the same for all.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

from common import backends
from common import spec as specs
from harness import processes

from .timing import measure

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("cpu", "gpu")
CONFIG_KEYS = ("backend", "variant", "mode", "batch_size", "precision", "compile", "device", "warmup", "windows",
               "steps")


def run(config: dict) -> dict:
    """Configure the backend for benchmarking and time one configuration; never raises."""
    out = {**config, "python": sys.executable}
    missing = processes.missing_here(config["backend"])
    if missing:
        return {**out, "status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    bench = None
    try:
        train = processes.load(config["backend"], "train")
        bench = processes.load(config["backend"], "bench")
        offered = backends.get(config["backend"]).compile_modes + ("plain",)
        if config["compile"] not in offered:
            reason = f"{config['backend']} has no compile mode {config['compile']!r}; it offers {list(offered)}"
            return {**out, "status": "skipped", "reason": reason}
        if config["compile"] == "plain" and (config["variant"], config["precision"]) != ("d2l", "fp32"):
            return {**out, "status": "skipped", "reason": "plain code is the chapter's d2l network in fp32 only"}
        out["versions"] = train.versions()
        # "fast": autotuning on, determinism off; make_step then sets the precision's own switches.
        out["numerics"] = train.configure(config["device"], "fast")
        out["device_name"] = train.device_name(config["device"])
        bench.reset_peak_memory(config["device"])
        step, settings = make(bench, config, runs=1 + config["warmup"] + config["windows"] * config["steps"])
        timing = measure(step, lambda result: bench.synchronize(config["device"], result),
                         batch_size=config["batch_size"], warmup=config["warmup"], windows=config["windows"],
                         steps=config["steps"])
        return {**out, "status": "ok", **timing, "peak_memory_bytes": bench.peak_memory_bytes(config["device"]),
                "settings": settings}
    except Exception as e:  # one failing configuration must not stop the sweep
        if out_of_memory(e) or (bench is not None and bench.is_out_of_memory(e)):
            return {**out, "status": "oom", "reason": f"{type(e).__name__}: {e}"[:2000]}
        return {**out, "status": "error", "reason": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-4000:]}


def make(bench, config: dict, *, runs: int):
    """(step, settings) of a configuration from the backend's bench module: the suite's network
    (make_step), or with compile "plain" the chapter's own code in the framework (plain_step), the
    yardstick; `runs`: how many times the step will run."""
    if config["compile"] == "plain":
        return bench.plain_step(mode=config["mode"], batch_size=config["batch_size"], device=config["device"])
    return bench.make_step(specs.get(config["variant"]), mode=config["mode"], batch_size=config["batch_size"],
                           precision=config["precision"], compile=config["compile"], device=config["device"],
                           steps=runs)


# How the host's allocators say it, whatever the framework: PyTorch's DefaultCPUAllocator ("can't
# allocate memory ... Error code 12"), C++'s std::bad_alloc, XLA's and TensorFlow's RESOURCE_EXHAUSTED,
# MXNet's "Failed to allocate CPU Memory", NumPy's "Unable to allocate".
HOST_OOM = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "resource_exhausted",
            "resourceexhausted", "failed to allocate", "unable to allocate", "error code 12", "enomem")


def out_of_memory(error: BaseException) -> bool:
    """True when `error` says that the host (the CPU's memory) ran out; the GPU's is the backend's to say."""
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, MemoryError) or any(s in text for s in HOST_OOM)


def add_config_arguments(parser: argparse.ArgumentParser, backend_required: bool = True) -> None:
    """One configuration's options (the worker's and benchmarks.verify_timing's command line)."""
    parser.add_argument("--backend", required=backend_required, choices=sorted(backends.BACKENDS))
    parser.add_argument("--variant", default="d2l")
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--compile", default="eager")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)


def config_from_args(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in CONFIG_KEYS}


def arguments(config: dict) -> list[str]:
    """The command-line arguments that give a worker this configuration."""
    out: list[str] = []
    for key in CONFIG_KEYS:
        out += [f"--{key.replace('_', '-')}", str(config[key])]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    with processes.sigterm_unwinds(), contextlib.redirect_stdout(sys.stderr):  # stdout: the one JSON line
        try:
            result = run(config)
        except KeyboardInterrupt as e:
            result = {**config, "status": "error", "reason": "interrupted"}
            code = processes.interrupted_status(e)
        else:
            code = 0
    processes.print_result(result)
    return code


if __name__ == "__main__":
    sys.exit(main())
