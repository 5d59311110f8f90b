"""Timed Flax training and inference steps: the bench.py contract of common.backends.

The fast path is what the Flax docs advise for speed: split the model (and optimizer) into a
graph definition and a state once, then jax.jit a pure step on the state with its buffers
donated; compile=False runs the same step eagerly, op by op. bf16 builds the network with
bfloat16 compute (parameters and the loss stay float32). Data is NHWC, Flax's own layout.
XLA cannot reset its peak-memory counter: the number covers the process (one configuration each).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import _loss, make_optimizer

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")


def _set_precision(precision: str) -> None:
    """fp32: float32 convs and matmuls. tf32 and bf16: TF32 allowed (bf16 for what the bfloat16 build leaves)."""
    jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else "tensorfloat32")


def benchmark(spec: NetSpec, mode: str, batch_size: int, precision: str, compile: bool, device: str,
              warmup: int = 5, windows: int = 5, steps: int = 10) -> dict:
    if mode not in MODES or precision not in PRECISIONS:
        raise ValueError(f"mode must be one of {MODES} and precision one of {PRECISIONS}, got {mode!r}, {precision!r}")
    try:
        return _run(spec, mode, batch_size, precision, compile, device, warmup, windows, steps)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            raise MemoryError(str(e)) from None
        raise


def _run(spec, mode, batch_size, precision, compile, device, warmup, windows, steps) -> dict:
    _set_precision(precision)
    dev = default_device(device)
    model = build(spec, device=device, dtype=jnp.bfloat16 if precision == "bf16" else None)
    rng = np.random.default_rng(0)
    c, h, w = spec.input_shape
    x = jax.device_put(rng.standard_normal((batch_size, h, w, c), dtype=np.float32), dev)  # synthetic, once
    y = jax.device_put(rng.integers(0, spec.num_classes, batch_size).astype(np.int32), dev)
    config = recipe(spec.name)

    if mode == "train":
        model.train()
        graphdef, state = nnx.split((model, make_optimizer(model, config)))

        def train_step(state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            loss, grads = nnx.value_and_grad(_loss)(model, x, y)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        run = jax.jit(train_step, donate_argnums=0) if compile else train_step

        def step():
            nonlocal state
            state, loss = run(state, x, y)
            return loss
    else:
        model.eval()
        graphdef, state = nnx.split(model)

        def infer_step(state, x):
            return nnx.merge(graphdef, state)(x)

        run = jax.jit(infer_step) if compile else infer_step

        def step():
            return run(state, x)

    def timed(n: int) -> float:
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(n):
            out = step()
        jax.block_until_ready((out, state))
        return time.perf_counter() - start

    first_step = timed(1)  # includes tracing and XLA compilation
    for _ in range(warmup):
        step()
    window_seconds = [timed(steps) for _ in range(windows)]
    memory = dev.memory_stats() or {}
    return {
        "images_per_second": statistics.median(batch_size * steps / s for s in window_seconds),
        "window_seconds": window_seconds,
        "first_step_seconds": first_step,
        "peak_memory_bytes": memory.get("peak_bytes_in_use"),
        "settings": {
            "device": str(dev),
            "compile": "jax.jit (XLA)" if compile else None,
            "donated_state": compile and mode == "train",
            "layout": "NHWC",
            "compute_dtype": "bfloat16" if precision == "bf16" else "float32",
            "param_dtype": "float32",
            "matmul_precision": jax.config.jax_default_matmul_precision,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "inference": mode == "infer",
            "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})"
            if mode == "train" else None,
        },
    }
