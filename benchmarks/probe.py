"""What a backend's process finds before any work: versions, the device, and the APIs the backend relies on.

    python -m benchmarks.probe --backend jax --device gpu

prints one JSON object as the last line of stdout (harness.processes.call reads it): "status" ("ok";
"skipped" when the framework is not installed for this interpreter; "error" when the backend cannot
even be imported), "versions", "device_name" (or "device_error"), "checks" (name -> true / false /
a value) and "problems": one sentence per missing API, naming what it breaks. The GPU session (`python -m gpu`)
runs it first for every backend, so that a framework version without an API
the suite uses is named before any record or benchmark is attempted: the lent GPU machines run other
versions than the development machines (PyTorch 2.11 against 2.13, JAX 0.11 against 0.10).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import sys
import traceback

from common import backends
from harness import processes


def _torch_checks(device: str) -> tuple[dict, list[str]]:
    import torch

    checks, problems = {}, []
    checks["nn.Module.compile"] = hasattr(torch.nn.Module, "compile")
    if not checks["nn.Module.compile"]:
        problems.append(f"torch {torch.__version__} has no nn.Module.compile (PyTorch >= 2.2): nin_torch's compiled "
                        "conformance mode fails; the benchmarks' torch.compile path does not need it")
    checks["torch.compile"] = hasattr(torch, "compile")
    try:  # the suite sets the legacy TF32 flags only; reading them fails where the new API was mixed in
        checks["tf32 flags (allow_tf32)"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    except Exception as e:  # any failure is the finding
        checks["tf32 flags (allow_tf32)"] = f"{type(e).__name__}: {e}"[:300]
        problems.append(f"torch {torch.__version__}: reading torch.backends.*.allow_tf32 fails ({e}); "
                        "nin_torch.train.configure and bench.make_step set them")
    checks["fp32_precision API"] = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    checks["use_deterministic_algorithms"] = hasattr(torch, "use_deterministic_algorithms")
    checks["triton"] = importlib.util.find_spec("triton") is not None
    if device == "gpu":
        checks["cuda available"] = torch.cuda.is_available()
        if checks["cuda available"]:
            checks["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            checks["cudnn"] = torch.backends.cudnn.version()
        if not checks["triton"]:
            problems.append("triton is not installed: torch.compile cannot build GPU kernels (compiled modes fail)")
    return checks, problems


def _jax_checks(device: str) -> tuple[dict, list[str]]:
    import flax
    import jax
    import optax
    from flax import nnx

    checks, problems = {}, []
    init = inspect.signature(nnx.Optimizer.__init__).parameters
    update = list(inspect.signature(nnx.Optimizer.update).parameters)
    checks["nnx.Optimizer(model, tx, wrt=)"] = "wrt" in init
    checks["optimizer.update(model, grads)"] = update[1:3] == ["model", "grads"]
    if not (checks["nnx.Optimizer(model, tx, wrt=)"] and checks["optimizer.update(model, grads)"]):
        problems.append(f"flax {flax.__version__}: nnx.Optimizer is the older one (no wrt=, update(grads)); "
                        "nin_jax needs flax >= 0.11")
    for name in ("value_and_grad", "jit", "split", "merge", "state", "reseed", "Sequential", "BatchNorm", "Dropout"):
        checks[f"nnx.{name}"] = hasattr(nnx, name)
        if not checks[f"nnx.{name}"]:
            problems.append(f"flax {flax.__version__} has no nnx.{name}: nin_jax uses it")
    checks["nnx.Variable[...]"] = hasattr(nnx.Variable, "__getitem__")
    for name in ("add_decayed_weights", "sgd", "chain", "softmax_cross_entropy_with_integer_labels"):
        checks[f"optax.{name}"] = hasattr(optax, name)
        if not checks[f"optax.{name}"]:
            problems.append(f"optax {optax.__version__} has no {name}: nin_jax uses it")
    checks["jax_default_matmul_precision"] = hasattr(jax.config, "jax_default_matmul_precision")
    checks["platforms"] = sorted({d.platform for d in jax.devices()})
    return checks, problems


def _keras_checks(device: str) -> tuple[dict, list[str]]:
    import keras

    checks, problems = {}, []
    checks["keras 3"] = keras.__version__.split(".")[0] == "3"
    if not checks["keras 3"]:
        problems.append(f"keras {keras.__version__}: nin_tf needs Keras 3")
    checks["backend"] = keras.backend.backend()
    for name in ("device", "mixed_precision", "config", "ops"):
        checks[f"keras.{name}"] = hasattr(keras, name)
    checks["new tensor's device"] = str(getattr(keras.ops.zeros(()), "device", ""))
    if keras.backend.backend() == "jax":  # TF32 under Keras on JAX: XLA's default matmul precision decides
        import jax
        checks["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    return checks, problems


def _torch_peak(n: int = 8192, repeats: int = 10) -> dict:
    """The GPU's matmul rate as PyTorch reaches it (n x n x n, timed with CUDA events): the measured roof
    that a training step's TFLOP/s is set against, beside the datasheet's (benchmarks.utilization)."""
    import torch

    out = {"matmul_n": n, "repeats": repeats, "clock": "CUDA events"}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                                  ("fp32", torch.float32, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            for _ in range(3):
                a @ b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                a @ b
            end.record()
            end.synchronize()
            out[f"{name}_matmul_tflops"] = 2 * n ** 3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
        torch.cuda.empty_cache()
    return out


CHECKS = {"nin_torch": _torch_checks, "nin_jax": _jax_checks, "nin_tf": _keras_checks}


def run(backend: str, device: str) -> dict:
    """Never raises: a failure is reported in the result."""
    out = {"backend": backend, "device": device, "python": sys.executable,
           "python_version": sys.version.split()[0]}
    missing = processes.missing_here(backend)
    if missing:
        return {**out, "status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    try:
        train = processes.load(backend, "train")
        out["versions"] = {k: str(v) for k, v in train.versions().items()}
    except Exception as e:
        return {**out, "status": "error", "reason": f"cannot import the backend: {type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}
    try:
        out["device_name"] = train.device_name(device)
    except Exception as e:  # no GPU, a driver mismatch: the finding itself
        out["device_error"] = f"{type(e).__name__}: {e}"[:1000]
    try:
        out["checks"], out["problems"] = CHECKS[backends.get(backend).package](device)
    except Exception as e:
        out["checks"], out["problems"] = {}, [f"the API checks failed: {type(e).__name__}: {e}"[:1000]]
    if "device_error" in out:
        out["problems"].append(f"no {device} for {backend}: {out['device_error']}")
    elif device == "gpu" and backend == "torch":
        try:
            out["measured"] = _torch_peak()
        except Exception as e:  # a measurement, not a check: its failure is reported, nothing more
            out["measured"] = {"error": f"{type(e).__name__}: {e}"[:500]}
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
