"""What only Keras knows about timing NiN: the step to time, how to wait for the device, peak memory.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The step is Keras's own `train_on_batch` / `predict_on_batch` under the model's compile mode:
eager (run_eagerly=True), graph (TensorFlow's tf.function without XLA: Keras's default there) or
compiled (jit_compile=True: XLA, jax.jit or torch.compile). Both calls return host values, so each
step has finished when it returns.
"""

from __future__ import annotations

import keras
import numpy as np

from common import weights
from common.spec import NetSpec, recipe

from .model import build, default_device, load_weights
from .train import LOSS, make_optimizer

POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16"}


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data made once."""
    where = default_device(device)
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    model = build(spec, device=device)
    load_weights(model, weights.init(spec))
    config = recipe(spec.name)
    jit = {"eager": dict(run_eagerly=True, jit_compile=False), "graph": dict(run_eagerly=False, jit_compile=False),
           "compiled": dict(run_eagerly=False, jit_compile=True)}[compile]
    model.compile(optimizer=make_optimizer(model, config), loss=LOSS, **jit)
    rng = np.random.default_rng(0)
    c, h, w = spec.input_shape
    x = rng.standard_normal((batch_size, h, w, c), dtype=np.float32)  # NHWC
    y = rng.integers(0, spec.num_classes, batch_size).astype(np.int32)
    with keras.device(where):
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)  # on the device once

    def step():
        with keras.device(where):
            return model.train_on_batch(x, y) if mode == "train" else model.predict_on_batch(x)

    settings = {
        "device": where,
        "keras_backend": keras.backend.backend(),
        "compile": compile,
        **jit,
        "mixed_precision_policy": POLICIES[precision],
        "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})"
        if mode == "train" else None,
    }
    return step, settings


def synchronize(device: str, result=None) -> None:
    """Nothing to wait for: train_on_batch and predict_on_batch return host values."""


def reset_peak_memory(device: str) -> None:
    if device == "gpu" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_bytes(device: str) -> int | None:
    """TensorFlow's allocator counts its peak; Keras has no backend-neutral counter, so JAX and
    PyTorch under Keras report None (their own backends, nin_jax and nin_torch, do report it)."""
    if device == "gpu" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(s in text for s in ("resourceexhausted", "resource_exhausted", "out of memory"))
