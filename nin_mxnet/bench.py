"""Timed Gluon training and inference steps: the bench.py contract of common.backends.

The fast path is what a Gluon user would write: hybridize(static_alloc=True, static_shape=True) and
AMP (mxnet.contrib.amp) for bf16; compile=False is the plain imperative block. Numerics switches other
than precision (cuDNN autotuning, determinism) are train.configure's; they are recorded here, not changed.
MXNet's precision switches are process-wide (amp.init rewrites the operators for good; cuDNN and cuBLAS
read NVIDIA_TF32_OVERRIDE once), so one process benchmarks one precision.
"""

from __future__ import annotations

import os
import statistics
import time

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.contrib import amp

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import make_optimizer

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")
_precision_in_force: str | None = None  # the first precision this process ran


def _set_precision(precision: str, ctx: mx.Context) -> None:
    """fp32: TF32 off. tf32: TF32 on. bf16: AMP to bfloat16 (oneDNN on the CPU), TF32 for what AMP keeps in float32."""
    global _precision_in_force
    if precision == "tf32" and ctx.device_type != "gpu":
        raise ValueError("precision 'tf32' needs a GPU: MXNet's CPU kernels have no TF32 (use fp32 or bf16)")
    if _precision_in_force not in (None, precision):
        raise ValueError(f"this process already ran {_precision_in_force!r}, and MXNet's AMP and TF32 switches "
                         f"are process-wide: benchmark {precision!r} in a new process")
    if _precision_in_force is None:
        if precision == "fp32":
            os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # before the first cuDNN / cuBLAS call
        else:
            os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
        if precision == "bf16":
            amp.init(target_dtype="bfloat16")  # before any model is built
        _precision_in_force = precision


def _used_gpu_bytes(ctx: mx.Context) -> int:
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return total - free


def benchmark(spec: NetSpec, mode: str, batch_size: int, precision: str, compile: bool, device: str,
              warmup: int = 5, windows: int = 5, steps: int = 10) -> dict:
    if mode not in MODES or precision not in PRECISIONS:
        raise ValueError(f"mode must be one of {MODES} and precision one of {PRECISIONS}, got {mode!r}, {precision!r}")
    try:
        return _run(spec, mode, batch_size, precision, compile, default_device(device), warmup, windows, steps)
    except mx.base.MXNetError as e:  # raised where the failed kernel is waited on
        text = str(e).lower()
        if "out of memory" in text or "failed to allocate" in text or "memory allocation failed" in text:
            raise MemoryError(str(e)) from None
        raise


def _run(spec, mode, batch_size, precision, compile, ctx, warmup, windows, steps) -> dict:
    _set_precision(precision, ctx)
    gpu = ctx.device_type == "gpu"
    used_before = _used_gpu_bytes(ctx) if gpu else None
    model = build(spec, device=ctx.device_type)
    x = mx.nd.random.normal(shape=(batch_size,) + spec.input_shape, ctx=ctx)  # synthetic data, on the device once
    y = mx.nd.random.randint(0, spec.num_classes, shape=(batch_size,), ctx=ctx)
    if compile:
        model.hybridize(static_alloc=True, static_shape=True)
    else:
        model.hybridize(active=False)
    config = recipe(spec.name)

    if mode == "train":
        trainer = make_optimizer(model, config)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def step():
            with autograd.record():
                loss = loss_fn(model(x), y)
            loss.backward()
            trainer.step(batch_size)
    else:
        def step():
            with autograd.predict_mode():
                model(x)

    def timed(n: int) -> float:
        mx.nd.waitall()
        start = time.perf_counter()
        for _ in range(n):
            step()
        mx.nd.waitall()
        return time.perf_counter() - start

    first_step = timed(1)  # includes hybridize's graph construction and memory planning
    for _ in range(warmup):
        step()
    window_seconds = [timed(steps) for _ in range(windows)]
    return {
        "images_per_second": statistics.median(batch_size * steps / s for s in window_seconds),
        "window_seconds": window_seconds,
        "first_step_seconds": first_step,
        # MXNet's pool keeps what it allocated, so the growth of the device's used memory is the peak
        "peak_memory_bytes": _used_gpu_bytes(ctx) - used_before if gpu else None,
        "settings": {
            "device": str(ctx),
            "compile": "hybridize(static_alloc=True, static_shape=True)" if compile else None,
            "amp": "bfloat16" if precision == "bf16" else None,
            "inference_mode": mode == "infer",
            **{name: os.environ.get(name) for name in (
                "NVIDIA_TF32_OVERRIDE", "MXNET_CUDNN_AUTOTUNE_DEFAULT", "MXNET_ENFORCE_DETERMINISM",
                "MXNET_CUDA_ALLOW_TENSOR_CORE", "MXNET_MKLDNN_ENABLED", "OMP_NUM_THREADS")},
            "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, wd={config.weight_decay})"
            if mode == "train" else None,
        },
    }
