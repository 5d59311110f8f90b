"""What a backend's process finds before any work: versions, the device, and the APIs the backend relies on.

    python -m benchmarks.probe --backend jax --device gpu

prints one JSON object as the last line of stdout (harness.processes.call reads it): "status" ("ok";
"skipped" when the framework is not installed for this interpreter; "error" when the backend cannot
even be imported), "versions", "device_name" (or "device_error"), "checks" (name -> true / false /
a value: the backend's bench.api_checks), "problems" (one sentence per missing API, naming what it
breaks) and "measured" (the device's matmul rates, where the backend's bench.matmul_peak measures
them). The GPU session (`python -m gpu`) runs it first for every backend, so that a framework version
without an API the suite uses is named before any record or benchmark is attempted: the lent GPU
machines run other versions than the development machines (PyTorch 2.11 against 2.13, JAX 0.11
against 0.10).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

from common import backends
from harness import processes


def run(backend: str, device: str) -> dict:
    """Never raises: a failure is reported in the result."""
    out = {"backend": backend, "device": device, "python": sys.executable,
           "python_version": sys.version.split()[0]}
    missing = processes.missing_here(backend)
    if missing:
        return {**out, "status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    try:
        train = processes.load(backend, "train")
        bench = processes.load(backend, "bench")
        out["versions"] = {k: str(v) for k, v in train.versions().items()}
    except Exception as e:
        return {**out, "status": "error", "reason": f"cannot import the backend: {type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}
    try:
        out["device_name"] = train.device_name(device)
    except Exception as e:  # no GPU, a driver mismatch: the finding itself
        out["device_error"] = f"{type(e).__name__}: {e}"[:1000]
    try:
        out["checks"], out["problems"] = bench.api_checks(device)
    except Exception as e:
        out["checks"], out["problems"] = {}, [f"the API checks failed: {type(e).__name__}: {e}"[:1000]]
    if "device_error" in out:
        out["problems"].append(f"no {device} for {backend}: {out['device_error']}")
    else:
        try:
            measured = bench.matmul_peak(device)
        except Exception as e:  # a measurement, not a check: its failure is reported, nothing more
            measured = {"error": f"{type(e).__name__}: {e}"[:500]}
        if measured is not None:
            out["measured"] = measured
    return {**out, "status": "ok"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, choices=sorted(backends.BACKENDS))
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = p.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON line
        result = run(args.backend, args.device)
    processes.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
