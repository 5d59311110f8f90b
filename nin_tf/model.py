"""NiN in Keras 3: keras.Sequential blocks built from a common.spec.NetSpec, NHWC as Keras is.

Only `keras` is imported: the same file runs on Keras's TensorFlow, JAX and PyTorch backends
(KERAS_BACKEND, set by the registry for keras-tf, keras-jax and keras-torch).
"""

from __future__ import annotations

import contextlib
import weakref

import keras
import numpy as np

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import check_shapes, hwio_to_oihw, nchw_to_nhwc, oihw_to_hwio

FRAMEWORK = "keras"
RUNNING_VARIANCE = "biased"  # keras.layers.BatchNormalization keeps the biased batch variance
HYPERPARAMETERS = "exact"  # optimizer and batch-norm settings are Python floats, cast to the model's dtype


def nin_block(in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None) -> keras.Sequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, stride, padding)]
    for c in mlp:
        convs.append((convs[-1][1], c, 1, 1, 0))
    layers: list = [keras.Input((None, None, in_channels))]  # builds the weights now, as the others do
    for j, (_, cout, k, s, p) in enumerate(convs):
        # 'same' pads (k - 1) // 2, then the rest: p only at stride 1 with p = (k - 1) / 2 (and XLA's
        # float64 CPU gradients are 17x faster with it than with a padded input); elsewhere pad explicitly
        same = s == 1 and 2 * p == k - 1
        if p and not same:
            layers.append(keras.layers.ZeroPadding2D(p))
        layers.append(keras.layers.Conv2D(cout, kernel_size=k, strides=s, padding="same" if p and same else "valid",
                                          use_bias=norm is None))
        if norm is not None:
            layers.append(keras.layers.BatchNormalization(epsilon=norm.eps, momentum=norm.momentum))
        if j < len(convs) - 1 or relu_last:
            layers.append(keras.layers.ReLU())
    return keras.Sequential(layers)


def _gpu_visible() -> bool:
    """Whether the Keras backend sees a GPU: each puts a new tensor there when it does (Keras has no
    backend-neutral device list: keras.distribution exists for JAX and TensorFlow only)."""
    device = str(getattr(keras.ops.zeros(()), "device", "")).lower()
    return "gpu" in device or "cuda" in device


def default_device(device: str | None = None) -> str:
    """None: the first GPU when the Keras backend sees one, else the CPU; as a keras.device name."""
    if device in (None, "gpu"):
        if _gpu_visible():
            return "gpu:0"
        if device == "gpu":
            raise RuntimeError(f"no GPU is visible to Keras's {keras.backend.backend()} backend "
                               "(it places new tensors on the CPU)")
        return "cpu:0"
    return {"cpu": "cpu:0"}.get(device, device)


def _building_on(name: str):
    """keras.device(name), or no scope where Keras puts tensors anyway: Keras 3.15's PyTorch backend
    cannot create a Dropout layer (its integer seed state) inside keras.device."""
    return contextlib.nullcontext() if name == default_device() else keras.device(name)


def build(spec: NetSpec, *, device: str | None = None, dtype: str = "float32",
          compiled: bool = False) -> keras.Sequential:
    """One top-level layer per entry of spec.layers. compiled: the model's train and predict steps
    run under jit_compile=True (XLA, jax.jit or torch.compile); otherwise eagerly (run_eagerly=True)."""
    c, h, w = spec.input_shape
    layers: list = [keras.Input((h, w, c))]
    channels = c
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)  # every layer built below computes and stores in dtype
    try:
        with _building_on(default_device(device)):
            for layer in spec.layers:
                if isinstance(layer, NiNBlock):
                    layers.append(nin_block(channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                            padding=layer.padding, mlp=layer.mlp, relu_last=layer.relu_last,
                                            norm=spec.norm(layer)))
                    channels = layer.final_channels
                elif isinstance(layer, MaxPool):
                    pool = keras.layers.MaxPooling2D(layer.kernel_size, strides=layer.stride)
                    # Keras 'same' pads bottom / right only; pad both sides with zeros (the input is post-ReLU).
                    layers.append(keras.Sequential([keras.layers.ZeroPadding2D(layer.padding), pool])
                                  if layer.padding else pool)
                elif isinstance(layer, Dropout):
                    layers.append(keras.layers.Dropout(layer.rate))
                elif isinstance(layer, GlobalAvgPool):
                    layers.append(keras.layers.GlobalAveragePooling2D(keepdims=True))
                elif isinstance(layer, Flatten):
                    layers.append(keras.layers.Flatten())
            model = keras.Sequential(layers)
    finally:
        keras.config.set_dtype_policy(previous)
    _devices[model] = default_device(device)
    model.compile(jit_compile=compiled, run_eagerly=not compiled)  # the optimizer comes with training
    return model


