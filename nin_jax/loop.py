"""Training NiN the Flax NNX way: an optax SGD with the learning-rate table as its schedule, and one
train step (resize, forward, nnx.value_and_grad, optimizer.update) under nnx.jit (jax.jit).

The driver (training/worker.py) owns the data order, the learning-rate table, the seeds, the
metrics and the checkpoints; this file owns what only JAX and Flax know. Images arrive as uint8
28x28 and are resized inside the jitted step with two matmuls (common.data.input_matrices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.data import input_matrices
from common.spec import NetSpec

from .model import build, default_device, export_weights, load_weights
from .train import cross_entropy


@dataclass
class Trainer:
    model: nnx.Module
    optimizer: nnx.Optimizer
    rows: jax.Array  # (H, 28) and (W, 28): the resize, on the device
    cols: jax.Array
    channels: int
    compiled: bool


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str) -> Trainer:
    """The model (canonical weights are loaded by load_state) and optax SGD with the suite's convention
    (g += wd * w; v = m * v + g; w -= lr * v), lr read from the table at the optimizer's step count."""
    model = build(spec, device=device)
    table = jax.device_put(jnp.asarray(lrs, dtype=jnp.float32), default_device(device))
    last = len(lrs) - 1
    schedule = lambda count: table[jnp.minimum(count, last)]
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum or None))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rows, cols = (jax.device_put(m, default_device(device)) for m in input_matrices(spec))
    return Trainer(model, optimizer, rows, cols, spec.input_shape[0], compile == "compiled")


def _commit(trainer: Trainer) -> None:
    """Put every array of the model and the optimizer on the device explicitly: jax.jit keys its cache
    on whether an argument is committed to a device, so a mix (fresh arrays are not) compiles again."""
    device = trainer.rows.devices().pop()
    for node in (trainer.model, trainer.optimizer):
        nnx.update(node, jax.device_put(nnx.state(node), device))


def _flat(state: nnx.State) -> dict[str, nnx.Variable]:
    return {".".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(state)}


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights; the optimizer's whole state (momentum traces, step counts) by its pytree
    path, when the checkpoint has it; a fresh optimizer has step 0."""
    load_weights(trainer.model, weights, "checkpoint")
    if optimizer:
        state = nnx.state(trainer.optimizer, nnx.OptState)
        flat = _flat(state)
        if sorted(flat) != sorted(optimizer):
            missing = sorted(set(flat) - set(optimizer))[:3]
            raise ValueError(f"checkpoint: the optimizer state lacks {missing} or has others; was it written "
                             "with another --optimizer?")
        for key, variable in flat.items():
            variable.value = jnp.asarray(optimizer[key], dtype=variable.value.dtype)
        nnx.update(trainer.optimizer, state)
    _commit(trainer)
    if int(trainer.optimizer.step.value) != step:
        raise ValueError(f"checkpoint: the optimizer's step count is {int(trainer.optimizer.step.value)}, "
                         f"the run's position {step}")


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, optimizer state by pytree path, steps done)."""
    flat = _flat(nnx.state(trainer.optimizer, nnx.OptState))
    optimizer = {k: np.array(v.value) for k, v in flat.items()}
    return export_weights(trainer.model), optimizer, int(trainer.optimizer.step.value)


def _inputs(rows: jax.Array, cols: jax.Array, images: jax.Array, channels: int) -> jax.Array:
    """uint8 (N, 28, 28) -> float (N, H, W, C): rows @ X @ cols^T, the grey repeated (NHWC)."""
    x = rows @ images.astype(rows.dtype) @ cols.T
    return jnp.repeat(x[..., None], channels, axis=-1)


def _train_step(model, optimizer, resize, batch, *, channels):
    (rows, cols), (images, labels) = resize, batch
    def loss_fn(model):
        logits = model(_inputs(rows, cols, images, channels))
        return cross_entropy(logits, labels), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, jnp.sum(jnp.argmax(logits, -1) == labels)


def _eval_step(model, resize, batch, *, channels):
    (rows, cols), (images, labels) = resize, batch
    logits = model(_inputs(rows, cols, images, channels))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss, jnp.sum(jnp.argmax(logits, -1) == labels), jnp.sum(jnp.all(logits <= 0, axis=-1))


_train_step_jit = nnx.jit(_train_step, static_argnames="channels")
_eval_step_jit = nnx.jit(_eval_step, static_argnames="channels")


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order); progress(n, mean loss, correct)
    after every batch. The dropout masks come from the model's nnx.Rngs restarted at dropout_seed."""
    step = _train_step_jit if trainer.compiled else _train_step
    device = trainer.rows.devices().pop()
    nnx.reseed(trainer.model, dropout=dropout_seed)
    trainer.model.train()
    _commit(trainer)
    for start in range(0, len(images), batch_size):
        x = jax.device_put(images[start:start + batch_size], device)  # 784 bytes per image
        y = jax.device_put(labels[start:start + batch_size].astype(np.int32), device)
        loss, correct = step(trainer.model, trainer.optimizer, (trainer.rows, trainer.cols), (x, y),
                             channels=trainer.channels)
        progress(len(y), float(loss), int(correct))


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off."""
    step = _eval_step_jit if trainer.compiled else _eval_step
    device = trainer.rows.devices().pop()
    trainer.model.eval()
    loss, correct, zero = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        x = jax.device_put(images[start:start + batch_size], device)
        y = jax.device_put(labels[start:start + batch_size].astype(np.int32), device)
        batch_loss, batch_correct, batch_zero = step(trainer.model, (trainer.rows, trainer.cols), (x, y),
                                                     channels=trainer.channels)
        loss, correct, zero = loss + float(batch_loss), correct + int(batch_correct), zero + int(batch_zero)
    n = len(images)
    return {"loss": loss / n, "accuracy": correct / n, "zero_logits": zero / n}
