"""NiN in Flax NNX: nnx.Sequential blocks built from a common.spec.NetSpec, NHWC / HWIO as Flax is."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import check_shapes, hwio_to_oihw, nchw_to_nhwc, oihw_to_hwio

FRAMEWORK = "flax"
RUNNING_VARIANCE = "biased"  # nnx.BatchNorm keeps the biased batch variance
HYPERPARAMETERS = "exact"  # optax and nnx.BatchNorm take Python floats
DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


def nin_block(in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None,
              rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32) -> nnx.Sequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, stride, padding)]
    for c in mlp:
        convs.append((convs[-1][1], c, 1, 1, 0))
    layers = []
    for j, (cin, cout, k, s, p) in enumerate(convs):
        layers.append(nnx.Conv(cin, cout, kernel_size=(k, k), strides=(s, s), padding=((p, p), (p, p)),
                               use_bias=norm is None, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        if norm is not None:
            # use_fast_variance=False: Flax's default E[x^2] - E[x]^2 loses float32 digits
            bn = nnx.BatchNorm(cout, epsilon=norm.eps, momentum=norm.momentum, use_fast_variance=False,
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            # nnx.BatchNorm makes its running statistics float32 whatever param_dtype: keep them in it
            bn.mean.value, bn.var.value = bn.mean.value.astype(param_dtype), bn.var.value.astype(param_dtype)
            layers.append(bn)
        if j < len(convs) - 1 or relu_last:
            layers.append(nnx.relu)
    return nnx.Sequential(*layers)


def _global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), keepdims=True)


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def default_device(device: str | None = None) -> jax.Device:
    """None: the first GPU when JAX sees one, else the CPU; this process's own (under jax.distributed,
    jax.devices() lists every process's devices, and another's cannot hold this process's arrays)."""
    if device in (None, "gpu"):
        try:
            return jax.local_devices(backend="gpu")[0]
        except RuntimeError:
            if device == "gpu":
                raise RuntimeError("no GPU is visible to JAX (jax.devices('gpu') finds none)") from None
        return jax.local_devices(backend="cpu")[0]
    return jax.local_devices(backend=device)[0]


def build(spec: NetSpec, *, device: str | None = None, dtype: str = "float32", compiled: bool = False,
          compute_dtype: str | None = None) -> nnx.Sequential:
    """One top-level module per entry of spec.layers. dtype: the parameters' (and the computation's);
    compute_dtype: a lower computation dtype (bfloat16 mixed precision; parameters stay dtype).
    compiled: forward and training steps run under nnx.jit; otherwise op by op (the model's `jit`)."""
    rngs = nnx.Rngs(params=0, dropout=0)
    param_dtype = DTYPES[dtype]
    compute = DTYPES[compute_dtype or dtype]
    layers = []
    channels = spec.input_shape[0]
    with jax.default_device(default_device(device)):
        for layer in spec.layers:
            if isinstance(layer, NiNBlock):
                layers.append(nin_block(channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                        padding=layer.padding, mlp=layer.mlp, relu_last=layer.relu_last,
                                        norm=spec.norm(layer), rngs=rngs, dtype=compute, param_dtype=param_dtype))
                channels = layer.final_channels
            elif isinstance(layer, MaxPool):
                p = layer.padding  # flax pads with -inf: the same as zeros on post-ReLU input
                k = layer.kernel_size
                layers.append(partial(nnx.max_pool, window_shape=(k, k),
                                      strides=(layer.stride, layer.stride), padding=((p, p), (p, p))))
            elif isinstance(layer, Dropout):
                layers.append(nnx.Dropout(layer.rate, rngs=rngs))
            elif isinstance(layer, GlobalAvgPool):
                layers.append(_global_avg_pool)
            elif isinstance(layer, Flatten):
                layers.append(_flatten)
        model = nnx.Sequential(*layers)
    model.jit = compiled
    return model


# --- canonical weights in and out ---------------------------------------------------------
BN_NAMES = {"scale": "gamma", "bias": "beta", "mean": "running_mean", "var": "running_var"}


def canonical_tensors(model: nnx.Sequential) -> dict[str, nnx.Variable]:
    """Canonical name -> the model's own Param or BatchStat (conv kernels HWIO: see to_canonical)."""
    out = {}
    blocks = [m for m in model.layers if isinstance(m, nnx.Sequential)]
    for b, block in enumerate(blocks):
        convs = [m for m in block.layers if isinstance(m, nnx.Conv)]
        norms = [m for m in block.layers if isinstance(m, nnx.BatchNorm)]
        for j, conv in enumerate(convs):
            out[f"block{b}.conv{j}.weight"] = conv.kernel
            if conv.bias is not None:
                out[f"block{b}.conv{j}.bias"] = conv.bias
        for j, bn in enumerate(norms):
            for theirs, ours in BN_NAMES.items():
                out[f"block{b}.bn{j}.{ours}"] = getattr(bn, theirs)
    return out


def to_canonical(name: str, value) -> np.ndarray:
    """A parameter, statistic or gradient as canonical NumPy: HWIO kernels -> OIHW."""
    value = np.array(value)
    return hwio_to_oihw(value) if name.endswith(".weight") else value


def from_canonical(name: str, value) -> np.ndarray:
    value = np.asarray(value)
    return oihw_to_hwio(value) if name.endswith(".weight") else value


def load_weights(model: nnx.Sequential, weights, source: str = "weights") -> None:
    tensors = canonical_tensors(model)
    check_shapes({k: v.shape for k, v in export_weights(model).items()}, weights, source)
    for name, t in tensors.items():  # each placed as the tensor is: on one device, or copied over a Mesh's
        t[...] = jax.device_put(from_canonical(name, np.asarray(weights[name], dtype=t[...].dtype)), t[...].sharding)


def export_weights(model: nnx.Sequential) -> dict[str, np.ndarray]:
    return {k: to_canonical(k, t[...]) for k, t in canonical_tensors(model).items()}


def device_of(model: nnx.Module) -> jax.Device:
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    return next(iter(params[0].devices())) if params else default_device()


def to_input(model: nnx.Module, images: np.ndarray) -> jax.Array:
    """NCHW images as the model's input: NHWC, on its device, in its parameters' dtype."""
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    dtype = params[0].dtype if params else np.asarray(images).dtype  # no parameters: the images' own dtype
    return jax.device_put(nchw_to_nhwc(np.asarray(images, dtype=dtype)), device_of(model))


def _apply(model: nnx.Sequential, x: jax.Array) -> jax.Array:
    return model(x)


_apply_jit = nnx.jit(_apply)


def forward(model: nnx.Sequential, images: np.ndarray, *, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW images. training=True: dropout drops, batch norm uses batch statistics."""
    nnx.reseed(model, dropout=seed)
    if training:
        model.train()
    else:
        model.eval()
    return np.asarray((_apply_jit if model.jit else _apply)(model, to_input(model, images)))


def layer_shapes(model: nnx.Sequential, images: np.ndarray) -> list[tuple[int, ...]]:
    model.eval()
    x = to_input(model, images)
    shapes = []
    for layer in model.layers:
        x = layer(x)
        shapes.append(tuple(x.shape[-1:] + x.shape[1:-1]))  # NHWC -> (C, H, W); (N, C) -> (C,)
    return shapes
