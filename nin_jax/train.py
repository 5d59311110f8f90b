"""Training NiN the Flax way: optax cross-entropy and SGD (its schedule the learning-rate table),
nnx.value_and_grad, nnx.Optimizer, nnx.jit."""

from __future__ import annotations

import os
import platform
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .model import canonical_tensors, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")
DETERMINISTIC_GPU = "--xla_gpu_deterministic_ops=true"


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch (optax gives it per example)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(model: nnx.Module, lrs: np.ndarray, *, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> nnx.Optimizer:
    """optax SGD in the suite's form: add_decayed_weights then sgd (g += wd * w; v = m * v + g;
    w -= lr * v; momentum 0: no trace), every nnx.Param decayed (batch-norm statistics are not Params).
    The rate of step t is lrs[t] (the last entry past the end), t being optax's own count, read from
    the table kept where the parameters are (one device, or a copy on each of a Mesh's: loop.py) in their
    dtype (float64 in fp64 mode)."""
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    dtype = params[0].dtype if params else jnp.float32
    table = jax.device_put(np.asarray(lrs, dtype=np.float64).astype(dtype),
                           params[0].sharding if params else device_of(model))
    last = len(table) - 1

    def schedule(count):
        return table[jnp.minimum(count, last)]

    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum or None))
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
    """One SGD step: loss, logits and gradients, then the optimizer's update of the model in place."""
    def loss_fn(model):
        logits = model(x).astype(x.dtype)  # logits in the input's dtype (bf16 compute is cast up)
        return cross_entropy(logits, y), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)


_update_jit = nnx.jit(_update)


def _labels(x: jax.Array, y) -> jax.Array:
    """Integer labels as int32 on the input's device (a device array is used as it is)."""
    if isinstance(y, jax.Array):
        return y if y.dtype == jnp.int32 else y.astype(jnp.int32)
    return jax.device_put(np.asarray(y, dtype=np.int32), next(iter(x.devices())))


_MODAL = weakref.WeakKeyDictionary()  # model -> its layers with a training mode (dropout, batch norm)


def _train_mode(model: nnx.Module) -> None:
    """model.train(), which walks the whole graph (milliseconds a step), only when a layer is in eval mode."""
    if model not in _MODAL:
        _MODAL[model] = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)
                         and (hasattr(m, "deterministic") or hasattr(m, "use_running_average"))]
    if any(getattr(m, "deterministic", False) or getattr(m, "use_running_average", False) for m in _MODAL[model]):
        model.train()


def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y) -> tuple[float, int]:
    """Forward in training mode, nnx.value_and_grad, optimizer.update (which advances optax's count
    and the optimizer's step), under nnx.jit when the model is compiled. x: the model's input (NHWC,
    its dtype, on its device); y: integer labels. (mean loss, correct predictions)."""
    _train_mode(model)
    loss, correct = (_update_jit if model.jit else _update)(model, optimizer, x, _labels(x, y))
    return float(loss), int(correct)


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
