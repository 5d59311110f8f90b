"""Training NiN the Gluon way, as the chapter's train_ch6 does: a plain loop over the epoch's batches,
each resized on the device, then train.train_step (autograd.record(), loss.backward(),
trainer.step(batch_size)) with train.make_optimizer's gluon.Trainer, whose SuiteSGD reads the
learning-rate table at its own num_update.

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

from .model import build, canonical_tensors, device_of, export_weights, from_canonical, load_weights, to_canonical
from .train import cross_entropy, make_optimizer, train_step


@dataclass
class Trainer:
    model: nn.Block
    optimizer: gluon.Trainer  # train.make_optimizer's: SuiteSGD, its TableSchedule read at num_update
    rows: mx.nd.NDArray  # (H, 28) and (W, 28): the resize, on the device, in the model's dtype
    cols: mx.nd.NDArray
    channels: int
    contexts: list  # data-parallel: the parameters' contexts (mx.cpu(i) or mx.gpu(i)); else the model's one


# Why nin train takes no --nodes (docs/distributed.md, "Two machines": the kvstore itself is tested there)
NODES_REFUSED = ("MXNet across machines runs a dist_sync kvstore with a scheduler and servers, which nin train does "
                 "not start (docs/distributed.md, \"Two machines\")")


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str, dtype: str = "float32", devices: int = 1, nodes: int = 1) -> Trainer:
    """The model in `dtype` (canonical weights are loaded by load_state; compiled: hybridize()) and
    train.make_optimizer's gluon.Trainer; devices > 1: a copy of every parameter on each of `devices`
    contexts and a kvstore ("device") that sums their gradients before each context's update."""
    if nodes > 1:
        raise NotImplementedError(NODES_REFUSED)
    model = build(spec, device=device, dtype=dtype, compiled=compile == "compiled")
    contexts = [device_of(model)]
    if devices > 1:
        if device == "gpu" and mx.context.num_gpus() < devices:
            raise ValueError(f"MXNet sees {mx.context.num_gpus()} GPUs, fewer than {devices} replicas")
        contexts = [mx.gpu(i) if device == "gpu" else mx.cpu(i) for i in range(devices)]
        model.collect_params().reset_ctx(contexts)
    parallel = {"kvstore": "device"} if devices > 1 else {}  # one device: the Trainer's own updater, no kvstore
    optimizer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay, **parallel)
    rows, cols = (mx.nd.array(m, ctx=contexts[0], dtype=dtype) for m in input_matrices(spec))
    return Trainer(model, optimizer, rows, cols, spec.input_shape[0], contexts)


def _trainable(trainer: Trainer) -> dict:
    """Canonical name -> (index, Parameter) of every trainable tensor: Gluon's Trainer keys each
    parameter's momentum state (in its updater) and update count (in the optimizer) by the parameter's
    index in the Trainer; the running statistics (grad_req 'null') have neither."""
    index = {id(p): i for i, p in enumerate(trainer.optimizer._params)}
    return {name: (index[id(p)], p) for name, p in canonical_tensors(trainer.model).items() if p.grad_req != "null"}


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum buffers by canonical name ("momentum/<name>", any backend's:
    canonical layout, converted with from_canonical) into the Trainer's updater, and the step: every
    parameter's update count and num_update set to `step`, so that the next step reads lrs[step]."""
    load_weights(trainer.model, weights, "checkpoint")
    step = int(step)
    if step < 0:
        raise ValueError(f"checkpoint: step {step} is negative")
    sgd = trainer.optimizer._optimizer
    trainable = _trainable(trainer)
    for name, (i, p) in trainable.items():
        key = f"momentum/{name}"
        for updater in trainer.optimizer._updaters:  # one per context, each a fresh zero buffer unless given one
            updater.states.pop(i, None)
            updater.states_synced.pop(i, None)
        if not sgd.momentum or (key not in optimizer and not step):
            continue  # plain SGD keeps no buffer; a fresh optimizer (step 0) may come without them
        if key not in optimizer:
            raise ValueError(f"checkpoint: no {key} for a run with momentum {sgd.momentum:g} at step {step}")
        buffer = np.asarray(from_canonical(name, optimizer[key]))
        if buffer.shape != tuple(p.shape):
            raise ValueError(f"checkpoint: {key} has shape {buffer.shape}, the model's {tuple(p.shape)}")
        for updater, ctx in zip(trainer.optimizer._updaters, trainer.contexts):
            updater.states[i] = mx.nd.array(buffer, ctx=ctx, dtype=p.dtype)
            updater.states_synced[i] = True
    counts = {i: step for i, _ in trainable.values()}  # what Optimizer._update_count advances, per context
    sgd._all_index_update_counts = {ctx.device_id: dict(counts) for ctx in trainer.contexts}
    sgd._index_update_count = sgd._all_index_update_counts[trainer.contexts[0].device_id]
    sgd.num_update = step


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, canonical momentum buffers ({} for plain SGD), steps done: num_update); data-parallel,
    the first context's (every context applies the same summed gradient: the copies are equal)."""
    updater = trainer.optimizer._updaters[0]
    optimizer = {}
    for name, (i, _) in _trainable(trainer).items():
        state = updater.states.get(i)
        if isinstance(state, mx.nd.NDArray):  # plain SGD keeps None
            optimizer[f"momentum/{name}"] = to_canonical(name, state)
    with trainer.contexts[0]:  # Parameter.data() without a context reads the current one
        return export_weights(trainer.model), optimizer, int(trainer.optimizer._optimizer.num_update)


