"""Training NiN the Gluon way, as the chapter's train_ch6 does: autograd.record(), loss.backward(),
trainer.step(batch_size), with the learning rate set by trainer.set_learning_rate before each step.

The driver (training/worker.py) owns the data order, the learning-rate table, the seeds, the
metrics and the checkpoints; this file owns what only MXNet knows. Images arrive as uint8
28x28 and are resized on the model's device with two matmuls (common.data.input_matrices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from common.data import input_matrices
from common.spec import NetSpec

from .model import build, canonical_tensors, device_of, export_weights, load_weights
from .train import cross_entropy


@mx.optimizer.register
class ScheduledSGD(mx.optimizer.Optimizer):
    """SGD in the suite's form, v = m * v + (g + wd * w); w -= lr * v (PyTorch's and optax's). Gluon's
    own 'sgd', mom = m * mom - lr * (g + wd * w); w += mom, is the same only while the learning rate
    stays constant: under a warm-up or a cosine schedule the two differ, so the runs use this one."""

    def __init__(self, momentum: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        g = grad * self.rescale_grad + wd * weight
        if state is not None:
            state[:] = self.momentum * state + g
            g = state
        weight[:] = weight - lr * g


@dataclass
class Trainer:
    model: nn.Block
    optimizer: gluon.Trainer
    lrs: np.ndarray  # the learning rate of every step
    rows: mx.nd.NDArray  # (H, 28) and (W, 28): the resize, on the device
    cols: mx.nd.NDArray
    channels: int
    step: int = 0


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str) -> Trainer:
    """The model (canonical weights are loaded by load_state; compiled: hybridize()) and a gluon.Trainer
    with SGD in the suite's form (ScheduledSGD: momentum, coupled weight decay; the rate set per step)."""
    model = build(spec, device=device, compiled=compile == "compiled")
    trainer = gluon.Trainer(model.collect_params(), ScheduledSGD(learning_rate=float(lrs[0]), momentum=momentum,
                                                                 wd=weight_decay))
    ctx = device_of(model)
    rows, cols = (mx.nd.array(m, ctx=ctx) for m in input_matrices(spec))
    return Trainer(model, trainer, lrs, rows, cols, spec.input_shape[0])


def _momentum_states(trainer: Trainer) -> dict:
    """Canonical name -> (updater, index): Gluon keeps each parameter's momentum in the Trainer's
    updater, keyed by the parameter's index in the Trainer (trainer.save_states would pickle them)."""
    index = {id(p): i for i, p in enumerate(trainer.optimizer._params)}
    updater = trainer.optimizer._updaters[0]
    return {name: (updater, index[id(p)]) for name, p in canonical_tensors(trainer.model).items()}


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum states by canonical name ("momentum/<name>"), the step."""
    load_weights(trainer.model, weights, "checkpoint")
    ctx = device_of(trainer.model)
    for name, (updater, i) in _momentum_states(trainer).items():
        if f"momentum/{name}" in optimizer:
            updater.states[i] = mx.nd.array(optimizer[f"momentum/{name}"], ctx=ctx)
            updater.states_synced[i] = True
    trainer.step = step


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, optimizer state, steps done)."""
    optimizer = {}
    for name, (updater, i) in _momentum_states(trainer).items():
        state = updater.states.get(i)
        if isinstance(state, mx.nd.NDArray):  # plain SGD keeps None
            optimizer[f"momentum/{name}"] = state.asnumpy()
    return export_weights(trainer.model), optimizer, trainer.step


def _inputs(trainer: Trainer, images: mx.nd.NDArray) -> mx.nd.NDArray:
    """uint8 (N, 28, 28) on the device -> float (N, C, H, W): rows @ X @ cols^T, the grey repeated."""
    x = mx.nd.dot(images.astype("float32"), trainer.cols, transpose_b=True)  # (N, 28, W)
    x = mx.nd.dot(x.transpose((0, 2, 1)), trainer.rows, transpose_b=True).transpose((0, 2, 1))  # (N, H, W)
    x = x.expand_dims(1)
    return x.repeat(trainer.channels, axis=1) if trainer.channels > 1 else x


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order); progress(n, mean loss, correct)
    after every batch. The dropout masks come from MXNet's generator restarted at dropout_seed."""
    ctx = device_of(trainer.model)
    x_all = mx.nd.array(images, ctx=ctx, dtype="uint8")  # 784 bytes per image cross to the device
    y_all = mx.nd.array(labels, ctx=ctx, dtype="int32")
    mx.random.seed(dropout_seed, ctx=ctx)
    for start in range(0, len(images), batch_size):
        x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
        trainer.optimizer.set_learning_rate(float(trainer.lrs[trainer.step]))
        with autograd.record():
            logits = trainer.model(x)
            loss = cross_entropy(logits, y)  # per example; backward sums, step(n) divides by n
        loss.backward()
        trainer.optimizer.step(x.shape[0])
        trainer.step += 1
        correct = (logits.argmax(axis=1) == y.astype("float32")).sum()
        progress(x.shape[0], loss.mean().asscalar().item(), int(correct.asscalar()))


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off."""
    ctx = device_of(trainer.model)
    x_all = mx.nd.array(images, ctx=ctx, dtype="uint8")
    y_all = mx.nd.array(labels, ctx=ctx, dtype="int32")
    loss, correct, zero = 0.0, 0, 0
    with autograd.predict_mode():
        for start in range(0, len(images), batch_size):
            x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
            logits = trainer.model(x)
            loss += cross_entropy(logits, y).sum().asscalar().item()
            correct += int((logits.argmax(axis=1) == y.astype("float32")).sum().asscalar())
            zero += int((logits <= 0).min(axis=1).sum().asscalar())
    n = len(images)
    return {"loss": loss / n, "accuracy": correct / n, "zero_logits": zero / n}
