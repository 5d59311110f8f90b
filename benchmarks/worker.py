"""One benchmark configuration, run in the backend's own process and interpreter.

    python -m benchmarks.worker --backend torch --variant d2l --mode train --batch-size 128 \
        --precision bf16 --compile compiled --device gpu

prints one JSON object as the last line of stdout: the timing (benchmarks.timing) plus the
configuration, "status", the backend's settings, versions, numerics and device name. Status is "ok",
"oom" (the device or the host ran out of memory), "skipped" (the framework is absent here, or the
backend has no such compile mode; "reason" says which) or "error" ("reason" and "traceback").
The backend gives what only it knows (its bench.py: the step, synchronisation, peak memory); the
loop is benchmarks.timing's, the same for all. With --devices N the step is instead one batch of the
backend's training loop (loop.py, as `nin train --devices N` runs it) on N replicas of the framework's
data-parallel engine: its images per second over --devices 1's is the scaling efficiency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

import numpy as np

from common import backends, weights
from common import spec as specs
from harness import processes

from .timing import measure

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("cpu", "gpu")
CONFIG_KEYS = ("backend", "variant", "mode", "batch_size", "precision", "compile", "device", "warmup", "windows",
               "steps")  # and "devices", in a configuration of the data-parallel sweep (nin bench --devices)
LOOP_LR = 0.01  # the loop's plain SGD rate: small enough that no step of a timed run diverges


def run(config: dict) -> dict:
    """Configure the backend for benchmarking and time one configuration; never raises."""
    out = {**config, "python": sys.executable}
    missing = processes.missing_here(config["backend"])
    if missing:
        return {**out, "status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    bench = None
    try:
        if config.get("devices", 1) > 1 and config["device"] == "cpu":  # before the framework starts computing
            out["simulated_devices"] = processes.load(config["backend"], "distributed").simulate_devices(
                config["devices"])
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
        runs = 1 + config["warmup"] + config["windows"] * config["steps"]
        try:
            step, settings = (make_loop(config, runs=runs) if config.get("devices") else
                              make(bench, config, runs=runs))
        except NotImplementedError as e:  # the engine cannot run these replicas (loop.make_trainer says why)
            return {**out, "status": "skipped", "reason": str(e)}
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


def make_loop(config: dict, *, runs: int):
    """(step, settings): step() trains one fixed batch of uint8 28x28 images through the backend's loop.py
    (make_trainer(devices=N), then train_epoch over that one batch: the resize on the device, the train step,
    the engine's all-reduce), plain SGD from the canonical init. Dropout is off: Keras on TensorFlow refuses a
    network with dropout on replicas (the same mask on each), and a mask's cost is not the engine's."""
    loop = processes.load(config["backend"], "loop")
    spec = specs.get(config["variant"]).with_dropout(0.0)
    trainer = loop.make_trainer(spec, np.full(runs, LOOP_LR), momentum=0.0, weight_decay=0.0, device=config["device"],
                                compile=config["compile"], devices=config["devices"])
    loop.load_state(trainer, weights.init(spec, 0), {}, 0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config["batch_size"], 28, 28), dtype=np.uint8)
    labels = rng.integers(0, spec.num_classes, config["batch_size"]).astype(np.int32)
    losses: list = []

    def step():
        loop.train_epoch(trainer, images, labels, batch_size=config["batch_size"], dropout_seed=0,
                         progress=lambda n, loss, correct: losses.append(loss))
        return losses.pop()

    engine = processes.load(config["backend"], "distributed").ENGINE if config["devices"] > 1 else "one device"
    return step, {"path": "loop.py: make_trainer, train_epoch on one batch", "devices": config["devices"],
                  "engine": engine, "dropout": "off", "optimizer": f"SGD(lr={LOOP_LR}, momentum=0.0)"}


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
    parser.add_argument("--devices", type=int, help="time the training loop on N data-parallel replicas")


def config_from_args(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in CONFIG_KEYS} | ({"devices": args.devices} if args.devices else {})


def arguments(config: dict) -> list[str]:
    """The command-line arguments that give a worker this configuration."""
    out: list[str] = []
    for key in CONFIG_KEYS + (("devices",) if config.get("devices") else ()):
        out += [f"--{key.replace('_', '-')}", str(config[key])]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    return parser


def _replicas(config: dict, argv: list[str]) -> int | None:
    """Where the engine runs a process per replica (PyTorch), its launcher runs this worker once per replica
    and its exit status comes back; None in a replica, or where the replicas share this process."""
    if config.get("devices", 1) < 2 or processes.missing_here(config["backend"]):
        return None
    return processes.load(config["backend"], "distributed").launch(config["devices"], "benchmarks.worker", argv)


def _first(config: dict) -> bool:
    """Whether this process reports: the only one, or replica 0 of a launch."""
    return config.get("devices", 1) < 2 or processes.load(config["backend"], "distributed").process_index() == 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = config_from_args(build_parser().parse_args(argv))
    launched = _replicas(config, argv)
    if launched is not None:
        return launched
    with processes.sigterm_unwinds(), contextlib.redirect_stdout(sys.stderr):  # stdout: the one JSON line
        try:
            result = run(config)
        except KeyboardInterrupt as e:
            result = {**config, "status": "error", "reason": "interrupted"}
            code = processes.interrupted_status(e)
        else:
            code = 0
    if result["status"] != "ok" or _first(config):
        processes.print_result(result)
    return code


if __name__ == "__main__":
    status = main()
    if any(arg.startswith("--devices") for arg in sys.argv):  # a replica leaves without the interpreter's
        sys.stdout.flush()  # teardown: freeing DDP's reducer can wait on gloo for the GIL it holds (seen here)
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
