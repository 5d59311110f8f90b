"""One benchmark configuration, run in the backend's own process and interpreter.

    python -m benchmarks.worker --backend torch --variant d2l --mode train --batch-size 128 \
        --precision bf16 --compile on --device gpu

prints one JSON object as the last line of stdout: the bench.py contract's dict (common.backends)
plus the configuration, "status" and the process's versions, numerics settings and device name.
Status is "ok", "oom" (the device ran out of memory), "skipped" (the framework or the backend's
bench.py is absent here; "reason" says which) or "error" ("reason" and "traceback" say what).

The parent side of the same protocol is here too: `command` builds the command line for a
configuration and `call` runs it and reads the object back.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import traceback

from common import backends
from common import spec as specs

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("cpu", "gpu")


def skip_reason(backend: str) -> str | None:
    """Why this interpreter cannot run the backend's benchmark, or None when it can."""
    b = backends.get(backend)
    if importlib.util.find_spec(b.framework) is None:
        return f"{b.framework} is not installed for {sys.executable}"
    try:
        found = importlib.util.find_spec(f"{b.package}.bench") is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{b.package}/bench.py does not exist"


def run(backend: str, variant: str, mode: str, batch_size: int, precision: str, compile: bool, device: str,
        warmup: int = 5, windows: int = 5, steps: int = 10) -> dict:
    """Configure the backend for benchmarking and time one configuration; never raises."""
    out = {"backend": backend, "variant": variant, "mode": mode, "batch_size": batch_size, "precision": precision,
           "compile": compile, "device": device, "warmup": warmup, "windows": windows, "steps": steps,
           "python": sys.executable}
    reason = skip_reason(backend)
    if reason:
        return {**out, "status": "skipped", "reason": reason}
    try:
        train = backends.load(backend, "train")
        bench = backends.load(backend, "bench")
        out["versions"] = train.versions()
        # "fast": autotuning on, determinism off; bench.py then sets the precision's own switches.
        out["numerics"] = train.configure(device, "fast")
        out["device_name"] = train.device_name(device) if hasattr(train, "device_name") else None
        result = bench.benchmark(specs.get(variant), mode, batch_size, precision, compile, device,
                                 warmup=warmup, windows=windows, steps=steps)
        return {**out, "status": "ok", **result}
    except MemoryError as e:
        return {**out, "status": "oom", "reason": str(e)[:2000]}
    except Exception as e:  # one failing configuration must not stop the sweep
        return {**out, "status": "error", "reason": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-4000:]}


def add_config_arguments(parser: argparse.ArgumentParser, backend_required: bool = True) -> None:
    """One configuration's options (the worker's and benchmarks.verify_timing's command line)."""
    parser.add_argument("--backend", required=backend_required, choices=sorted(backends.BACKENDS))
    parser.add_argument("--variant", default="d2l")
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--compile", choices=("on", "off"), default="off")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)


def config_from_args(args: argparse.Namespace) -> dict:
    return {"backend": args.backend, "variant": args.variant, "mode": args.mode, "batch_size": args.batch_size,
            "precision": args.precision, "compile": args.compile == "on", "device": args.device,
            "warmup": args.warmup, "windows": args.windows, "steps": args.steps}


def command(module: str, config: dict) -> list[str]:
    """`python -m <module> --backend ...` with the backend's own interpreter."""
    cmd = [backends.python_for(config["backend"]), "-m", module]
    for key, value in config.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def call(cmd: list[str], timeout: float | None = None) -> dict:
    """Run a worker command from the repository root and return its JSON object (or an error)."""
    try:
        proc = subprocess.run(cmd, cwd=backends.ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout} s"}
    except OSError as e:
        return {"status": "skipped", "reason": f"cannot start {cmd[0]}: {e}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = proc.stderr.strip()[-2000:]
    return {"status": "error", "reason": f"exit status {proc.returncode} and no result; stderr ends: {tail}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON line
        result = run(**config)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
