"""Timed NiN training and inference steps in Keras on TensorFlow: eager, or tf.function(jit_compile=True) (XLA)."""

from __future__ import annotations

import statistics
import time

import keras
import tensorflow as tf

from common import weights
from common.spec import NetSpec, recipe

from . import train
from .model import build, default_device, load_weights

_POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16"}


def _step(model: keras.Model, mode: str, optimizer: keras.optimizers.Optimizer):
    """One training step (forward, backward, SGD update) or one inference forward, on device tensors.
    Logits and loss are float32 whatever the policy computes in."""
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = train._LOSS(y, tf.cast(model(x, training=True), tf.float32))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def infer_step(x, y):
        return tf.cast(model(x, training=False), tf.float32)

    return train_step if mode == "train" else infer_step


def benchmark(spec: NetSpec, mode: str, batch_size: int, precision: str, compile: bool, device: str | None,
              warmup: int = 5, windows: int = 5, steps: int = 10) -> dict:
    """Images per second of `mode` ("train" or "infer"); see common.backends for the contract."""
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
    if precision not in _POLICIES:
        raise ValueError(f"precision must be one of {sorted(_POLICIES)}, got {precision!r}")
    where = default_device(device)
    gpu = "GPU" in where.upper()
    tf.config.experimental.enable_tensor_float_32_execution(precision != "fp32")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(_POLICIES[precision])
    try:
        if gpu:
            tf.config.experimental.reset_memory_stats(where.lstrip("/"))
        with tf.device(where):
            model = build(spec, device=where)
            load_weights(model, weights.init(spec))
            config = recipe(spec.name)
            optimizer = train.make_optimizer(model, config)
            c, h, w = spec.input_shape
            images = tf.random.uniform((batch_size, h, w, c))  # NHWC, on the device once
            labels = tf.random.uniform((batch_size,), maxval=spec.num_classes, dtype=tf.int32)
            step = _step(model, mode, optimizer)
            if compile:
                step = tf.function(step, jit_compile=True)

            def run(n: int) -> None:
                out = None
                for _ in range(n):
                    out = step(images, labels)
                if out is not None:
                    out.numpy()  # waits for the device

            start = time.perf_counter()
            run(1)
            first = time.perf_counter() - start
            run(warmup)
            seconds = []
            for _ in range(windows):
                start = time.perf_counter()
                run(steps)
                seconds.append(time.perf_counter() - start)
        peak = tf.config.experimental.get_memory_info(where.lstrip("/"))["peak"] if gpu else None
    except tf.errors.ResourceExhaustedError as e:
        raise MemoryError(f"{spec.name} {mode} batch {batch_size} ({precision}) ran out of memory on {where}: "
                          f"{e.message.splitlines()[0]}") from None
    finally:
        keras.backend.clear_session()  # frees this model before the next benchmark in the process
        keras.mixed_precision.set_global_policy(previous)
    return {
        "images_per_second": statistics.median(batch_size * steps / s for s in seconds),
        "window_seconds": seconds,
        "first_step_seconds": first,
        "peak_memory_bytes": int(peak) if peak is not None else None,
        "settings": {
            "precision": precision,
            "tf32": precision != "fp32",
            "mixed_precision_policy": _POLICIES[precision],
            "jit_compile": bool(compile),
            "eager": not compile,
            "deterministic": train._deterministic,
            "device": where,
            "optimizer": {"lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay},
        },
    }
