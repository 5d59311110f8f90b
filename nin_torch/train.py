"""Training NiN the PyTorch way: nn.functional.cross_entropy, torch.optim.SGD, loss.backward()."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over the batch (PyTorch's default reduction)."""
    return F.cross_entropy(logits, labels)


def make_optimizer(model: nn.Module, lrs: np.ndarray, *, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """torch.optim.SGD, whose form is the suite's (g += wd * w; v = m * v + g; w -= lr * v), with a
    LambdaLR over base rate 1 that sets step t's rate to lrs[t] exactly (kept as optimizer.schedule)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum, weight_decay=weight_decay)
    table, last = [float(lr) for lr in lrs], len(lrs) - 1
    optimizer.schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: table[min(t, last)])
    return optimizer


def _labels(model: nn.Module, labels) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long, device=device_of(model))


def loss_and_grads(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = to_input(model, images), _labels(model, labels)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = cross_entropy(model(x), y)
    loss.backward()
    grads = {k: to_canonical(k, t.grad) for k, t in canonical_tensors(model).items() if t.grad is not None}
    return loss.item(), grads


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y) -> tuple[float, int]:
    """zero_grad, forward in training mode, backward, optimizer.step(), then the schedule's step."""
    y = _labels(model, y)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    optimizer.schedule.step()
    return loss.item(), int((logits.argmax(1) == y).sum())


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32 / fp64: TF32 off, deterministic algorithms on (conformance). fast: TF32 on, cuDNN autotuning."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    strict = precision != "fast"
    if strict and device == "gpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it, before any call
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cudnn.deterministic = strict
    torch.backends.cudnn.benchmark = not strict
    torch.use_deterministic_algorithms(strict, warn_only=False)
    return {
        "precision": precision,
        "dtype": "float64" if precision == "fp64" else "float32",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "threads": torch.get_num_threads(),
    }


def float64_limits() -> dict[str, str]:
    """Operations that compute below float64 in the fp64 mode, with the reason: none in PyTorch."""
    return {}


def device_name(device: str) -> str:
    if device == "gpu":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "numpy": np.__version__}
