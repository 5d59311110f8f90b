"""The NumPy oracle: forward, softmax cross-entropy, backward and an SGD step for any NetSpec.

Layout is NCHW / OIHW with canonical parameter names (common.weights). Computes in float64 by
default so that it is the fixed point every framework's float32 is measured against.
Dropout is the identity here: the reference is called with eval mode or with `spec.with_dropout(0)`;
frameworks' dropout randomness is tested on its own (tests/test_dropout.py).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .spec import Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock


def _windows(x: np.ndarray, k: int, s: int, p: int, pad_value: float) -> np.ndarray:
    """(N, C, OH, OW, k, k) strided view of the padded input."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value) if p else x
    oh = (xp.shape[2] - k) // s + 1
    ow = (xp.shape[3] - k) // s + 1
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]


def conv2d(x, w, b, stride, padding):
    """b is None for a conv followed by batch norm (which would subtract the bias right away)."""
    win = _windows(x, w.shape[2], stride, padding, 0.0)
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)  # N, O, OH, OW
    return y if b is None else y + b[None, :, None, None]


def conv2d_backward(x, w, dy, stride, padding, need_dx=True):
    k = w.shape[2]
    win = _windows(x, k, stride, padding, 0.0)
    dw = np.tensordot(dy, win, axes=([0, 2, 3], [0, 2, 3]))  # O, C, k, k
    db = dy.sum(axis=(0, 2, 3))
    if not need_dx:
        return None, dw, db
    n, c, h, wd = x.shape
    oh, ow = dy.shape[2:]
    dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=dy.dtype)
    s = stride
    for i in range(k):
        for j in range(k):
            # each output position received x[.., i + s*oh, j + s*ow] * w[o, c, i, j]
            dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    return dxp[:, :, padding:padding + h, padding:padding + wd], dw, db


def max_pool(x, k, s, p):
    return _windows(x, k, s, p, -np.inf).max(axis=(-2, -1))


def max_pool_backward(x, dy, k, s, p):
    win = _windows(x, k, s, p, -np.inf)
    n, c, oh, ow = dy.shape
    arg = win.reshape(n, c, oh, ow, k * k).argmax(-1)  # first maximum, as the frameworks do
    dxp = np.zeros((n, c, x.shape[2] + 2 * p, x.shape[3] + 2 * p), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += dy * (arg == i * k + j)
    return dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]]


def _bn_train(x, gamma, beta, eps):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    return xhat * gamma[None, :, None, None] + beta[None, :, None, None], (xhat, inv, mean, var)


def _bn_backward(dy, gamma, cache):
    xhat, inv, _, _ = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    dxhat = dy * gamma[None, :, None, None]
    dx = inv / m * (m * dxhat - dxhat.sum(axis=(0, 2, 3), keepdims=True)
                    - xhat * (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True))
    return dx, dgamma, dbeta


