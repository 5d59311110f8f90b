"""Training NiN the PyTorch way: a plain loop over the epoch's batches, optimizer.zero_grad(),
loss.backward(), optimizer.step(), the learning rate set in the optimizer's param groups.

The driver (training/worker.py) owns the data order, the learning-rate table, the seeds, the
metrics and the checkpoints; this file owns what only PyTorch knows. Images arrive as uint8
28x28 and are resized on the model's device with two matmuls (common.data.input_matrices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data import input_matrices
from common.spec import NetSpec, TrainConfig

from .model import build, canonical_tensors, device_of, export_weights, load_weights
from .train import make_optimizer


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lrs: np.ndarray  # the learning rate of every step
    rows: torch.Tensor  # (H, 28) and (W, 28): the resize, on the device
    cols: torch.Tensor
    channels: int
    step: int = 0


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str) -> Trainer:
    """The model (canonical weights are loaded by load_state), SGD with the suite's convention."""
    model = build(spec, device=device, compiled=compile == "compiled")
    optimizer = make_optimizer(model, TrainConfig(lr=float(lrs[0]), momentum=momentum, weight_decay=weight_decay))
    rows, cols = (torch.as_tensor(m, device=device_of(model)) for m in input_matrices(spec))
    return Trainer(model, optimizer, lrs, rows, cols, spec.input_shape[0])


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum buffers by canonical name ("momentum/<name>"), the step."""
    load_weights(trainer.model, weights, "checkpoint")
    for name, p in canonical_tensors(trainer.model).items():
        if f"momentum/{name}" in optimizer:
            trainer.optimizer.state[p]["momentum_buffer"] = torch.as_tensor(optimizer[f"momentum/{name}"],
                                                                            device=p.device).clone()
    trainer.step = step


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, optimizer state, steps done)."""
    optimizer = {}
    for name, p in canonical_tensors(trainer.model).items():
        buffer = trainer.optimizer.state.get(p, {}).get("momentum_buffer")
        if buffer is not None:
            optimizer[f"momentum/{name}"] = buffer.detach().cpu().numpy().copy()
    return export_weights(trainer.model), optimizer, trainer.step


def _inputs(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) on the device -> float (N, C, H, W): rows @ X @ cols^T, the grey repeated."""
    x = trainer.rows @ images.to(trainer.rows.dtype) @ trainer.cols.T
    return x.unsqueeze(1).expand(-1, trainer.channels, -1, -1)


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order); progress(n, mean loss, correct)
    after every batch. The dropout masks come from PyTorch's generator restarted at dropout_seed."""
    device = trainer.rows.device
    x_all = torch.as_tensor(images).to(device)  # 784 bytes per image cross to the device
    y_all = torch.as_tensor(labels, dtype=torch.long).to(device)
    torch.manual_seed(dropout_seed)
    trainer.model.train()
    for start in range(0, len(images), batch_size):
        x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
        for group in trainer.optimizer.param_groups:
            group["lr"] = float(trainer.lrs[trainer.step])
        trainer.optimizer.zero_grad(set_to_none=True)
        logits = trainer.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        trainer.optimizer.step()
        trainer.step += 1
        progress(len(y), loss.item(), int((logits.argmax(1) == y).sum()))


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off."""
    device = trainer.rows.device
    x_all = torch.as_tensor(images).to(device)
    y_all = torch.as_tensor(labels, dtype=torch.long).to(device)
    trainer.model.eval()
    loss, correct, zero = torch.zeros((), device=device), 0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
            logits = trainer.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum")
            correct += int((logits.argmax(1) == y).sum())
            zero += int((logits <= 0).all(1).sum())
    n = len(images)
    return {"loss": loss.item() / n, "accuracy": correct / n, "zero_logits": zero / n}
