"""The four backends: where each lives, which interpreter runs it, and the contract each honours.

Every `nin_<name>` package has the same files, and each file the same public functions in the same
order, so that a diff of two backends shows framework idioms only. Arrays cross the boundary as
NumPy, in the canonical layout (images NCHW float32, weights by common.weights names, OIHW):

model.py
    FRAMEWORK                                 the framework's import name
    nin_block(in_channels, out_channels, kernel_size, strides, padding, mlp=(), relu_last=True,
              norm=None)                      the chapter's block, in the framework's own layers
                                              (norm: a common.spec.BatchNorm, from spec.norm(block))
    default_device(device) -> device          None: the framework's GPU when it sees one, else CPU
    build(spec, device=None) -> model         one top-level layer per entry of spec.layers
    load_weights(model, weights)              canonical dict in (raises WeightsError naming the tensor)
    export_weights(model) -> dict             canonical dict out (parameters and batch-norm statistics)
    forward(model, images, training=False, seed=0) -> logits   NumPy in, NumPy out
    layer_shapes(model, images) -> list       the (C, H, W) / (C,) output of every spec layer

train.py
    make_optimizer(model, config)             SGD with momentum and coupled weight decay
                                              (g += wd * w; v = m * v + g; w -= lr * v)
    loss_and_grads(model, images, labels) -> (loss, grads)   training mode, canonical names
    train_step(model, optimizer, images, labels) -> loss      one SGD step, training mode
    configure(device, precision) -> dict      numerics settings, applied process-wide: "fp32" = TF32 off
                                              and deterministic algorithms (conformance); "fast" = TF32
    device_name(device) -> str                the GPU's or CPU's name, for records and results
    versions() -> dict                        framework and library versions

bench.py
    benchmark(spec, mode, batch_size, precision, compile, device, warmup=5, windows=5, steps=10) -> dict
        mode "train" (forward, backward, SGD update) or "infer" (forward, eval mode);
        precision "fp32" (TF32 off; deterministic algorithms NOT forced: that is conformance's setting),
        "tf32" (TF32 allowed) or "bf16" (the framework's mixed precision); the optimizer is
        common.spec.recipe(spec.name), the same in every backend;
        compile True = the fast path the framework's users would use (torch.compile + channels_last,
        Keras jit_compile=True, jax.jit with donated buffers, Gluon hybridize(static_alloc=True,
        static_shape=True)); False = the plain eager path.
        Synthetic data is put on the device once. The first step is timed alone (compile time:
        `first_step_seconds`), then `warmup` untimed steps, then `windows` timed windows of `steps`
        steps each, the device synchronised before and after each window.
        Returns {"images_per_second": float (median over windows), "window_seconds": [...],
                 "first_step_seconds": float, "peak_memory_bytes": int or None,
                 "settings": {every framework switch in force}}.
        Raises MemoryError when the device runs out of memory (the runner records it and goes on).

Nothing here imports a framework: the backends are imported by name, in their own process.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Backend:
    name: str  # what users type: --backend torch
    package: str  # the nin_* package
    framework: str  # the module whose presence means the backend can run
    venv: str  # the environment that has it (MXNet needs numpy<1.24, so it lives apart)


BACKENDS = {
    b.name: b for b in (
        Backend("mxnet", "nin_mxnet", "mxnet", ".venv-mxnet"),
        Backend("torch", "nin_torch", "torch", ".venv"),
        Backend("tf", "nin_tf", "tensorflow", ".venv"),
        Backend("jax", "nin_jax", "flax", ".venv"),
    )
}


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def available_here(name: str) -> bool:
    """Whether this interpreter can import the backend's framework (without importing it)."""
    return importlib.util.find_spec(get(name).framework) is not None


def python_for(name: str) -> str:
    """The interpreter that runs a backend: $NIN_PYTHON_<NAME>, else the repository's venv for it,
    else this interpreter if it has the framework."""
    override = os.environ.get(f"NIN_PYTHON_{name.upper()}")
    if override:
        return override
    candidate = ROOT / get(name).venv / "bin" / "python"
    if candidate.is_file():
        return str(candidate)
    return sys.executable


def load(name: str, module: str = "model"):
    """Import nin_<name>.<module>; only ever called inside that backend's own process."""
    return importlib.import_module(f"{get(name).package}.{module}")
