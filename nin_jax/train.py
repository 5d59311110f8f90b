"""Training NiN the Flax way: optax cross-entropy and SGD, nnx.value_and_grad, nnx.Optimizer, nnx.jit."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np
import optax
from flax import nnx

from common.spec import TrainConfig

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")
DETERMINISTIC_GPU = "--xla_gpu_deterministic_ops=true"


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch (optax gives it per example)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(model: nnx.Module, config: TrainConfig) -> nnx.Optimizer:
    # Decayed weights, then momentum SGD, is the suite's convention: g += wd * w; v = m * v + g; w -= lr * v.
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(config.lr, momentum=config.momentum or None))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _batch(model: nnx.Module, images: np.ndarray, labels: np.ndarray):
    x = to_input(model, images)
    return x, jax.device_put(np.asarray(labels, np.int32), device_of(model))


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return cross_entropy(model(x).astype(x.dtype), y)  # logits in the input's dtype (bf16 compute is cast up)


def _value_and_grads(model, x, y):
    return nnx.value_and_grad(_loss)(model, x, y)


_value_and_grads_jit = nnx.jit(_value_and_grads)


def loss_and_grads(model: nnx.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    model.train()
    loss, grads = (_value_and_grads_jit if model.jit else _value_and_grads)(model, x, y)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_model = nnx.merge(graphdef, grads, rest)  # the model's own structure, its Params holding gradients
    grads = {k: to_canonical(k, t[...]) for k, t in canonical_tensors(grad_model).items()
             if isinstance(t, nnx.Param)}
    return float(loss), grads


def _update(model, optimizer, x, y):
    """One SGD step: loss and gradients, then the optimizer's update of the model in place."""
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


_update_jit = nnx.jit(_update)


def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images: np.ndarray, labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    model.train()
    return float((_update_jit if model.jit else _update)(model, optimizer, x, y))


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32: float32 matmuls and convs ("highest", no TF32), deterministic GPU ops (conformance).
    fp64: the same, with 64-bit types on (jax_enable_x64). fast: XLA's default precision (TF32 on
    Ampere and later GPUs). Call it before anything touches a device: XLA reads its flags once."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    strict = precision != "fast"
    jax.config.update("jax_enable_x64", precision == "fp64")
    jax.config.update("jax_default_matmul_precision", "highest" if strict else None)
    flags = os.environ.get("XLA_FLAGS", "")
    if strict and device == "gpu" and DETERMINISTIC_GPU not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU}".strip()
    return {
        "precision": precision,
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64": jax.config.jax_enable_x64,
        "backend": jax.default_backend(),
    }


def float64_limits() -> dict[str, str]:
    """Operations that compute below float64 in the fp64 mode, with the reason: none in Flax (nnx.BatchNorm
    makes its running statistics float32 whatever param_dtype; model.build casts them)."""
    return {}


def device_name(device: str) -> str:
    if device == "gpu":
        return jax.devices("gpu")[0].device_kind
    return platform.processor() or platform.machine()


def versions() -> dict:
    import flax
    import jaxlib
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__}
