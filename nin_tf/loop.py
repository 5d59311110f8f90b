"""Training NiN the Keras way: model.compile(optimizer, loss, metrics), then model.fit with callbacks,
one fit call per epoch, on whichever backend KERAS_BACKEND names (TensorFlow, JAX or PyTorch).

The resize is a Keras layer in front of the network (preprocessing inside the model, as Keras
documents it), so uint8 28x28 images are what fit and evaluate receive, and the two matmuls of
common.data.input_matrices run on the device inside the compiled step. The learning rate is a
LearningRateSchedule reading the driver's table at the optimizer's iteration count (train.make_optimizer's
SuiteSGD, the one optimizer of the package; fit runs the same Keras train step as train.train_step).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from common.data import input_matrices
from common.spec import Dropout, NetSpec
from common.weights import nhwc_to_nchw

from .model import (
    build,
    canonical_tensors,
    default_device,
    device_of,
    export_weights,
    from_canonical,
    load_weights,
    to_canonical,
)
from .train import make_optimizer


def _placed(model: keras.Model):
    """The model's device as a scope, or none when it is the default: on Keras's PyTorch backend a scope
    names the CPU "cpu:0" where the variables say "cpu", and torch.compile refuses to mix the two."""
    where = device_of(model)
    return contextlib.nullcontext() if where == default_device() else keras.device(where)


# With TF_DETERMINISTIC_OPS (fp32), Keras runs TensorFlow's tf.function graph instead of XLA, and says so.
warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")


class InputResize(keras.layers.Layer):
    """uint8 (N, 28, 28) -> float (N, H, W, C): rows @ X @ cols^T on the device, the grey repeated."""

    def __init__(self, rows, cols, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        # Non-trainable weights, not NumPy arrays: a compiler traces them as tensors (torch.compile breaks its
        # graph at an ndarray's dtype, and the pieces then recompiled with dynamic shapes failed in Inductor).
        self.rows, self.cols = (self._constant(m, name) for m, name in ((rows, "rows"), (cols, "cols")))

    def _constant(self, matrix, name: str) -> keras.Variable:
        matrix = np.asarray(matrix)
        weight = self.add_weight(shape=matrix.shape, initializer="zeros", trainable=False, name=name)
        weight.assign(matrix.astype(weight.dtype))
        return weight

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        x = keras.ops.matmul(keras.ops.matmul(self.rows, x), keras.ops.transpose(self.cols))
        return keras.ops.repeat(keras.ops.expand_dims(x, -1), self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.rows.shape[0], self.cols.shape[0], self.channels)


def _zero_logits(labels, logits):
    """1 for an image whose logits are all <= 0 (a dead final ReLU predicts nothing)."""
    return keras.ops.cast(keras.ops.all(logits <= 0, axis=-1), logits.dtype)


@dataclass
class Trainer:
    model: keras.Model  # the network, as common.spec builds it
    net: keras.Model  # InputResize, then the network: what fit and evaluate run
    optimizer: keras.optimizers.Optimizer
    replicas: Callable = contextlib.nullcontext  # the data-parallel scope that fit and evaluate run in


@functools.cache
def _mirrored(names: tuple) -> object:
    """One MirroredStrategy per set of devices for the whole process, as TensorFlow expects (a second one over
    the same devices hands out the same collective keys)."""
    import tensorflow as tf  # Keras's engine on this backend

    return tf.distribute.MirroredStrategy(list(names))


def _tensorflow_replicas(spec: NetSpec, device: str, devices: int, compile: str) -> Callable:
    """tf.distribute.MirroredStrategy over `devices` logical devices: fit splits every batch over them."""
    import tensorflow as tf

    if compile == "compiled":  # tensorflow.org/xla/known_issues: "tf.Variable on a different device"
        raise NotImplementedError("Keras on TensorFlow runs MirroredStrategy replicas without XLA (--compile "
                                  "eager): one XLA cluster cannot reach the other replicas' variables")
    if any(isinstance(layer, Dropout) and layer.rate for layer in spec.layers):
        raise NotImplementedError("Keras on TensorFlow draws the same dropout mask on every MirroredStrategy replica "
                                  "(the Dropout layer's seed state is a mirrored variable; docs/distributed.md): "
                                  "refused for a network with dropout (Keras on JAX draws one mask per image)")

    found = tf.config.list_logical_devices("GPU" if device == "gpu" else "CPU")
    if len(found) < devices:
        raise ValueError(f"TensorFlow sees {len(found)} {device} devices, fewer than {devices} replicas")
    return _mirrored(tuple(d.name for d in found[:devices])).scope


def _jax_replicas(spec: NetSpec, device: str, devices: int, compile: str) -> Callable:
    """keras.distribution.DataParallel over `devices` devices: fit shards every batch along the mesh's batch axis."""
    if compile != "compiled":  # as nin_jax: op by op, a mesh's collectives hung XLA's CPU runtime (SIGABRT) here
        raise NotImplementedError("Keras on JAX runs a mesh's replicas compiled (--compile compiled): run_eagerly, "
                                  "each op's all-reduce waits for every device and XLA's CPU runtime aborted")
    found = keras.distribution.list_devices(device)
    if len(found) < devices:
        raise ValueError(f"JAX sees {len(found)} {device} devices, fewer than {devices} replicas")
    return keras.distribution.DataParallel(devices=found[:devices]).scope


