"""What only MXNet knows about timing NiN: the step to time, how to wait for the device, peak memory.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what a Gluon user would write: hybridize(static_alloc=True, static_shape=True),
and AMP (mxnet.contrib.amp) for bf16; "eager" is the plain imperative block. MXNet's precision
switches are process-wide (amp.init rewrites the operators for good; cuDNN and cuBLAS read
NVIDIA_TF32_OVERRIDE once), so one process benchmarks one precision (the runner gives each its own).
"""

from __future__ import annotations

import os

import mxnet as mx
from mxnet import autograd
from mxnet.contrib import amp

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import cross_entropy, make_optimizer


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data placed on the device once."""
    ctx = default_device(device)
    if precision == "tf32" and ctx.device_type != "gpu":
        raise ValueError("precision 'tf32' needs a GPU: MXNet's CPU kernels have no TF32 (use fp32 or bf16)")
    if precision == "fp32":
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # before the first cuDNN / cuBLAS call
    else:
        os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    if precision == "bf16":
        amp.init(target_dtype="bfloat16")  # before any model is built
    model = build(spec, device=ctx.device_type)  # hybridized below, with the static options
    x = mx.nd.random.normal(shape=(batch_size,) + spec.input_shape, ctx=ctx)
    y = mx.nd.random.randint(0, spec.num_classes, shape=(batch_size,), ctx=ctx)
    compiled = compile == "compiled"
    if compiled:
        model.hybridize(static_alloc=True, static_shape=True)
    config = recipe(spec.name)

    if mode == "train":
        trainer = make_optimizer(model, config)

        def step():
            with autograd.record():
                loss = cross_entropy(model(x), y)
            loss.backward()
            trainer.step(batch_size)
            return loss
    else:
        def step():
            with autograd.predict_mode():
                return model(x)

    settings = {
        "device": str(ctx),
        "compile": "hybridize(static_alloc=True, static_shape=True)" if compiled else None,
        "amp": "bfloat16" if precision == "bf16" else None,
        **{name: os.environ.get(name) for name in (
            "NVIDIA_TF32_OVERRIDE", "MXNET_CUDNN_AUTOTUNE_DEFAULT", "MXNET_ENFORCE_DETERMINISM",
            "MXNET_CUDA_ALLOW_TENSOR_CORE", "MXNET_MKLDNN_ENABLED", "OMP_NUM_THREADS")},
        "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, wd={config.weight_decay})"
        if mode == "train" else None,
    }
    return step, settings


def synchronize(device: str, result=None) -> None:
    """Wait for every operation MXNet's engine has queued."""
    mx.nd.waitall()


_used_before = 0


def reset_peak_memory(device: str) -> None:
    global _used_before
    if device == "gpu":
        free, total = mx.context.gpu_memory_info(0)
        _used_before = total - free


def peak_memory_bytes(device: str) -> int | None:
    """MXNet's pool keeps what it allocated, so the growth of the device's used memory is the peak."""
    if device != "gpu":
        return None
    free, total = mx.context.gpu_memory_info(0)
    return total - free - _used_before


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, mx.base.MXNetError) and any(
        s in text for s in ("out of memory", "failed to allocate", "memory allocation failed"))
