"""What only MXNet knows about timing NiN: the step to time and its plain peer, how to wait for the
device, peak memory, and the APIs the suite relies on.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what a Gluon user would write: hybridize(static_alloc=True, static_shape=True),
and AMP (mxnet.contrib.amp) for bf16; "eager" is the plain imperative block. MXNet's precision
switches are process-wide (amp.init rewrites the operators for good; cuDNN and cuBLAS read
NVIDIA_TF32_OVERRIDE once), so one process benchmarks one precision (the runner gives each its own).
One training step serves the suite's network and the chapter's plain code (`_step`).
"""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init
from mxnet.contrib import amp
from mxnet.gluon import nn

from common.spec import NetSpec

from .model import build, default_device
from .train import cross_entropy, make_optimizer

LR = 0.05  # the book's rate, plain SGD: any rate times alike (benchmarks.runner predicts no momentum buffer)


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str, steps: int):
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
    trainer = make_optimizer(model, np.full(steps, LR)) if mode == "train" else None
    settings = {
        "device": str(ctx),
        "compile": "hybridize(static_alloc=True, static_shape=True)" if compiled else None,
        "amp": "bfloat16" if precision == "bf16" else None,
        **{name: os.environ.get(name) for name in (
            "NVIDIA_TF32_OVERRIDE", "MXNET_CUDNN_AUTOTUNE_DEFAULT", "MXNET_ENFORCE_DETERMINISM",
            "MXNET_CUDA_ALLOW_TENSOR_CORE", "MXNET_MKLDNN_ENABLED", "OMP_NUM_THREADS")},
        "optimizer": f"SGD(lr={LR}, momentum=0.0, wd=0.0)" if mode == "train" else None,
    }
    return _step(model, x, y, mode=mode, trainer=trainer, loss=cross_entropy), settings


def plain_step(*, mode: str, batch_size: int, device: str):
    """(step, settings): the d2l MXNet tab's network (nn.Sequential, fixed channel counts, Xavier init,
    not hybridized) with the training step its readers write."""
    def nin_block(num_channels, kernel_size, strides, padding):
        blk = nn.Sequential()
        blk.add(nn.Conv2D(num_channels, kernel_size, strides, padding, activation="relu"),
                nn.Conv2D(num_channels, kernel_size=1, activation="relu"),
                nn.Conv2D(num_channels, kernel_size=1, activation="relu"))
        return blk

    ctx = default_device(device)
    net = nn.Sequential()
    net.add(nin_block(96, kernel_size=11, strides=4, padding=0), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(256, kernel_size=5, strides=1, padding=2), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(384, kernel_size=3, strides=1, padding=1), nn.MaxPool2D(pool_size=3, strides=2),
            nn.Dropout(0.5),
            nin_block(10, kernel_size=3, strides=1, padding=1),
            nn.GlobalAvgPool2D(), nn.Flatten())
    net.initialize(init=init.Xavier(), ctx=ctx)
    x = mx.nd.random.normal(shape=(batch_size, 1, 224, 224), ctx=ctx)
    y = mx.nd.random.randint(0, 10, shape=(batch_size,), ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR})
    step = _step(net, x, y, mode=mode, trainer=trainer, loss=gluon.loss.SoftmaxCrossEntropyLoss())
    return step, {"code": "d2l MXNet tab (nn.Sequential, not hybridized)"}


def _step(model: nn.Block, x, y, *, mode: str, trainer, loss):
    """Gluon's training step (record, forward, backward, Trainer.step(batch size)) or a forward in predict mode."""
    def step():
        if mode == "train":
            with autograd.record():
                value = loss(model(x), y)
            value.backward()
            trainer.step(x.shape[0])
            return value
        with autograd.predict_mode():
            return model(x)
    return step


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


def timing_loop(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                warmup: int, steps: int) -> float | None:
    """None: no loop of MXNet's own; mx.nd.waitall() leaves nothing queued, so benchmarks.verify_timing's
    plain loop over make_step's step checks the harness's clock."""
    return None


def api_checks(device: str) -> tuple[dict, list[str]]:
    """The MXNet APIs nin_mxnet uses beyond Gluon's core: AMP for bf16, the GPU memory counter."""
    checks = {"mxnet 1.x": mx.__version__.split(".")[0] == "1", "contrib.amp": hasattr(amp, "init"),
              "context.gpu_memory_info": hasattr(mx.context, "gpu_memory_info")}
    problems = [f"mxnet {mx.__version__}: nin_mxnet is written for MXNet 1.9"] if not checks["mxnet 1.x"] else []
    if device == "gpu":
        checks["num_gpus"] = mx.context.num_gpus()
    return checks, problems


def matmul_peak(device: str) -> dict | None:
    """None: not measured with MXNet (the GPU session takes the rate from the backend it probes first)."""
    return None
