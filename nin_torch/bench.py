"""Timed PyTorch training and inference steps: the bench.py contract of common.backends.

The fast path is what a PyTorch user would write: torch.compile, channels_last on the GPU and
bf16 autocast; compile=False is the plain eager module. Numerics switches other than precision
(cuDNN autotuning, determinism) are train.configure's; they are recorded here, not changed.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import make_optimizer

MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16")


def _set_precision(precision: str) -> None:
    """fp32: TF32 off. tf32: TF32 on. bf16: autocast to bfloat16, TF32 for what autocast keeps in float32."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(spec: NetSpec, mode: str, batch_size: int, precision: str, compile: bool, device: str,
              warmup: int = 5, windows: int = 5, steps: int = 10) -> dict:
    if mode not in MODES or precision not in PRECISIONS:
        raise ValueError(f"mode must be one of {MODES} and precision one of {PRECISIONS}, got {mode!r}, {precision!r}")
    try:
        return _run(spec, mode, batch_size, precision, compile, default_device(device), warmup, windows, steps)
    except torch.cuda.OutOfMemoryError as e:
        raise MemoryError(str(e)) from None
    except RuntimeError as e:  # cuDNN workspaces and torch.compile's autotuning wrap theirs
        if "out of memory" in str(e).lower():
            raise MemoryError(str(e)) from None
        raise


def _run(spec, mode, batch_size, precision, compile, dev, warmup, windows, steps) -> dict:
    _set_precision(precision)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    model = build(spec, device=str(dev))
    x = torch.randn(batch_size, *spec.input_shape, device=dev)  # synthetic data, on the device once
    y = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
    channels_last = compile and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    config = recipe(spec.name)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    if mode == "train":
        model.train()
        optimizer = make_optimizer(model, config)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                net(x)

    def timed(n: int) -> float:
        _sync(dev)
        start = time.perf_counter()
        for _ in range(n):
            step()
        _sync(dev)
        return time.perf_counter() - start

    first_step = timed(1)  # includes torch.compile's tracing and code generation
    for _ in range(warmup):
        step()
    window_seconds = [timed(steps) for _ in range(windows)]
    return {
        "images_per_second": statistics.median(batch_size * steps / s for s in window_seconds),
        "window_seconds": window_seconds,
        "first_step_seconds": first_step,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "settings": {
            "device": str(dev),
            "compile": "torch.compile (inductor)" if compile else None,
            "channels_last": channels_last,
            "autocast": "bfloat16" if precision == "bf16" else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "inference_mode": mode == "infer",
            "threads": torch.get_num_threads(),
            "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})"
            if mode == "train" else None,
        },
    }
