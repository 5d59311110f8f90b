"""Training NiN the PyTorch way: nn.functional.cross_entropy, torch.optim.SGD, loss.backward()."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.spec import TrainConfig

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over the batch (PyTorch's default reduction)."""
    return F.cross_entropy(logits, labels)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # PyTorch's own convention is the suite's: g += wd * w; v = m * v + g; w -= lr * v.
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _batch(model: nn.Module, images: np.ndarray, labels: np.ndarray):
    return to_input(model, images), torch.as_tensor(labels, dtype=torch.long, device=device_of(model))


def loss_and_grads(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = cross_entropy(model(x), y)
    loss.backward()
    grads = {k: to_canonical(k, t.grad) for k, t in canonical_tensors(model).items() if t.grad is not None}
    return loss.item(), grads


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray, labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


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
