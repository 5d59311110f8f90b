"""NiN in Keras 3 on TensorFlow: keras.Sequential blocks built from a common.spec.NetSpec, NHWC as Keras is."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import WeightsError, check_shapes, hwio_to_oihw, nchw_to_nhwc, oihw_to_hwio

FRAMEWORK = "tensorflow"


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None) -> keras.Sequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, strides, padding)]
    for c in mlp:
        convs.append((convs[-1][1], c, 1, 1, 0))
    layers: list = [keras.Input((None, None, in_channels))]  # builds the weights now, as the others do
    for j, (cin, cout, k, s, p) in enumerate(convs):
        if p:
            layers.append(keras.layers.ZeroPadding2D(p))  # explicit: Keras 'same' differs for stride > 1
        layers.append(keras.layers.Conv2D(cout, kernel_size=k, strides=s, use_bias=norm is None))
        if norm is not None:
            layers.append(keras.layers.BatchNormalization(epsilon=norm.eps, momentum=norm.momentum))
        if j < len(convs) - 1 or relu_last:
            layers.append(keras.layers.ReLU())
    return keras.Sequential(layers)


def default_device(device: str | None = None) -> str:
    """None: the first GPU when TensorFlow sees one, else the CPU; as a tf.device string."""
    if device in (None, "gpu"):
        if tf.config.list_physical_devices("GPU"):
            return "/GPU:0"
        if device == "gpu":
            raise RuntimeError("device 'gpu' asked for, but tf.config.list_physical_devices('GPU') is empty")
        return "/CPU:0"
    return {"cpu": "/CPU:0"}.get(device, device)


def build(spec: NetSpec, device: str | None = None) -> keras.Sequential:
    """One top-level layer per entry of spec.layers."""
    c, h, w = spec.input_shape
    layers: list = [keras.Input((h, w, c))]
    channels = c
    with tf.device(default_device(device)):
        for layer in spec.layers:
            if isinstance(layer, NiNBlock):
                layers.append(nin_block(channels, layer.channels, layer.kernel, layer.stride, layer.padding,
                                        mlp=layer.mlp, relu_last=layer.relu_last, norm=spec.norm(layer)))
                channels = layer.out_channels
            elif isinstance(layer, MaxPool):
                pool = keras.layers.MaxPooling2D(layer.kernel, strides=layer.stride)
                # Keras 'same' pads bottom / right only; pad both sides with zeros (the input is post-ReLU).
                layers.append(keras.Sequential([keras.layers.ZeroPadding2D(layer.padding), pool])
                              if layer.padding else pool)
            elif isinstance(layer, Dropout):
                layers.append(keras.layers.Dropout(layer.rate))
            elif isinstance(layer, GlobalAvgPool):
                layers.append(keras.layers.GlobalAveragePooling2D(keepdims=True))
            elif isinstance(layer, Flatten):
                layers.append(keras.layers.Flatten())
        return keras.Sequential(layers)


# --- canonical weights in and out ---------------------------------------------------------
_BN_NAMES = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _canonical_tensors(model: keras.Sequential) -> dict[str, keras.Variable]:
    """Canonical name -> the model's own variable (conv kernels HWIO: see _to_canonical)."""
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
            for theirs, ours in _BN_NAMES.items():
                out[f"block{b}.bn{j}.{ours}"] = getattr(bn, theirs)
    return out


def _to_canonical(a: np.ndarray) -> np.ndarray:
    """HWIO kernel -> OIHW; vectors as they are."""
    return hwio_to_oihw(a) if a.ndim == 4 else a


def _from_canonical(a: np.ndarray) -> np.ndarray:
    return oihw_to_hwio(a) if a.ndim == 4 else a


def _canonical_shape(shape) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def load_weights(model: keras.Sequential, weights, source: str = "weights") -> None:
    tensors = _canonical_tensors(model)
    check_shapes({k: _canonical_shape(v.shape) for k, v in tensors.items()}, weights, source)
    for name, v in tensors.items():
        v.assign(_from_canonical(np.asarray(weights[name], dtype=np.float32)))


def export_weights(model: keras.Sequential) -> dict[str, np.ndarray]:
    return {k: _to_canonical(v.numpy().astype(np.float32))
            for k, v in _canonical_tensors(model).items()}


def _device_of(model: keras.Model) -> str:
    return model.weights[0].value.device if model.weights else default_device()


def _seed_dropout(model: keras.Sequential, seed: int) -> None:
    """Restart each dropout layer's random stream at `seed` (Keras layers own their seed generators)."""
    dropouts = [m for m in model.layers if isinstance(m, keras.layers.Dropout)]
    for i, layer in enumerate(dropouts):
        state = layer.seed_generator.state
        state.assign(np.array([seed, i], dtype=state.dtype))


def forward(model: keras.Sequential, images: np.ndarray, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW float32 images. training=True: dropout drops, batch norm uses batch statistics."""
    _seed_dropout(model, seed)
    with tf.device(_device_of(model)):
        logits = model(nchw_to_nhwc(np.asarray(images, dtype=np.float32)), training=training)
    return logits.numpy().astype(np.float32)


def layer_shapes(model: keras.Sequential, images: np.ndarray) -> list[tuple[int, ...]]:
    x = nchw_to_nhwc(np.asarray(images, dtype=np.float32))
    shapes = []
    with tf.device(_device_of(model)):
        for layer in model.layers:
            x = layer(x, training=False)
            s = tuple(x.shape[1:])
            shapes.append((s[2], s[0], s[1]) if len(s) == 3 else s)  # HWC -> CHW
    return shapes
