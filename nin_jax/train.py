"""Training NiN the Flax way: optax cross-entropy and SGD, nnx.value_and_grad, nnx.Optimizer, nnx.jit."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.spec import TrainConfig
from common.weights import nchw_to_nhwc

from .model import _canonical_tensors, _device_of, _to_canonical

DETERMINISTIC_GPU = "--xla_gpu_deterministic_ops=true"


def make_optimizer(model: nnx.Module, config: TrainConfig) -> nnx.Optimizer:
    # Decayed weights, then momentum SGD, is the suite's convention: g += wd * w; v = m * v + g; w -= lr * v.
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(config.lr, momentum=config.momentum or None))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _batch(model: nnx.Module, images: np.ndarray, labels: np.ndarray):
    device = _device_of(model)
    return jax.device_put(nchw_to_nhwc(images), device), jax.device_put(np.asarray(labels, np.int32), device)


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model(x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def _loss_and_grads(model, x, y):
    return nnx.value_and_grad(_loss)(model, x, y)


def loss_and_grads(model: nnx.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    x, y = _batch(model, images, labels)
    model.train()
    loss, grads = _loss_and_grads(model, x, y)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_model = nnx.merge(graphdef, grads, rest)  # the model's own structure, its Params holding gradients
    grads = {k: _to_canonical(k, t[...]) for k, t in _canonical_tensors(grad_model).items()
             if isinstance(t, nnx.Param)}
    return float(loss), grads


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images: np.ndarray, labels: np.ndarray) -> float:
    x, y = _batch(model, images, labels)
    model.train()
    return float(_train_step(model, optimizer, x, y))


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32: float32 matmuls and convs ("highest", no TF32), deterministic GPU ops (conformance).
    fast: XLA's default precision (TF32 on Ampere and later GPUs)."""
    if precision not in ("fp32", "fast"):
        raise ValueError(f"precision must be 'fp32' or 'fast', got {precision!r}")
    strict = precision == "fp32"
    jax.config.update("jax_default_matmul_precision", "highest" if strict else None)
    flags = os.environ.get("XLA_FLAGS", "")
    if strict and device == "gpu" and DETERMINISTIC_GPU not in flags:
        # XLA reads this once, when JAX first initialises its backends: it binds only when
        # configure() runs before anything touches a device.
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU}".strip()
    return {
        "precision": precision,
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64": jax.config.jax_enable_x64,
        "backend": jax.default_backend(),
    }


def device_name(device: str) -> str:
    if device == "gpu":
        return jax.devices("gpu")[0].device_kind
    import platform
    return platform.processor() or platform.machine()


def versions() -> dict:
    import flax
    import jaxlib
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__}
