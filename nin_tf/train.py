"""Training NiN the Keras way: SparseCategoricalCrossentropy, keras.optimizers.SGD, tf.GradientTape."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from common.spec import TrainConfig

from .model import _canonical_tensors, _device_of, _to_canonical, nchw_to_nhwc

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch


class CoupledSGD(keras.optimizers.SGD):
    """Keras SGD with L2 weight decay added to the gradient first (g += wd * w), the suite's convention.
    Keras's own momentum, v = m * v - lr * g; w += v, equals PyTorch's v = m * v + g; w -= lr * v for a
    constant lr; its weight_decay= is decoupled (w -= lr * wd * w), so it is left at None."""

    def __init__(self, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = keras.ops.add(gradient, keras.ops.multiply(keras.ops.cast(self.l2, variable.dtype), variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def make_optimizer(model: keras.Model, config: TrainConfig) -> keras.optimizers.Optimizer:
    optimizer = CoupledSGD(l2=config.weight_decay, learning_rate=config.lr, momentum=config.momentum)
    optimizer.build(model.trainable_variables)
    return optimizer


def _batch(model: keras.Model, images: np.ndarray, labels: np.ndarray):
    with tf.device(_device_of(model)):
        return (tf.constant(nchw_to_nhwc(np.asarray(images, dtype=np.float32))),
                tf.constant(np.asarray(labels, dtype=np.int32)))


def loss_and_grads(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    trainable = {k: v for k, v in _canonical_tensors(model).items() if v.trainable}
    with tf.device(_device_of(model)):
        with tf.GradientTape() as tape:
            loss = _LOSS(y, model(x, training=True))
        grads = tape.gradient(loss, trainable)
    return float(loss), {k: _to_canonical(g.numpy().astype(np.float32)) for k, g in grads.items()}


def train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, images: np.ndarray,
               labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    with tf.device(_device_of(model)):
        with tf.GradientTape() as tape:
            loss = _LOSS(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return float(loss)


_deterministic = False  # TensorFlow has no public switch to turn op determinism back off, nor to read it


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32: TF32 off, deterministic ops on (conformance). fast: TF32 on (determinism, once on, stays on)."""
    global _deterministic
    if precision not in ("fp32", "fast"):
        raise ValueError(f"precision must be 'fp32' or 'fast', got {precision!r}")
    strict = precision == "fp32"
    tf.config.experimental.enable_tensor_float_32_execution(not strict)
    if strict and not _deterministic:
        tf.config.experimental.enable_op_determinism()
        _deterministic = True
    return {
        "precision": precision,
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
        "deterministic": _deterministic,
        "mixed_precision_policy": keras.mixed_precision.global_policy().name,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
    }


def device_name(device: str) -> str:
    if device == "gpu":
        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    import platform
    return platform.processor() or platform.machine()


def versions() -> dict:
    build = tf.sysconfig.get_build_info()
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"), "numpy": np.__version__}
