"""What only Keras knows about timing NiN: the step to time and its plain peer, how to wait for the
device, peak memory, and the APIs the suite relies on.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The step is Keras's own `train_on_batch` / `predict_on_batch` under the model's compile mode:
eager (run_eagerly=True), graph (TensorFlow's tf.function without XLA: Keras's default there) or
compiled (jit_compile=True: XLA, jax.jit or torch.compile). Both calls return host values, so each
step has finished when it returns.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from common import weights
from common.spec import NetSpec

from .model import build, default_device, load_weights
from .train import LOSS, make_optimizer

POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16"}
LR = 0.05  # the book's rate, plain SGD: any rate times alike (benchmarks.runner predicts no momentum buffer)


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str, steps: int):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data made once."""
    where = default_device(device)
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    model = build(spec, device=device)
    load_weights(model, weights.init(spec))
    jit = {"eager": dict(run_eagerly=True, jit_compile=False), "graph": dict(run_eagerly=False, jit_compile=False),
           "compiled": dict(run_eagerly=False, jit_compile=True)}[compile]
    model.compile(optimizer=make_optimizer(model, np.full(steps, LR)), loss=LOSS, **jit)
    rng = np.random.default_rng(0)
    c, h, w = spec.input_shape
    x = rng.standard_normal((batch_size, h, w, c), dtype=np.float32)  # NHWC
    y = rng.integers(0, spec.num_classes, batch_size).astype(np.int32)
    with keras.device(where):
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)  # on the device once

    def step():
        with keras.device(where):
            return _step(model, x, y, mode)

    settings = {
        "device": where,
        "keras_backend": keras.backend.backend(),
        "compile": compile,
        **jit,
        "mixed_precision_policy": POLICIES[precision],
        "optimizer": f"SGD(lr={LR}, momentum=0.0, weight_decay=0.0)" if mode == "train" else None,
    }
    return step, settings


def plain_step(*, mode: str, batch_size: int, device: str):
    """(step, settings): the d2l TensorFlow tab's network in Keras 3 (fixed channel counts, Keras's
    default layers and initialisers), compiled as Keras's default leaves it (jit_compile "auto")."""
    def nin_block(num_channels, kernel_size, strides, padding):
        return keras.Sequential([
            keras.layers.Conv2D(num_channels, kernel_size, strides=strides, padding=padding, activation="relu"),
            keras.layers.Conv2D(num_channels, kernel_size=1, activation="relu"),
            keras.layers.Conv2D(num_channels, kernel_size=1, activation="relu")])

    net = keras.Sequential([
        keras.Input((224, 224, 1)),
        nin_block(96, kernel_size=11, strides=4, padding="valid"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        nin_block(256, kernel_size=5, strides=1, padding="same"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        nin_block(384, kernel_size=3, strides=1, padding="same"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        keras.layers.Dropout(0.5),
        nin_block(10, kernel_size=3, strides=1, padding="same"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Flatten()])
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=LR),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 224, 224, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)
    return (lambda: _step(net, x, y, mode)), {"code": "d2l TensorFlow tab, Keras 3",
                                              "jit_compile": str(net.jit_compile),
                                              "keras_backend": keras.backend.backend()}


def _step(model: keras.Model, x, y, mode: str):
    """Keras's own step: train_on_batch (forward, backward, the optimizer's update) or predict_on_batch."""
    return model.train_on_batch(x, y) if mode == "train" else model.predict_on_batch(x)


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


def timing_loop(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                warmup: int, steps: int) -> float | None:
    """None: no loop of Keras's own; each step returns host values, so benchmarks.verify_timing's plain
    loop over make_step's step checks the harness's clock as well as a rewrite would."""
    return None


def api_checks(device: str) -> tuple[dict, list[str]]:
    """Keras 3 and the parts of it the suite uses, on the backend this process runs."""
    checks, problems = {}, []
    checks["keras 3"] = keras.__version__.split(".")[0] == "3"
    if not checks["keras 3"]:
        problems.append(f"keras {keras.__version__}: nin_tf needs Keras 3")
    checks["backend"] = keras.backend.backend()
    for name in ("device", "mixed_precision", "config", "ops"):
        checks[f"keras.{name}"] = hasattr(keras, name)
    checks["new tensor's device"] = str(getattr(keras.ops.zeros(()), "device", ""))
    if keras.backend.backend() == "jax":  # TF32 under Keras on JAX: XLA's default matmul precision decides
        # configure() sets it through the environment variable JAX reads (no jax import outside nin_jax)
        checks["jax_default_matmul_precision"] = os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "None")
    return checks, problems


def matmul_peak(device: str) -> dict | None:
    """None: not measured with Keras (the GPU session takes the rate from the backend it probes first)."""
    return None
