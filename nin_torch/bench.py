"""What only PyTorch knows about timing NiN: the step to time, how to wait for the device, peak memory.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what a PyTorch user would write: torch.compile, channels_last on the GPU and
bf16 autocast; "eager" is the plain module.
"""

from __future__ import annotations

import torch

from common.spec import NetSpec, recipe

from .model import build, default_device
from .train import cross_entropy, make_optimizer


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data placed on the device once."""
    dev = default_device(device)
    tf32 = precision != "fp32"  # bf16: TF32 for what autocast keeps in float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    compiled = compile == "compiled"
    model = build(spec, device=str(dev))
    x = torch.randn(batch_size, *spec.input_shape, device=dev)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
    channels_last = compiled and dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    config = recipe(spec.name)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    if mode == "train":
        model.train()
        optimizer = make_optimizer(model, config)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            return loss
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                return net(x)

    settings = {
        "device": str(dev),
        "compile": "torch.compile (inductor)" if compiled else None,
        "channels_last": channels_last,
        "autocast": "bfloat16" if precision == "bf16" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "threads": torch.get_num_threads(),
        "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})"
        if mode == "train" else None,
    }
    return step, settings


def synchronize(device: str, result=None) -> None:
    """Wait until the device has finished every step queued so far."""
    if device == "gpu":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "gpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device == "gpu" else None


def is_out_of_memory(error: BaseException) -> bool:
    """cuDNN workspaces and torch.compile's autotuning wrap their out-of-memory errors in RuntimeError."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
