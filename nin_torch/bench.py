"""What only PyTorch knows about timing NiN: the step to time and its plain peer, how to wait for the
device, peak memory, the APIs the suite relies on, and the device's matmul rate.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what a PyTorch user would write: torch.compile, channels_last on the GPU and
bf16 autocast; "eager" is the plain module. One training step serves both the suite's network and
the chapter's plain code (`_step`): zero_grad, forward, backward, optimizer.step().
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import torch
from torch import nn

from common.spec import NetSpec

from .model import build, default_device
from .train import cross_entropy, make_optimizer

PEAK_MATMUL = (8192, 10)  # n of the n x n x n matmuls, and how many are timed: large enough to fill a GPU
LR = 0.05  # the book's rate, plain SGD: any rate times alike (benchmarks.runner predicts no momentum buffer)


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str, steps: int):
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
    optimizer = make_optimizer(model, np.full(steps, LR)) if mode == "train" else None

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

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
        "optimizer": f"SGD(lr={LR}, momentum=0.0, weight_decay=0.0)" if mode == "train" else None,
    }
    return _step(model, net, x, y, mode=mode, optimizer=optimizer, loss=cross_entropy, autocast=autocast), settings


def plain_step(*, mode: str, batch_size: int, device: str):
    """(step, settings): the d2l PyTorch tab's network (fixed channel counts, PyTorch's default layers
    and initialisers) with the training step its readers write."""
    def nin_block(in_channels, out_channels, kernel_size, strides, padding):  # noqa: PLR0917 (the chapter's)
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())

    dev = default_device(device)
    net = nn.Sequential(
        nin_block(1, 96, kernel_size=11, strides=4, padding=0), nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2), nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1), nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()).to(dev)
    x = torch.randn(batch_size, 1, 224, 224, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    step = _step(net, net, x, y, mode=mode, optimizer=optimizer, loss=nn.CrossEntropyLoss(),
                 autocast=contextlib.nullcontext)
    return step, {"code": "d2l PyTorch tab", "device": str(dev)}


def _step(model: nn.Module, net, x, y, *, mode: str, optimizer, loss, autocast):
    """PyTorch's training step (zero_grad, forward, backward, optimizer.step) or an inference forward;
    `net` is the module or its compiled wrapper, `model` the module whose mode is set."""
    if mode == "train":
        model.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                value = loss(net(x), y)
            value.backward()
            optimizer.step()
            return value
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                return net(x)
    return step


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


def timing_loop(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                warmup: int, steps: int) -> float | None:
    """None: no loop of PyTorch's own; benchmarks.verify_timing times make_step's step in a plain loop
    (torch.cuda.synchronize leaves nothing queued, so the step needs no independent rewrite)."""
    return None


def api_checks(device: str) -> tuple[dict, list[str]]:
    """The PyTorch APIs the suite uses, and on a GPU the device's capability and cuDNN."""
    checks, problems = {}, []
    checks["nn.Module.compile"] = hasattr(torch.nn.Module, "compile")
    if not checks["nn.Module.compile"]:
        problems.append(f"torch {torch.__version__} has no nn.Module.compile (PyTorch >= 2.2): nin_torch's compiled "
                        "conformance mode fails; the benchmarks' torch.compile path does not need it")
    checks["torch.compile"] = hasattr(torch, "compile")
    try:  # the suite sets the legacy TF32 flags only; reading them fails where the new API was mixed in
        checks["tf32 flags (allow_tf32)"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    except Exception as e:  # any failure is the finding
        checks["tf32 flags (allow_tf32)"] = f"{type(e).__name__}: {e}"[:300]
        problems.append(f"torch {torch.__version__}: reading torch.backends.*.allow_tf32 fails ({e}); "
                        "nin_torch.train.configure and bench.make_step set them")
    checks["fp32_precision API"] = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    checks["use_deterministic_algorithms"] = hasattr(torch, "use_deterministic_algorithms")
    checks["triton"] = importlib.util.find_spec("triton") is not None
    if device == "gpu":
        checks["cuda available"] = torch.cuda.is_available()
        if checks["cuda available"]:
            checks["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            checks["cudnn"] = torch.backends.cudnn.version()
        if not checks["triton"]:
            problems.append("triton is not installed: torch.compile cannot build GPU kernels (compiled modes fail)")
    return checks, problems


def matmul_peak(device: str) -> dict | None:
    """On a GPU, the matmul rate as PyTorch reaches it (n x n x n, timed with CUDA events): the measured
    roof that a training step's TFLOP/s is set against, beside the datasheet's (benchmarks.utilization)."""
    if device != "gpu":
        return None
    n, repeats = PEAK_MATMUL
    out = {"matmul_n": n, "repeats": repeats, "clock": "CUDA events"}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                                  ("fp32", torch.float32, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            for _ in range(3):
                a @ b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                a @ b
            end.record()
            end.synchronize()
            out[f"{name}_matmul_tflops"] = 2 * n ** 3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
        torch.cuda.empty_cache()
    return out
