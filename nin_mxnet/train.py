"""Training NiN the Gluon way: gluon.loss.SoftmaxCrossEntropyLoss, autograd.record(), loss.backward(),
gluon.Trainer.step(batch_size) with the suite's SGD (SuiteSGD, its rate an LRScheduler over the table)."""

from __future__ import annotations

import os
import platform

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")
LOSS = gluon.loss.SoftmaxCrossEntropyLoss()  # per-sample losses, shape (batch,)


def cross_entropy(logits: mx.nd.NDArray, labels: mx.nd.NDArray) -> mx.nd.NDArray:
    """Softmax cross-entropy per example: Gluon's losses are not reduced over the batch."""
    return LOSS(logits, labels)


class TableSchedule(mx.lr_scheduler.LRScheduler):
    """Step t's rate is lrs[t] (the last entry past the end), the table kept in float64.

    MXNet asks a scheduler for the rate at the optimizer's num_update, which Optimizer._update_count
    has already advanced when update() asks: step t (counted from 0) sees num_update == t + 1."""

    def __init__(self, lrs):
        table = np.asarray(lrs, dtype=np.float64).reshape(-1)
        if not table.size:
            raise ValueError("the learning-rate table is empty")
        super().__init__(base_lr=float(table[0]))
        self.lrs = table

    def __call__(self, num_update: int) -> float:
        return float(self.lrs[min(max(num_update - 1, 0), len(self.lrs) - 1)])


@mx.optimizer.register
class SuiteSGD(mx.optimizer.Optimizer):
    """SGD in the suite's form, g = grad / n + wd * w; v = m * v + g; w -= lr * v (momentum 0: no
    state, w -= lr * g), PyTorch's and optax's. Gluon's own 'sgd', mom = m * mom - lr * (g + wd * w);
    w += mom, is the same only while the rate stays constant: under a warm-up or a cosine schedule
    the two differ. The arithmetic is in the weights' dtype (float64 in fp64 mode). The rate is the
    lr_scheduler's (TableSchedule) at num_update, the table's float64 entry as it is (one table for
    every backend; a float32 rate would be 1e-9 off in fp64 mode, a million times its bound); momentum
    and weight decay are exact too (MXNet's own sgd_mom_update kernel would take all three as float32)."""

    def __init__(self, momentum: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index, weight, grad, state):
        self._update_count(index)  # num_update: this step's number, counted from 1
        # NDArray arithmetic with Python scalars runs in the weights' dtype with the scalar as a double:
        # the rate, momentum and decay are exact (a float32 rate would be ~1e-8 off, past the fp64 bound)
        lr, wd = self._get_lr(index), self._get_wd(index)
        g = grad * self.rescale_grad + wd * weight  # rescale_grad: 1 / the batch's size (Trainer.step)
        if state is not None:
            state[:] = self.momentum * state + g
            g = state
        weight[:] = weight - lr * g


def make_optimizer(model: nn.Block, lrs: np.ndarray, *, momentum: float = 0.0,
                   weight_decay: float = 0.0, kvstore: str | None = None) -> gluon.Trainer:
    """A gluon.Trainer over every parameter with SuiteSGD, whose rate at step t is lrs[t] (TableSchedule
    reads it at num_update; Trainer.set_learning_rate refuses an optimizer with a scheduler, so nothing
    else sets it). Weight decay applies to every trainable parameter (wd_mult 1: conv weights, biases,
    batch-norm gamma and beta); the running statistics have grad_req 'null' and no update. One device:
    no kvstore, the updates and their momentum states live in the Trainer's updater. Several contexts
    (distributed.py): a kvstore sums their gradients, and each context updates its copy alike."""
    optimizer = SuiteSGD(momentum=momentum, wd=weight_decay, lr_scheduler=TableSchedule(lrs))
    return gluon.Trainer(model.collect_params(), optimizer, kvstore=kvstore, update_on_kvstore=False)


def _batch(model: nn.Block, images: np.ndarray, labels: np.ndarray):
    return to_input(model, images), _labels(model, labels)


def _labels(model: nn.Block, labels) -> mx.nd.NDArray:
    """Integer labels as int32 on the model's device (a device array of int32 is used as it is)."""
    ctx = device_of(model)
    if isinstance(labels, mx.nd.NDArray):
        labels = labels.as_in_context(ctx)
        return labels if labels.dtype == np.int32 else labels.astype("int32")
    return mx.nd.array(np.asarray(labels), ctx=ctx, dtype="int32")


def loss_and_grads(model: nn.Block, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    with autograd.record():  # record() is training mode: dropout drops, batch norm uses batch statistics
        loss = cross_entropy(model(x), y).mean()
    loss.backward()
    grads = {k: to_canonical(k, p.grad()) for k, p in canonical_tensors(model).items() if p.grad_req != "null"}
    return loss.asscalar().item(), grads


def train_step(model: nn.Block, optimizer: gluon.Trainer, x: mx.nd.NDArray, y) -> tuple[float, int]:
    """Forward under autograd.record() (training mode), backward of the per-example losses (summed),
    trainer.step(len(x)): the gradient divided by this batch's own size (a partial last batch too),
    then SuiteSGD's update at the table's rate (num_update advances). (mean loss, correct predictions)."""
    y = _labels(model, y)
    with autograd.record():
        logits = model(x)
        loss = cross_entropy(logits, y)
    loss.backward()
    optimizer.step(x.shape[0])
    correct = (logits.argmax(axis=1) == y.astype(logits.dtype)).sum()
    return loss.mean().asscalar().item(), int(correct.asscalar())


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32 / fp64: cuDNN autotuning off, deterministic kernels, TF32 off (conformance). fast: autotuning on.
    (fp64 is the model's dtype: build(dtype="float64") casts every parameter.)

    MXNet reads these environment variables when it creates an operator (autotuning, determinism)
    or a cuDNN / cuBLAS handle (NVIDIA_TF32_OVERRIDE): set them before building a model."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    strict = precision != "fast"
    env = {
        "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0" if strict else "1",
        "MXNET_ENFORCE_DETERMINISM": "1" if strict else "0",
        "MXNET_CUDA_ALLOW_TENSOR_CORE": "0" if strict else "1",
    }
    os.environ.update(env)
    if strict:
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # cuDNN and cuBLAS: no TF32 on Ampere and later
    else:
        os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    return {
        "precision": precision,
        **env,
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "MXNET_MKLDNN_ENABLED": os.environ.get("MXNET_MKLDNN_ENABLED", "1"),
        "threads": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
    }


def float64_limits() -> dict[str, str]:
    """Operations that compute below float64 in the fp64 mode, with the reason: none in MXNet (its
    SGD's momentum and weight decay and batch norm's momentum are float32 numbers: HYPERPARAMETERS
    in model.py; the learning rate is the table's float64 entry)."""
    return {}


def device_name(device: str) -> str:
    if device == "gpu":
        from mxnet.runtime import Features  # the device's name is not exposed; name the build instead
        return f"GPU (CUDA {'on' if Features().is_enabled('CUDA') else 'off'})"
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {"mxnet": mx.__version__, "numpy": np.__version__}
