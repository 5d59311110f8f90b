"""Training NiN the Gluon way: gluon.loss.SoftmaxCrossEntropyLoss, gluon.Trainer, autograd.record()."""

from __future__ import annotations

import os
import platform

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from common.spec import TrainConfig

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")
LOSS = gluon.loss.SoftmaxCrossEntropyLoss()  # per-sample losses, shape (batch,)


def cross_entropy(logits: mx.nd.NDArray, labels: mx.nd.NDArray) -> mx.nd.NDArray:
    """Softmax cross-entropy per example: Gluon's losses are not reduced over the batch."""
    return LOSS(logits, labels)


def make_optimizer(model: nn.Block, config: TrainConfig) -> gluon.Trainer:
    # Gluon's SGD: mom = m * mom - lr * (g + wd * w); w += mom. With a constant lr, mom = -lr * v
    # for the suite's v = m * v + (g + wd * w); w -= lr * v. wd_mult is 1 for every parameter
    # (biases and batch-norm gamma / beta too), as in PyTorch.
    return gluon.Trainer(model.collect_params(), "sgd",
                         {"learning_rate": config.lr, "momentum": config.momentum, "wd": config.weight_decay})


def _batch(model: nn.Block, images: np.ndarray, labels: np.ndarray):
    return to_input(model, images), mx.nd.array(labels, ctx=device_of(model), dtype="int32")


def loss_and_grads(model: nn.Block, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    with autograd.record():  # record() is training mode: dropout drops, batch norm uses batch statistics
        loss = cross_entropy(model(x), y).mean()
    loss.backward()
    grads = {k: to_canonical(k, p.grad()) for k, p in canonical_tensors(model).items() if p.grad_req != "null"}
    return loss.asscalar().item(), grads


def train_step(model: nn.Block, optimizer: gluon.Trainer, images: np.ndarray, labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    with autograd.record():
        loss = cross_entropy(model(x), y)  # summed by backward(); step(batch_size) rescales to the mean
    loss.backward()
    optimizer.step(x.shape[0])
    return loss.mean().asscalar().item()


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32 / fp64: cuDNN autotuning off, deterministic kernels, TF32 off (conformance). fast: autotuning on.
    (fp64 is the model's dtype: build(dtype="float64") casts every parameter.)

    MXNet reads these environment variables when it creates an operator (autotuning, determinism)
    or a cuDNN / cuBLAS handle (NVIDIA_TF32_OVERRIDE): set them before building a model."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    strict = precision != "fast"
    env = {
        "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0" if strict else "1",
        "MXNET_ENFORCE_DETERMINISM": "1" if strict else "0",
        "MXNET_CUDA_ALLOW_TENSOR_CORE": "0" if strict else "1",
    }
    os.environ.update(env)
    if strict:
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # cuDNN and cuBLAS: no TF32 on Ampere and later
    else:
        os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    return {
        "precision": precision,
        **env,
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "MXNET_MKLDNN_ENABLED": os.environ.get("MXNET_MKLDNN_ENABLED", "1"),
        "threads": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
    }


def float64_limits() -> dict[str, str]:
    """Operations that compute below float64 in the fp64 mode, with the reason: none in MXNet (its
    optimizer and batch-norm momentum settings are float32: HYPERPARAMETERS in model.py)."""
    return {}


def device_name(device: str) -> str:
    if device == "gpu":
        from mxnet.runtime import Features  # the device's name is not exposed; name the build instead
        return f"GPU (CUDA {'on' if Features().is_enabled('CUDA') else 'off'})"
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {"mxnet": mx.__version__, "numpy": np.__version__}