def _torch_replicas(spec: NetSpec, device: str, devices: int, compile: str) -> Callable:
    raise NotImplementedError("Keras's fit has no data-parallel engine on PyTorch: keras.io wraps the model in DDP "
                              "inside a loop of its own, which the data-parallel case (nin record --devices) runs")


_REPLICAS = {"tensorflow": _tensorflow_replicas, "jax": _jax_replicas, "torch": _torch_replicas}  # by Keras backend


# Why nin train takes no --nodes, by Keras backend (docs/distributed.md, "On several machines")
NODES_REFUSED = {
    "tensorflow": "Keras's fit fails under MultiWorkerMirroredStrategy with 2 workers (Keras 3.15.1, TensorFlow 2.21: "
                  "to build the model it reduces a whole batch across the workers, a ValueError; measured), so nin "
                  "train does not start its workers",
    "jax": "Keras on JAX across machines feeds each process its own share of every batch "
           "(keras.distribution.initialize), which nin train does not do",
    "torch": "Keras's fit has no data-parallel engine on PyTorch, on one machine or several, and nin train does not "
             "wrap it",
}


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str, dtype: str = "float32", devices: int = 1, nodes: int = 1) -> Trainer:
    """The network (in dtype) behind an InputResize layer, compiled with train.make_optimizer's SGD
    (the learning rate from the table), cross-entropy, accuracy and the zero-logit share, the loss
    tracker and the metrics in dtype too. devices > 1: all of it made in the scope of the backend's
    data-parallel engine (MirroredStrategy, DataParallel), where fit splits every batch over the replicas."""
    if nodes > 1:
        raise NotImplementedError(NODES_REFUSED[keras.backend.backend()])
    replicas = (_REPLICAS[keras.backend.backend()](spec, device, devices, compile) if devices > 1
                else contextlib.nullcontext)
    with replicas():
        return _make_trainer(spec, lrs, momentum=momentum, weight_decay=weight_decay, device=device, compile=compile,
                             dtype=dtype, replicas=replicas)


def _make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                  compile: str, dtype: str, replicas: Callable) -> Trainer:
    model = build(spec, device=device, dtype=dtype, compiled=compile == "compiled")
    optimizer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay)
    rows, cols = (np.asarray(m, dtype=dtype) for m in input_matrices(spec))
    with _placed(model):
        net = keras.Sequential([keras.Input((28, 28), dtype="uint8"),
                                InputResize(rows, cols, spec.input_shape[0], dtype=dtype), model])
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)  # Keras's loss tracker, metrics and loss take floatx when made: the model's dtype
    try:
        net.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                             keras.metrics.MeanMetricWrapper(_zero_logits, name="zero_logits")],
                    jit_compile=compile == "compiled", run_eagerly=compile == "eager")
    finally:
        keras.config.set_floatx(previous)
    return Trainer(model, net, optimizer, replicas)


def _momentums(trainer: Trainer) -> dict[str, keras.Variable]:
    """Canonical name -> the optimizer's momentum slot of that trainable tensor (Keras SGD's
    `momentums`, at the optimizer's index of the variable); {} for plain SGD, which keeps none."""
    optimizer = trainer.optimizer
    slots = getattr(optimizer, "momentums", None) or []
    if not slots:
        return {}
    return {name: slots[optimizer._get_variable_index(v)]
            for name, v in canonical_tensors(trainer.model).items() if v.trainable}


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum buffers by canonical name ("momentum/<name>", any backend's
    export_state) into the optimizer's slots, and optimizer.iterations = step (the table's position)."""
    load_weights(trainer.model, weights, "checkpoint")
    for name, slot in _momentums(trainer).items():
        key = f"momentum/{name}"
        if key not in optimizer:
            if step:
                raise ValueError(f"checkpoint: no {key} for a run with momentum "
                                 f"{float(trainer.optimizer.momentum):g} at step {step}")
            slot.assign(keras.ops.zeros(slot.shape, dtype=slot.dtype))  # a fresh optimizer
            continue
        want = to_canonical(name, slot).shape
        if np.shape(optimizer[key]) != want:
            raise ValueError(f"checkpoint: {key} has shape {np.shape(optimizer[key])}, the model's {want}")
        slot.assign(from_canonical(name, np.asarray(optimizer[key], dtype=slot.dtype)))
    trainer.optimizer.iterations.assign(step)


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, canonical momentum buffers, steps done: optimizer.iterations)."""
    optimizer = {f"momentum/{name}": to_canonical(name, slot) for name, slot in _momentums(trainer).items()}
    return export_weights(trainer.model), optimizer, int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))