def _inputs(trainer: Trainer, images: mx.nd.NDArray) -> mx.nd.NDArray:
    """uint8 (N, 28, 28) on a context -> (N, C, H, W) in the model's dtype: rows @ X @ cols^T, the grey repeated."""
    rows, cols = (m.as_in_context(images.context) for m in (trainer.rows, trainer.cols))  # a no-op on their own
    x = mx.nd.dot(images.astype(rows.dtype), cols, transpose_b=True)  # (N, 28, W)
    x = mx.nd.dot(x.transpose((0, 2, 1)), rows, transpose_b=True).transpose((0, 2, 1))  # (N, H, W)
    x = x.expand_dims(1)
    return x.repeat(trainer.channels, axis=1) if trainer.channels > 1 else x


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order; the last partial batch kept);
    progress(n, mean loss, correct) after every batch. The dropout masks come from MXNet's generator
    restarted at dropout_seed, on context i at dropout_seed + i (each replica its own masks)."""
    if len(trainer.contexts) > 1:
        return _train_epoch_contexts(trainer, images, labels, batch_size=batch_size, dropout_seed=dropout_seed,
                                     progress=progress)
    ctx = device_of(trainer.model)
    x_all = mx.nd.array(images, ctx=ctx, dtype="uint8")  # 784 bytes per image cross to the device
    y_all = mx.nd.array(labels, ctx=ctx, dtype="int32")
    mx.random.seed(dropout_seed, ctx=ctx)
    for start in range(0, len(images), batch_size):
        x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
        loss, correct = train_step(trainer.model, trainer.optimizer, x, y)
        progress(x.shape[0], loss, correct)


def _train_epoch_contexts(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                          dropout_seed: int, progress: Callable[[int, float, int], None]) -> None:
    """train_epoch on several contexts, as the chapter's train_ch12 does: split_and_load each batch's uint8
    images, resize and forward each share on its context under autograd.record(), backward, then
    Trainer.step(global batch): the kvstore's gradient sum over the global batch, one update per context."""
    for i, ctx in enumerate(trainer.contexts):
        mx.random.seed(dropout_seed + i, ctx=ctx)
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        xs = gluon.utils.split_and_load(images[batch], trainer.contexts, even_split=True)
        ys = gluon.utils.split_and_load(labels[batch].astype(np.int32), trainer.contexts, even_split=True)
        with autograd.record():
            logits = [trainer.model(_inputs(trainer, x)) for x in xs]
            losses = [cross_entropy(z, y) for z, y in zip(logits, ys)]
        autograd.backward(losses)
        trainer.optimizer.step(len(labels[batch]))
        loss = sum(loss.sum().asscalar().item() for loss in losses) / len(labels[batch])
        correct = sum(int((z.argmax(axis=1) == y.astype(z.dtype)).sum().asscalar()) for z, y in zip(logits, ys))
        progress(len(labels[batch]), loss, correct)


def dropout_masks(trainer: Trainer, shapes: list, *, dropout_seed: int) -> list:
    """The keep masks train_epoch(..., dropout_seed) draws, batch by batch, layer by layer: each nn.Dropout called
    again in training mode on ones of its input's shape (NCHW, the model's dtype), after the same mx.random.seed."""
    layers = [block for block in trainer.model if isinstance(block, nn.Dropout)]
    ctx = device_of(trainer.model)
    mx.random.seed(dropout_seed, ctx=ctx)
    with autograd.train_mode():
        return [[(layer(mx.nd.ones(shape, ctx=ctx, dtype=trainer.rows.dtype)) != 0).asnumpy()
                 for layer, shape in zip(layers, batch, strict=True)] for batch in shapes]


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off (data-parallel:
    on the first context)."""
    ctx = trainer.contexts[0]
    x_all = mx.nd.array(images, ctx=ctx, dtype="uint8")
    y_all = mx.nd.array(labels, ctx=ctx, dtype="int32")
    loss, correct, zero = 0.0, 0, 0
    with autograd.predict_mode():
        for start in range(0, len(images), batch_size):
            x, y = _inputs(trainer, x_all[start:start + batch_size]), y_all[start:start + batch_size]
            logits = trainer.model(x)
            loss += cross_entropy(logits, y).sum().asscalar().item()
            correct += int((logits.argmax(axis=1) == y.astype(logits.dtype)).sum().asscalar())
            zero += int((logits <= 0).min(axis=1).sum().asscalar())
    n = len(images)
    return {"loss": loss / n, "accuracy": correct / n, "zero_logits": zero / n}