# --- canonical weights in and out ---------------------------------------------------------
BN_NAMES = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean", "moving_variance": "running_var"}


def canonical_tensors(model: keras.Sequential) -> dict[str, keras.Variable]:
    """Canonical name -> the model's own variable (conv kernels HWIO: see to_canonical)."""
    out = {}
    blocks = [m for m in model.layers
              if isinstance(m, keras.Sequential) and any(isinstance(l, keras.layers.Conv2D) for l in m.layers)]
    for b, block in enumerate(blocks):
        convs = [m for m in block.layers if isinstance(m, keras.layers.Conv2D)]
        norms = [m for m in block.layers if isinstance(m, keras.layers.BatchNormalization)]
        for j, conv in enumerate(convs):
            out[f"block{b}.conv{j}.weight"] = conv.kernel
            if conv.use_bias:
                out[f"block{b}.conv{j}.bias"] = conv.bias
        for j, bn in enumerate(norms):
            for theirs, ours in BN_NAMES.items():
                out[f"block{b}.bn{j}.{ours}"] = getattr(bn, theirs)
    return out


def to_canonical(name: str, value) -> np.ndarray:
    """A variable or gradient as canonical NumPy: HWIO kernels -> OIHW; vectors as they are."""
    a = np.array(keras.ops.convert_to_numpy(value))
    return hwio_to_oihw(a) if name.endswith(".weight") else a


def from_canonical(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    return oihw_to_hwio(a) if name.endswith(".weight") else a


def load_weights(model: keras.Sequential, weights, source: str = "weights") -> None:
    tensors = canonical_tensors(model)
    check_shapes({k: tuple(hwio_to_oihw(np.empty(v.shape)).shape) if len(v.shape) == 4 else tuple(v.shape)
                  for k, v in tensors.items()}, weights, source)
    for name, v in tensors.items():
        v.assign(from_canonical(name, np.asarray(weights[name], dtype=v.dtype)))


def export_weights(model: keras.Sequential) -> dict[str, np.ndarray]:
    return {k: to_canonical(k, v) for k, v in canonical_tensors(model).items()}


_devices: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def device_of(model: keras.Model) -> str:
    """The keras.device name the model was built under (Keras variables do not say it the same way on
    every backend, so build remembers it)."""
    return _devices.get(model, default_device())


def to_input(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """NCHW images as the model's input: NHWC, in its dtype (Keras places it when the model runs)."""
    return nchw_to_nhwc(np.asarray(images, dtype=model.dtype))


def _seed_dropout(model: keras.Sequential, seed: int) -> None:
    """Restart each dropout layer's random stream at `seed` (Keras layers own their seed generators)."""
    dropouts = [m for m in model.layers if isinstance(m, keras.layers.Dropout)]
    for i, layer in enumerate(dropouts):
        state = layer.seed_generator.state
        state.assign(np.array([seed, i], dtype=state.dtype))


def forward(model: keras.Sequential, images: np.ndarray, *, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW images. training=True: dropout drops, batch norm uses batch statistics.
    Evaluation runs Keras's predict step, compiled as the model is; training mode calls the model."""
    _seed_dropout(model, seed)
    x = to_input(model, images)
    with keras.device(device_of(model)):
        if not training:
            return np.asarray(model.predict_on_batch(x))
        return np.asarray(keras.ops.convert_to_numpy(model(x, training=True)))


def layer_shapes(model: keras.Sequential, images: np.ndarray) -> list[tuple[int, ...]]:
    x = to_input(model, images)
    shapes = []
    with keras.device(device_of(model)):
        for layer in model.layers:
            x = layer(x, training=False)
            s = tuple(x.shape[1:])
            shapes.append((s[2], s[0], s[1]) if len(s) == 3 else s)  # HWC -> CHW
    return shapes
