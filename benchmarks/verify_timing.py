"""An independent check of the harness's clock: one plain loop, timed once from end to end.

benchmarks.timing's windows, medians and per-window waits are not used: the loop is plain Python,
and the device is synchronised only before and after the whole loop (time.perf_counter around it).
The step is the backend's own independent loop where it has one (bench.timing_loop: JAX's is a
few lines of jax.lax written from the spec, since JAX dispatches asynchronously), else the bench's
step (make_step, or plain_step for the plain code) in `plain_loop`. The loop runs windows x steps
steps after the same warm-up, and its images/s is set beside the harness's median: on a GPU they
must agree within TOLERANCE.

    python -m benchmarks.verify_timing --backend torch --variant d2l --mode train --batch-size 128 --device gpu
    python -m benchmarks.verify_timing --compare benchmarks/results/<file>.json   (re-times, rewrites the file)
    nin bench --verify ...                                                      (the same, in the sweep)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from common import spec as specs
from harness import processes

from . import worker

TOLERANCE = 0.10  # |harness / loop - 1|


def plain_loop(step, synchronize, *, warmup: int, steps: int) -> float:
    """Seconds of `steps` steps after warmup + 1 (the first compiles), the device waited for at the two ends only."""
    out = None
    for _ in range(warmup + 1):
        out = step()
    synchronize(out)
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    synchronize(out)
    return time.perf_counter() - start


def run(config: dict) -> dict:
    """Time windows x steps steps in one plain loop (in the backend's own process); never raises. The
    backend's own independent loop (bench.timing_loop) where it has one, else its bench step in plain_loop."""
    backend = config["backend"]
    missing = processes.missing_here(backend)
    if missing:
        return {"status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    n = config["windows"] * config["steps"]
    try:
        processes.load(backend, "train").configure(config["device"], "fast")  # as the worker runs it
        bench = processes.load(backend, "bench")
        seconds = None if config["compile"] == "plain" else bench.timing_loop(
            specs.get(config["variant"]), mode=config["mode"], batch_size=config["batch_size"],
            precision=config["precision"], compile=config["compile"], device=config["device"],
            warmup=config["warmup"], steps=n)
        loop = "bench.timing_loop" if seconds is not None else "bench step, plain loop"
        if seconds is None:
            step, _ = worker.make(bench, config, runs=config["warmup"] + 1 + n)
            seconds = plain_loop(step, lambda result: bench.synchronize(config["device"], result),
                                 warmup=config["warmup"], steps=n)
    except Exception as e:
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"[:2000]}
    return {"status": "ok", "images_per_second": config["batch_size"] * n / seconds, "seconds": seconds, "steps": n,
            "loop": loop}


def check(results: list[dict], timeout: float | None = None) -> list[dict]:
    """Time every "ok" result again in a fresh process of its backend; adds r["verify"] to each."""
    for r in results:
        if r["status"] != "ok":
            continue
        config = {k: r[k] for k in worker.CONFIG_KEYS}
        loop = processes.call(r["backend"], "benchmarks.verify_timing", worker.arguments(config), timeout)
        if loop["status"] == "ok":
            ratio = r["images_per_second"] / loop["images_per_second"]
            loop.update(ratio=ratio, agrees=abs(ratio - 1) <= TOLERANCE, tolerance=TOLERANCE)
        r["verify"] = loop
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, metavar="RESULT_JSON",
                        help="re-time every measured configuration of a result file and write the check into it")
    worker.add_config_arguments(parser, backend_required=False)
    args = parser.parse_args(argv)
    if args.compare:
        from . import report
        doc = json.loads(args.compare.read_text())
        check(doc["results"])
        report.write(doc, args.compare)
        print(report.table(doc["results"]))
        gpu = doc["device"]["kind"] == "gpu"
        return 1 if gpu and any((r.get("verify") or {}).get("agrees") is False for r in doc["results"]) else 0
    if not args.backend:
        parser.error("--backend is needed (or --compare)")
    with contextlib.redirect_stdout(sys.stderr):
        result = run(worker.config_from_args(args))
    processes.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
