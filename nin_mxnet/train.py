"""Training NiN the Gluon way: gluon.loss.SoftmaxCrossEntropyLoss, gluon.Trainer, autograd.record()."""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from common.spec import TrainConfig

from .model import _canonical_tensors, _device_of

_LOSS = gluon.loss.SoftmaxCrossEntropyLoss()  # per-sample losses, shape (batch,)


def make_optimizer(model: nn.Block, config: TrainConfig) -> gluon.Trainer:
    # Gluon's SGD: mom = m * mom - lr * (g + wd * w); w += mom. With a constant lr, mom = -lr * v
    # for the suite's v = m * v + (g + wd * w); w -= lr * v. wd_mult is 1 for every parameter
    # (biases and batch-norm gamma / beta too), as in PyTorch.
    return gluon.Trainer(model.collect_params(), "sgd",
                         {"learning_rate": config.lr, "momentum": config.momentum, "wd": config.weight_decay})


def _batch(model: nn.Block, images: np.ndarray, labels: np.ndarray):
    ctx = _device_of(model)
    return mx.nd.array(images, ctx=ctx, dtype="float32"), mx.nd.array(labels, ctx=ctx, dtype="int32")


def loss_and_grads(model: nn.Block, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    with autograd.record():  # record() is training mode: dropout drops, batch norm uses batch statistics
        loss = _LOSS(model(x), y).mean()
    loss.backward()
    grads = {k: p.grad().astype("float32").asnumpy()
             for k, p in _canonical_tensors(model).items() if p.grad_req != "null"}
    return loss.asscalar().item(), grads


def train_step(model: nn.Block, trainer: gluon.Trainer, images: np.ndarray, labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    with autograd.record():
        loss = _LOSS(model(x), y)  # summed by backward(); step(batch_size) rescales to the mean
    loss.backward()
    trainer.step(x.shape[0])
    return loss.mean().asscalar().item()


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32: cuDNN autotuning off, deterministic kernels, TF32 off (conformance). fast: autotuning on.

    MXNet reads these environment variables when it creates an operator (autotuning, determinism)
    or a cuDNN / cuBLAS handle (NVIDIA_TF32_OVERRIDE): set them before building a model."""
    if precision not in ("fp32", "fast"):
        raise ValueError(f"precision must be 'fp32' or 'fast', got {precision!r}")
    strict = precision == "fp32"
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


def device_name(device: str) -> str:
    if device == "gpu":
        from mxnet.runtime import Features  # the device's name is not exposed; name the build instead
        return f"GPU (CUDA {'on' if Features().is_enabled('CUDA') else 'off'})"
    import platform
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {"mxnet": mx.__version__, "numpy": np.__version__}