def _cast(weights: Mapping[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}


def forward(spec: NetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, *,
            training: bool = False, dtype=np.float64, return_tape: bool = False,
            return_layer_outputs: bool = False):
    """Logits (N, classes). training=True uses batch statistics in batch norm (dropout must be 0).

    return_layer_outputs: also return the output of every entry of spec.layers.
    """
    if training and any(isinstance(l, Dropout) and l.rate > 0 for l in spec.layers):
        raise ValueError(f"{spec.name}: the reference has no dropout randomness; "
                         "train it on spec.with_dropout(0.0)")
    expected = spec.input_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"{spec.name}: expected images of shape (N, {', '.join(map(str, expected))}), "
                         f"got {images.shape}")
    w = _cast(weights, dtype)
    x = np.asarray(images, dtype=dtype)
    tape: list[tuple] = []
    outputs = []
    b = -1  # index of the current NiN block: it names the block's weights
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            b += 1
            for j, (_, k, s, p) in enumerate(layer.convs):
                name = f"block{b}.conv{j}"
                y = conv2d(x, w[f"{name}.weight"], w.get(f"{name}.bias"), s, p)
                tape.append(("conv", name, x, s, p))
                x = y
                if layer.batch_norm:
                    bn = f"block{b}.bn{j}"
                    if training:
                        x, cache = _bn_train(x, w[f"{bn}.gamma"], w[f"{bn}.beta"], spec.bn_eps)
                        tape.append(("bn", bn, cache))
                    else:
                        inv = 1.0 / np.sqrt(w[f"{bn}.running_var"] + spec.bn_eps)
                        x = ((x - w[f"{bn}.running_mean"][None, :, None, None]) * (w[f"{bn}.gamma"] * inv)[None, :, None, None]
                             + w[f"{bn}.beta"][None, :, None, None])
                if j < len(layer.convs) - 1 or layer.relu_last:
                    tape.append(("relu", x))
                    x = np.maximum(x, 0)
        elif isinstance(layer, MaxPool):
            tape.append(("pool", x, layer.kernel, layer.stride, layer.padding))
            x = max_pool(x, layer.kernel, layer.stride, layer.padding)
        elif isinstance(layer, GlobalAvgPool):
            tape.append(("gap", x.shape))
            x = x.mean(axis=(2, 3), keepdims=True)
        elif isinstance(layer, Flatten):
            tape.append(("flatten", x.shape))
            x = x.reshape(x.shape[0], -1)
        # Dropout: identity (eval mode, or rate 0 in training)
        outputs.append(x)
    result = [x]
    if return_tape:
        result.append(tape)
    if return_layer_outputs:
        result.append(outputs)
    return result[0] if len(result) == 1 else tuple(result)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the batch of -log softmax(logits)[label]."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def loss_and_grads(spec: NetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
                   labels: np.ndarray, *, dtype=np.float64) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy in training mode (dropout must be 0) and its gradient for every
    trainable parameter, by canonical name."""
    w = _cast(weights, dtype)
    logits, tape = forward(spec, w, images, training=True, dtype=dtype, return_tape=True)
    loss = softmax_cross_entropy(logits, labels)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dy = prob
    dy[np.arange(len(labels)), labels] -= 1.0
    dy /= len(labels)
    grads: dict[str, np.ndarray] = {}
    for pos in range(len(tape) - 1, -1, -1):
        op = tape[pos]
        if op[0] == "flatten" or op[0] == "gap":
            shape = op[1]
            dy = dy.reshape(shape[0], shape[1], 1, 1)
            if op[0] == "gap":
                dy = np.broadcast_to(dy / (shape[2] * shape[3]), shape)
        elif op[0] == "relu":
            dy = dy * (op[1] > 0)
        elif op[0] == "pool":
            _, x, k, s, p = op
            dy = max_pool_backward(x, dy, k, s, p)
        elif op[0] == "bn":
            _, name, cache = op
            dy, grads[f"{name}.gamma"], grads[f"{name}.beta"] = _bn_backward(dy, w[f"{name}.gamma"], cache)
        elif op[0] == "conv":
            _, name, x, s, p = op
            dy, grads[f"{name}.weight"], db = conv2d_backward(x, w[f"{name}.weight"], dy, s, p, need_dx=pos > 0)
            if f"{name}.bias" in w:
                grads[f"{name}.bias"] = db
    return loss, grads


def sgd_step(weights: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], velocity: dict[str, np.ndarray],
             lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
    """In place, PyTorch's convention (Gluon's and optax's are the same for a constant lr):
    g += wd * w;  v = momentum * v + g;  w -= lr * v."""
    for name, g in grads.items():
        g = g + weight_decay * weights[name]
        v = momentum * velocity[name] + g if name in velocity else g
        velocity[name] = v
        weights[name] = weights[name] - lr * v


def train_trajectory(spec: NetSpec, weights: Mapping[str, np.ndarray], batches, *, lr: float,
                     momentum: float = 0.0, weight_decay: float = 0.0, dtype=np.float64):
    """Per-step losses and final weights of SGD on the given (images, labels) batches, dropout off."""
    spec = spec.with_dropout(0.0)
    w = _cast(weights, dtype)
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for images, labels in batches:
        loss, grads = loss_and_grads(spec, w, images, labels, dtype=dtype)
        losses.append(loss)
        sgd_step(w, grads, velocity, lr, momentum, weight_decay)
    return np.array(losses), w
