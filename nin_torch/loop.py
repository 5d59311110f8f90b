"""Training NiN the PyTorch way: a plain loop over the epoch's batches, optimizer.zero_grad(),
and train.train_step (loss.backward(), optimizer.step(), the schedule's step) on every batch.

The driver (training/worker.py) owns the data order, the learning-rate table, the seeds, the
metrics and the checkpoints; this file owns what only PyTorch knows. Images arrive as uint8
28x28 and are resized on the model's device with two matmuls (common.data.input_matrices).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.data import input_matrices
from common.spec import NetSpec

from .model import (
    DTYPES,
    build,
    canonical_tensors,
    device_of,
    export_weights,
    from_canonical,
    load_weights,
    to_canonical,
)
from .train import cross_entropy, make_optimizer, train_step


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer  # train.make_optimizer's: SGD, its LambdaLR as optimizer.schedule
    rows: torch.Tensor  # (H, 28) and (W, 28): the resize, on the device
    cols: torch.Tensor
    channels: int
    replicas: nn.Module  # what train_step runs: the model, or DistributedDataParallel around it
    rank: int = 0  # this process's replica, of `devices`
    devices: int = 1  # replicas in all, on every machine


def _process_group(device: str, devices: int) -> int:
    """This process's rank in torch.distributed's group of `devices` processes (on every machine), joined from
    the variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): gloo on a CPU, NCCL on GPUs."""
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(f"{devices} devices: PyTorch runs one process per replica, started by torchrun "
                             "(distributed.launch)")
        dist.init_process_group("nccl" if device == "gpu" else "gloo")
    if dist.get_world_size() != devices:
        raise ValueError(f"torchrun started {dist.get_world_size()} processes for {devices} devices")
    if device == "gpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # this process's GPU: build places the model
    return dist.get_rank()


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str, dtype: str = "float32", devices: int = 1, nodes: int = 1) -> Trainer:
    """The model (canonical weights are loaded by load_state) and train.make_optimizer's SGD; devices * nodes
    > 1: this process's replica, DistributedDataParallel around the model (it averages the gradients in backward)."""
    replicas = devices * nodes  # one process each, ranked node by node
    rank = _process_group(device, replicas) if replicas > 1 else 0
    model = build(spec, device=device, dtype=dtype, compiled=compile == "compiled")
    wrapped = nn.parallel.DistributedDataParallel(model) if replicas > 1 else model
    optimizer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay)
    rows, cols = (torch.as_tensor(m, device=device_of(model), dtype=DTYPES[dtype]) for m in input_matrices(spec))
    return Trainer(model, optimizer, rows, cols, spec.input_shape[0], wrapped, rank, replicas)


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum buffers by canonical name ("momentum/<name>"), the step."""
    load_weights(trainer.model, weights, "checkpoint")
    momentum = trainer.optimizer.param_groups[0]["momentum"]
    for name, p in canonical_tensors(trainer.model).items():
        key = f"momentum/{name}"
        if not p.requires_grad or (key not in optimizer and not (momentum and step)):
            continue
        if key not in optimizer:
            raise ValueError(f"checkpoint: no {key} for a run with momentum {momentum:g} at step {step}")
        buffer = np.asarray(from_canonical(name, optimizer[key]))
        if buffer.shape != tuple(p.shape):
            raise ValueError(f"checkpoint: {key} has shape {buffer.shape}, the model's {tuple(p.shape)}")
        trainer.optimizer.state[p]["momentum_buffer"] = torch.as_tensor(buffer, device=p.device, dtype=p.dtype).clone()
    schedule = trainer.optimizer.schedule
    schedule.last_epoch = step
    for group, rate in zip(trainer.optimizer.param_groups, schedule.lr_lambdas):
        group["lr"] = group["initial_lr"] * rate(step)  # step `step`'s rate, as LambdaLR.step() sets it


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, canonical momentum buffers, steps done)."""
    optimizer = {}
    for name, p in canonical_tensors(trainer.model).items():
        buffer = trainer.optimizer.state.get(p, {}).get("momentum_buffer")
        if buffer is not None:
            optimizer[f"momentum/{name}"] = to_canonical(name, buffer)
    return export_weights(trainer.model), optimizer, trainer.optimizer.schedule.last_epoch


def _inputs(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) on the device -> float (N, C, H, W): rows @ X @ cols^T, the grey repeated."""
    x = trainer.rows @ images.to(trainer.rows.dtype) @ trainer.cols.T
    return x.unsqueeze(1).expand(-1, trainer.channels, -1, -1)


def _global(trainer: Trainer, loss: float, correct: int, n: int) -> tuple[float, int]:
    """The global batch's mean loss and correct count from every replica's (equal shards: the mean of means)."""
    if trainer.devices == 1:
        return loss, correct
    total = torch.tensor([loss * n, correct], dtype=torch.float64, device=trainer.rows.device)
    dist.all_reduce(total)
    return total[0].item() / (n * trainer.devices), round(total[1].item())


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order); progress(n, mean loss, correct)
    after every batch. The dropout masks come from PyTorch's generator restarted at dropout_seed (plus the
    rank: each replica its own masks). Data-parallel, each replica trains on its contiguous share of every
    batch (as DistributedSampler without shuffling; the driver checks that each batch splits evenly)."""
    device = trainer.rows.device
    x_all = torch.as_tensor(images).to(device)  # 784 bytes per image cross to the device
    y_all = torch.as_tensor(labels, dtype=torch.long).to(device)
    torch.manual_seed(dropout_seed + trainer.rank)
    for start in range(0, len(images), batch_size):
        share = min(batch_size, len(images) - start) // trainer.devices
        mine = slice(start + trainer.rank * share, start + (trainer.rank + 1) * share)
        loss, correct = train_step(trainer.replicas, trainer.optimizer, _inputs(trainer, x_all[mine]), y_all[mine])
        progress(share * trainer.devices, *_global(trainer, loss, correct, share))


def dropout_masks(trainer: Trainer, shapes: list, *, dropout_seed: int) -> list:
    """The keep masks train_epoch(..., dropout_seed) draws, batch by batch, layer by layer: each nn.Dropout called
    again in training mode on ones of its input's shape (NCHW, the model's dtype), after the same manual_seed."""
    layers = [m for m in trainer.model.modules() if isinstance(m, nn.Dropout)]
    ones = lambda shape: torch.ones(shape, device=trainer.rows.device, dtype=trainer.rows.dtype)  # noqa: E731
    torch.manual_seed(dropout_seed + trainer.rank)
    trainer.model.train()
    with torch.no_grad():
        return [[(layer(ones(shape)) != 0).cpu().numpy() for layer, shape in zip(layers, batch, strict=True)]
                for batch in shapes]


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off."""
    device = trainer.rows.device
    x_all = torch.as_tensor(images).to(device)
    y_all = torch.as_tensor(labels, dtype=torch.long).to(device)
    trainer.model.eval()
    loss, correct, zero = torch.zeros((), device=device, dtype=trainer.rows.dtype), 0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
            logits = trainer.model(x)
            loss += cross_entropy(logits, y) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            zero += int((logits <= 0).all(1).sum())
    n = len(images)
    return {"loss": loss.item() / n, "accuracy": correct / n, "zero_logits": zero / n}
