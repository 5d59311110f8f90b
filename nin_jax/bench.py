"""What only Flax and JAX know about timing NiN: the step to time, how to wait for the device, peak memory.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what the Flax docs advise for speed: split the model (and optimizer) into a
graph definition and a state once, then jax.jit a pure step on the state with its buffers donated;
"eager" runs the same step op by op. bf16 builds the network with bfloat16 compute (parameters and
the loss stay float32). Data is NHWC, Flax's own layout. XLA cannot reset its peak-memory counter:
the number covers the process (the runner gives each configuration its own).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import cross_entropy, make_optimizer


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data placed on the device once."""
    jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else "tensorfloat32")
    dev = default_device(device)
    model = build(spec, device=device, compute_dtype="bfloat16" if precision == "bf16" else None)
    rng = np.random.default_rng(0)
    c, h, w = spec.input_shape
    x = jax.device_put(rng.standard_normal((batch_size, h, w, c), dtype=np.float32), dev)
    y = jax.device_put(rng.integers(0, spec.num_classes, batch_size).astype(np.int32), dev)
    config = recipe(spec.name)
    compiled = compile == "compiled"

    if mode == "train":
        model.train()
        graphdef, state = nnx.split((model, make_optimizer(model, config)))

        def train_step(state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x).astype(x.dtype), y))(model)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        run = jax.jit(train_step, donate_argnums=0) if compiled else train_step

        def step():
            nonlocal state
            state, loss = run(state, x, y)
            return state, loss
    else:
        model.eval()
        graphdef, state = nnx.split(model)

        def infer_step(state, x):
            return nnx.merge(graphdef, state)(x)

        run = jax.jit(infer_step) if compiled else infer_step

        def step():
            return run(state, x)

    settings = {
        "device": str(dev),
        "compile": "jax.jit (XLA)" if compiled else None,
        "donated_state": compiled and mode == "train",
        "layout": "NHWC",
        "compute_dtype": "bfloat16" if precision == "bf16" else "float32",
        "param_dtype": "float32",
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})"
        if mode == "train" else None,
    }
    return step, settings


def synchronize(device: str, result=None) -> None:
    """Wait for the last step's result: JAX dispatches asynchronously, one step after another."""
    if result is not None:
        jax.block_until_ready(result)


def reset_peak_memory(device: str) -> None:
    """XLA keeps no resettable peak: each configuration runs in a fresh process instead."""


def peak_memory_bytes(device: str) -> int | None:
    return (default_device(device).memory_stats() or {}).get("peak_bytes_in_use") if device == "gpu" else None


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, jax.errors.JaxRuntimeError) and ("RESOURCE_EXHAUSTED" in text or
                                                              "out of memory" in text.lower())