class Progress(keras.callbacks.Callback):
    """Hands the driver each batch's size, mean loss and correct count. Keras's logs hold the means
    so far in the epoch, so each batch's own values are the differences of the running sums."""

    def __init__(self, progress, batch_size: int, total: int):
        super().__init__()
        self.progress, self.batch_size, self.total = progress, batch_size, total
        self.seen, self.loss_sum, self.correct = 0, 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        n = min(self.batch_size, self.total - self.seen)
        seen = self.seen + n
        loss_sum = float(logs["loss"]) * seen
        correct = round(float(logs["accuracy"]) * seen)
        self.progress(n, (loss_sum - self.loss_sum) / n, correct - self.correct)
        self.seen, self.loss_sum, self.correct = seen, loss_sum, correct


def _seed_dropout(model: keras.Model, seed: int) -> None:
    """Restart each dropout layer's seed generator (Keras layers own their random streams)."""
    for i, layer in enumerate(m for m in model.layers if isinstance(m, keras.layers.Dropout)):
        if getattr(layer, "seed_generator", None) is None:  # rate 0: Keras makes no generator
            continue
        state = layer.seed_generator.state
        state.assign(np.array([seed, i], dtype=state.dtype))


class TorchDropoutSeed(keras.callbacks.Callback):
    """Keras's PyTorch backend draws an unseeded Dropout's mask from torch's global generator
    (keras/src/backend/torch/random.py, dropout), not from the layer's seed generator; and every
    DataLoader iterator that fit makes draws from it too (a model's first fit makes one more), so the
    generator is restarted at the epoch's first batch, after them."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            keras.utils.set_random_seed(self.seed)  # on the torch backend: torch.manual_seed, and no import here


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One model.fit epoch over images (uint8, already in the epoch's order: shuffle=False; the last
    partial batch kept, as fit does); progress(n, mean loss, correct) after every batch, from a callback."""
    _seed_dropout(trainer.model, dropout_seed)
    callbacks = [Progress(progress, batch_size, len(images))]
    if keras.backend.backend() == "torch":
        callbacks.append(TorchDropoutSeed(dropout_seed))
    with trainer.replicas(), _placed(trainer.model):
        trainer.net.fit(images, labels.astype(np.int32), batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                        callbacks=callbacks)


def dropout_masks(trainer: Trainer, shapes: list, *, dropout_seed: int) -> list:
    """The keep masks train_epoch(..., dropout_seed) draws, batch by batch, layer by layer: each Dropout layer called
    again with training=True on ones laid out in memory as its input is in the step (the layers before it run in
    inference mode on zeros: Keras's PyTorch backend fills a mask in the input's memory order), its seed generator
    restarted as train_epoch restarts it (on the PyTorch backend, torch's generator: TorchDropoutSeed)."""
    _seed_dropout(trainer.model, dropout_seed)
    if keras.backend.backend() == "torch":
        keras.utils.set_random_seed(dropout_seed)
    out = []
    with _placed(trainer.model):
        for batch in shapes:
            x, drawn = keras.ops.zeros((batch[0][0], *trainer.model.input_shape[1:]), dtype=trainer.model.dtype), []
            for layer in trainer.model.layers:
                if isinstance(layer, keras.layers.Dropout):
                    drawn.append(nhwc_to_nchw(keras.ops.convert_to_numpy(layer(keras.ops.ones_like(x), training=True))
                                              != 0))
                else:
                    x = layer(x, training=False)
            out.append(drawn)
    if [[m.shape for m in batch] for batch in out] != [[tuple(s) for s in batch] for batch in shapes]:
        raise ValueError(f"dropout_masks: the dropout layers' inputs are {[[m.shape for m in b] for b in out]}, "
                         f"not {shapes}")
    return out


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0: model.evaluate, whose
    loss tracker and metrics make_trainer made in the model's dtype."""
    with trainer.replicas(), _placed(trainer.model):
        out = trainer.net.evaluate(images, labels.astype(np.int32), batch_size=batch_size, verbose=0,
                                   return_dict=True)
    return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]), "zero_logits": float(out["zero_logits"])}
