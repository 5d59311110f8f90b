"""Training NiN the Keras way: model.compile(optimizer, loss, metrics), then model.fit with callbacks,
one fit call per epoch, on whichever backend KERAS_BACKEND names (TensorFlow, JAX or PyTorch).

The resize is a Keras layer in front of the network (preprocessing inside the model, as Keras
documents it), so uint8 28x28 images are what fit and evaluate receive, and the two matmuls of
common.data.input_matrices run on the device inside the compiled step. The learning rate is a
LearningRateSchedule reading the driver's table at the optimizer's iteration count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from common.data import input_matrices
from common.spec import NetSpec

from .model import build, device_of, export_weights, load_weights
from .train import LOSS, CoupledSGD

# With TF_DETERMINISTIC_OPS (fp32), Keras runs TensorFlow's tf.function graph instead of XLA, and says so.
warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")


class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step `step` read from a table (the driver's, the same in every backend)."""

    def __init__(self, lrs):
        self.lrs = np.asarray(lrs, dtype="float32")

    def __call__(self, step):
        index = keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.lrs) - 1)
        return keras.ops.take(keras.ops.convert_to_tensor(self.lrs), index)

    def get_config(self):
        return {"lrs": self.lrs.tolist()}


class ScheduledSGD(CoupledSGD):
    """SGD in the suite's form, v = m * v + (g + wd * w); w -= lr * v (PyTorch's and optax's). Keras's
    own, v = m * v - lr * g; w += v, is the same only while the learning rate stays constant: under a
    warm-up or a cosine schedule the two differ, so the scheduled runs use this one."""

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        if self.l2:
            gradient = keras.ops.add(gradient, keras.ops.multiply(keras.ops.cast(self.l2, variable.dtype), variable))
        if self.momentum:
            v = self.momentums[self._get_variable_index(variable)]
            self.assign(v, keras.ops.add(keras.ops.multiply(v, keras.ops.cast(self.momentum, variable.dtype)),
                                         gradient))
            gradient = v
        self.assign_sub(variable, keras.ops.multiply(gradient, lr))


class InputResize(keras.layers.Layer):
    """uint8 (N, 28, 28) -> float (N, H, W, C): rows @ X @ cols^T on the device, the grey repeated."""

    def __init__(self, rows, cols, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.cols, self.channels = np.asarray(rows), np.asarray(cols), channels

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        x = keras.ops.matmul(keras.ops.matmul(self.rows, x), keras.ops.transpose(self.cols))
        return keras.ops.repeat(keras.ops.expand_dims(x, -1), self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.rows.shape[0], self.cols.shape[0], self.channels)


def _zero_logits(labels, logits):
    """1 for an image whose logits are all <= 0 (a dead final ReLU predicts nothing)."""
    return keras.ops.cast(keras.ops.all(logits <= 0, axis=-1), "float32")


@dataclass
class Trainer:
    model: keras.Model  # the network, as common.spec builds it
    net: keras.Model  # InputResize, then the network: what fit and evaluate run
    optimizer: keras.optimizers.Optimizer


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str) -> Trainer:
    """The network behind an InputResize layer, compiled with SGD in the suite's form (ScheduledSGD;
    the learning rate from the table), cross-entropy, accuracy and the zero-logit share."""
    model = build(spec, device=device, compiled=compile == "compiled")
    rows, cols = input_matrices(spec)
    with keras.device(device_of(model)):
        net = keras.Sequential([keras.Input((28, 28), dtype="uint8"), InputResize(rows, cols, spec.input_shape[0]),
                                model])
        optimizer = ScheduledSGD(l2=weight_decay, learning_rate=TableSchedule(lrs), momentum=momentum)
        optimizer.build(net.trainable_variables)
    net.compile(optimizer=optimizer, loss=LOSS,
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                         keras.metrics.MeanMetricWrapper(_zero_logits, name="zero_logits")],
                jit_compile=compile == "compiled", run_eagerly=compile == "eager")
    return Trainer(model, net, optimizer)


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights; every optimizer variable (its iteration count, the momentums) by its index
    in optimizer.variables, when the checkpoint has them; a fresh optimizer has step 0."""
    load_weights(trainer.model, weights, "checkpoint")
    variables = trainer.optimizer.variables
    if optimizer:
        keys = [f"{i:03d}" for i in range(len(variables))]
        if sorted(keys) != sorted(optimizer):
            raise ValueError(f"checkpoint: the optimizer state has {len(optimizer)} variables, Keras's SGD "
                             f"{len(variables)}; was it written with another --optimizer?")
        for key, v in zip(keys, variables):
            v.assign(np.asarray(optimizer[key], dtype=v.dtype))
    if int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)) != step:
        raise ValueError(f"checkpoint: the optimizer's iteration count is "
                         f"{int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))}, the run's position {step}")


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, optimizer variables by index, steps done)."""
    optimizer = {f"{i:03d}": np.array(keras.ops.convert_to_numpy(v)) for i, v in enumerate(trainer.optimizer.variables)}
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


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One model.fit epoch over images (uint8, already in the epoch's order: shuffle=False);
    progress(n, mean loss, correct) after every batch, from a callback."""
    _seed_dropout(trainer.model, dropout_seed)
    with keras.device(device_of(trainer.model)):
        trainer.net.fit(images, labels.astype(np.int32), batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                        callbacks=[Progress(progress, batch_size, len(images))])


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0: model.evaluate."""
    with keras.device(device_of(trainer.model)):
        out = trainer.net.evaluate(images, labels.astype(np.int32), batch_size=batch_size, verbose=0,
                                   return_dict=True)
    return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]), "zero_logits": float(out["zero_logits"])}
