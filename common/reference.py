"""The NumPy oracle: forward, softmax cross-entropy, backward and an SGD step for any NetSpec.

Layout is NCHW / OIHW with canonical parameter names (common.weights). Computes in float64 by
default: the fixed point every framework is measured against. The reference draws no random numbers:
in training, dropout applies the keep masks it is given (`masks`: the ones a backend drew, replayed
exactly; conformance.cases.scheduled), or the spec's dropout must be 0 (`spec.with_dropout(0)`).

`rounding=Rounding(unit, seed)` runs the same float64 computation with the rounding errors of a
lower precision injected where such an implementation makes them (every dot product of a
convolution, forward and backward; batch-norm statistics; averages; the weights stored after each
step). conformance.errormodel runs a few such perturbed copies of a case to learn how far that precision
alone can carry it: the error model behind every tolerance (docs/conformance.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .spec import Dropout, NetSpec, walk


@dataclass
class Rounding:
    """Random rounding errors of a floating-point format with unit roundoff `unit` (2**-24 for float32).

    A sum y of K terms t_k accumulated one by one rounds every partial sum S_i = t_1 + ... + t_i by a
    relative error of up to u, so it is off by about u / sqrt(3) * sqrt(sum_i S_i**2), and for terms
    of mean m and variance v, sum_i S_i**2 ~ K * (y**2 / 3 + sum_k t_k**2 / 2): the first part is the
    drift of same-sign sums (a bias gradient, an average), the second the random walk of mixed-sign
    ones (a convolution). Blocked and pairwise kernels err less; that is the conservative side."""
    unit: float
    seed: int
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 7919])

    def sums(self, exact: np.ndarray, squares: np.ndarray, terms: float) -> np.ndarray:
        """exact: the sums; squares: the sums of the squared terms; terms: how many terms each sum has."""
        sigma = self.unit / np.sqrt(3.0) * np.sqrt(terms * (exact ** 2 / 3.0 + squares / 2.0))
        return exact + self.rng.standard_normal(exact.shape) * sigma

    def stored(self, values: np.ndarray, ulps: float = 1.0) -> np.ndarray:
        """Values rounded when they are stored in the format (relative error up to u), or computed by
        an elementwise formula of a few roundings (ulps: how many)."""
        return values * (1.0 + ulps * self.unit * self.rng.uniform(-1.0, 1.0, values.shape))


def _windows(x: np.ndarray, k: int, s: int, p: int, *, pad_value: float) -> np.ndarray:
    """(N, C, OH, OW, k, k) strided view of the padded input."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value) if p else x
    oh = (xp.shape[2] - k) // s + 1
    ow = (xp.shape[3] - k) // s + 1
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]


def conv2d(x, w, b, *, stride, padding, rounding: Rounding | None = None):
    """b is None for a conv followed by batch norm (which would subtract the bias right away)."""
    win = _windows(x, w.shape[2], stride, padding, pad_value=0.0)
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)  # N, O, OH, OW
    if rounding is not None:
        squares = np.tensordot(win ** 2, w ** 2, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        y = rounding.sums(y, squares, w[0].size)
    return y if b is None else y + b[None, :, None, None]


def _col2im(cols, shape, *, k, s, p):
    """Scatter (N, OH, OW, C, k, k) window contributions back onto an (N, C, H, W) input."""
    n, c, h, wd = shape
    oh, ow = cols.shape[1:3]
    dxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            # output (oh, ow) received x[.., i + s*oh, j + s*ow] * w[o, c, i, j]
            dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, p:p + h, p:p + wd]


def conv2d_backward(x, w, dy, *, stride, padding, need_dx=True, rounding: Rounding | None = None):
    k = w.shape[2]
    win = _windows(x, k, stride, padding, pad_value=0.0)
    dw = np.tensordot(dy, win, axes=([0, 2, 3], [0, 2, 3]))  # O, C, k, k
    db = dy.sum(axis=(0, 2, 3))
    positions = dy.shape[0] * dy.shape[2] * dy.shape[3]
    if rounding is not None:
        dw = rounding.sums(dw, np.tensordot(dy ** 2, win ** 2, axes=([0, 2, 3], [0, 2, 3])), positions)
        db = rounding.sums(db, (dy ** 2).sum(axis=(0, 2, 3)), positions)
    if not need_dx:
        return None, dw, db
    # one matrix product for every (input channel, i, j) a window position touches, then scatter them back
    dx = _col2im(np.tensordot(dy, w, axes=([1], [0])), x.shape, k=k, s=stride, p=padding)
    if rounding is not None:
        squares = _col2im(np.tensordot(dy ** 2, w ** 2, axes=([1], [0])), x.shape, k=k, s=stride, p=padding)
        dx = rounding.sums(dx, squares, w.shape[0] * max(1.0, (k / stride) ** 2))
    return dx, dw, db


def max_pool(x, *, kernel_size, stride, padding):
    return _windows(x, kernel_size, stride, padding, pad_value=-np.inf).max(axis=(-2, -1))


def max_pool_backward(x, dy, *, kernel_size, stride, padding):
    k, s, p = kernel_size, stride, padding
    win = _windows(x, k, s, p, pad_value=-np.inf)
    n, c, oh, ow = dy.shape
    arg = win.reshape(n, c, oh, ow, k * k).argmax(-1)  # first maximum, as the frameworks do
    dxp = np.zeros((n, c, x.shape[2] + 2 * p, x.shape[3] + 2 * p), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += dy * (arg == i * k + j)
    return dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]]


def _channel_sums(t, rounding: Rounding | None):
    """Sums over (N, H, W) per channel, keepdims; with the rounding of an M-term sum."""
    total = t.sum(axis=(0, 2, 3), keepdims=True)
    if rounding is None:
        return total
    return rounding.sums(total, (t ** 2).sum(axis=(0, 2, 3), keepdims=True), t.shape[0] * t.shape[2] * t.shape[3])


def _bn_train(x, gamma, beta, *, eps, rounding: Rounding | None):
    """Batch statistics; returns the output, the backward's cache and the batch's (mean, biased variance)."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = _channel_sums(x, rounding) / m
    # the variance as E[x^2] - E[x]^2 would round it (the error a one-pass float32 kernel makes)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    if rounding is not None:
        var = var + (_channel_sums(x ** 2, rounding) - (x ** 2).sum(axis=(0, 2, 3), keepdims=True)) / m
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    return xhat * gamma[None, :, None, None] + beta[None, :, None, None], (xhat, inv), (mean, var)


def _bn_backward(dy, gamma, cache, rounding: Rounding | None):
    xhat, inv = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma = _channel_sums(dy * xhat, rounding).reshape(-1)
    dbeta = _channel_sums(dy, rounding).reshape(-1)
    dxhat = dy * gamma[None, :, None, None]
    dx = inv / m * (m * dxhat - _channel_sums(dxhat, rounding) - xhat * _channel_sums(dxhat * xhat, rounding))
    return dx, dgamma, dbeta


def _cast(weights: Mapping[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}


def forward(spec: NetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, *,
            training: bool = False, dtype=np.float64, rounding: Rounding | None = None,
            running: dict | None = None, masks: Sequence[np.ndarray] | None = None, return_tape: bool = False,
            return_layer_outputs: bool = False):
    """Logits (N, classes). training=True uses batch statistics in batch norm, and dropout applies `masks`.

    masks: in training, one keep mask (0 / 1, the dropout's input shape, NCHW) per dropout layer of
    non-zero rate, in order: x * mask / (1 - rate), as every framework's inverted dropout computes it.
    Without masks, training needs every dropout rate to be 0.

    running: batch norm's running statistics, updated in place in training mode, as the frameworks do:
    stat = momentum * stat + (1 - momentum) * batch_stat, for the biased batch variance
    ("<bn>.running_var") and the unbiased one ("<bn>.running_var_unbiased": PyTorch's).
    return_layer_outputs: also return the output of every entry of spec.layers.
    """
    dropping = [layer for layer in spec.layers if isinstance(layer, Dropout) and layer.rate > 0 and training]
    if masks is None and dropping:
        raise ValueError(f"{spec.name}: the reference draws no dropout masks; give the masks to replay, or train it "
                         "on spec.with_dropout(0.0)")
    if masks is not None and len(masks) != len(dropping):
        raise ValueError(f"{spec.name}: {len(masks)} dropout masks for {len(dropping)} dropout layers of non-zero "
                         "rate in training")
    masks = iter(masks or ())
    expected = spec.input_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"{spec.name}: expected images of shape (N, {', '.join(map(str, expected))}), "
                         f"got {images.shape}")
    w = _cast(weights, dtype)
    x = np.asarray(images, dtype=dtype)
    tape: list[tuple] = []
    outputs: dict[int, np.ndarray] = {}
    for op in walk(spec):
        if op.kind == "conv":
            tape.append(("conv", op, x))
            x = conv2d(x, w[f"{op.name}.weight"], w.get(f"{op.name}.bias"), stride=op.stride, padding=op.padding,
                       rounding=rounding)
        elif op.kind == "batch_norm":
            if training:
                n = x.shape[0] * x.shape[2] * x.shape[3]
                x, cache, (mean, var) = _bn_train(x, w[f"{op.name}.gamma"], w[f"{op.name}.beta"], eps=spec.bn_eps,
                                                  rounding=rounding)
                tape.append(("bn", op, cache))
                if running is not None:
                    m = spec.bn_momentum
                    for key, batch in (("running_mean", mean), ("running_var", var),
                                       ("running_var_unbiased", var * n / (n - 1))):
                        name = f"{op.name}.{key}"
                        running[name] = m * running[name] + (1 - m) * batch.reshape(-1)
            else:
                inv = 1.0 / np.sqrt(w[f"{op.name}.running_var"] + spec.bn_eps)
                scale = (w[f"{op.name}.gamma"] * inv)[None, :, None, None]
                shift = w[f"{op.name}.beta"][None, :, None, None]
                x = (x - w[f"{op.name}.running_mean"][None, :, None, None]) * scale + shift
        elif op.kind == "relu":
            tape.append(("relu", op, x))
            x = np.maximum(x, 0)
        elif op.kind == "max_pool":
            tape.append(("pool", op, x))
            x = max_pool(x, kernel_size=op.kernel_size, stride=op.stride, padding=op.padding)
        elif op.kind == "global_avg_pool":
            tape.append(("gap", op, x.shape))
            sums = x.sum(axis=(2, 3), keepdims=True)
            if rounding is not None:
                sums = rounding.sums(sums, (x ** 2).sum(axis=(2, 3), keepdims=True), x.shape[2] * x.shape[3])
            x = sums / (x.shape[2] * x.shape[3])
        elif op.kind == "flatten":
            tape.append(("flatten", op, x.shape))
            x = x.reshape(x.shape[0], -1)
        elif op.kind == "dropout" and training and spec.layers[op.index].rate > 0:
            mask = np.asarray(next(masks))
            if mask.shape != x.shape:
                raise ValueError(f"{spec.name}: {op.name}'s mask has shape {mask.shape}, its input {x.shape}")
            scale = (mask != 0) / (1.0 - spec.layers[op.index].rate)
            tape.append(("dropout", op, scale))
            x = x * scale if rounding is None else rounding.stored(x * scale)
        # dropout otherwise: the identity (eval mode, or rate 0)
        outputs[op.index] = x
    result = [x]
    if return_tape:
        result.append(tape)
    if return_layer_outputs:
        result.append([outputs[i] for i in range(len(spec.layers))])
    return result[0] if len(result) == 1 else tuple(result)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the batch of -log softmax(logits)[label]."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def loss_and_grads(spec: NetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
                   labels: np.ndarray, *, dtype=np.float64, rounding: Rounding | None = None,
                   running: dict | None = None, masks: Sequence[np.ndarray] | None = None
                   ) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy in training mode and its gradient for every trainable parameter, by
    canonical name (running, masks: see forward; without masks, dropout must be 0)."""
    w = _cast(weights, dtype)
    logits, tape = forward(spec, w, images, training=True, dtype=dtype, rounding=rounding, running=running,
                           masks=masks, return_tape=True)
    loss = softmax_cross_entropy(logits, labels)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dy = prob
    dy[np.arange(len(labels)), labels] -= 1.0
    dy /= len(labels)
    if rounding is not None:  # exp, the sum of ten, a division and a subtraction: four roundings
        dy = rounding.stored(dy, ulps=4.0)
    grads: dict[str, np.ndarray] = {}
    for pos in range(len(tape) - 1, -1, -1):
        kind, op, saved = tape[pos]
        if kind in ("flatten", "gap"):
            shape = saved
            dy = dy.reshape(shape[0], shape[1], 1, 1)
            if kind == "gap":
                dy = np.broadcast_to(dy / (shape[2] * shape[3]), shape)
        elif kind == "relu":
            dy = dy * (saved > 0)
        elif kind == "dropout":
            dy = dy * saved if rounding is None else rounding.stored(dy * saved)
        elif kind == "pool":
            dy = max_pool_backward(saved, dy, kernel_size=op.kernel_size, stride=op.stride, padding=op.padding)
        elif kind == "bn":
            dy, grads[f"{op.name}.gamma"], grads[f"{op.name}.beta"] = _bn_backward(
                dy, w[f"{op.name}.gamma"], saved, rounding)
        elif kind == "conv":
            dy, grads[f"{op.name}.weight"], db = conv2d_backward(
                saved, w[f"{op.name}.weight"], dy, stride=op.stride, padding=op.padding, need_dx=pos > 0,
                rounding=rounding)
            if f"{op.name}.bias" in w:
                grads[f"{op.name}.bias"] = db
    return loss, grads


def sgd_step(weights: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], velocity: dict[str, np.ndarray], *,
             lr: float, momentum: float = 0.0, weight_decay: float = 0.0, rounding: Rounding | None = None) -> None:
    """In place, PyTorch's convention (Gluon's and optax's are the same for a constant lr):
    g += wd * w;  v = momentum * v + g;  w -= lr * v.  With rounding, weights are stored in its format."""
    for name, g in grads.items():
        g = g + weight_decay * weights[name]
        v = momentum * velocity[name] + g if name in velocity else g
        velocity[name] = v
        new = weights[name] - lr * v
        weights[name] = new if rounding is None else rounding.stored(new)


def _rate(lr, step: int) -> float:
    """A constant rate, or step `step`'s entry of a per-step table (the last entry past its end)."""
    if np.ndim(lr) == 0:
        return float(lr)
    return float(lr[min(step, len(lr) - 1)])


def train_trajectory(spec: NetSpec, weights: Mapping[str, np.ndarray], batches, *, lr,
                     momentum: float = 0.0, weight_decay: float = 0.0, dtype=np.float64,
                     rounding: Rounding | None = None):
    """Per-step losses and final weights of SGD on the given (images, labels) batches, dropout off;
    lr is a number or the rate of every step. The final weights' batch-norm statistics are the running
    ones the steps made; the unbiased running variance (PyTorch's convention) is added as
    "<bn>.running_var_unbiased"."""
    spec = spec.with_dropout(0.0)
    w = _cast(weights, dtype)
    running = {k: v.copy() for k, v in w.items() if k.endswith((".running_mean", ".running_var"))}
    running.update({k + "_unbiased": v.copy() for k, v in running.items() if k.endswith(".running_var")})
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for t, (images, labels) in enumerate(batches):
        loss, grads = loss_and_grads(spec, w, images, labels, dtype=dtype, rounding=rounding, running=running)
        losses.append(loss)
        sgd_step(w, grads, velocity, lr=_rate(lr, t), momentum=momentum, weight_decay=weight_decay,
                 rounding=rounding)
    return np.array(losses), {**w, **running}


def resize(images: np.ndarray, rows: np.ndarray, cols: np.ndarray, channels: int, *,
           rounding: Rounding | None = None) -> np.ndarray:
    """uint8 (N, 28, 28) -> (N, C, H, W): rows @ X @ cols^T, the grey repeated, as every training
    backend computes it on its device (two matmuls of 28 terms each)."""
    x = images.astype(np.float64)
    y = np.einsum("hi,nij->nhj", rows, x)
    if rounding is not None:
        y = rounding.sums(y, np.einsum("hi,nij->nhj", rows ** 2, x ** 2), x.shape[1])
    z = np.einsum("nhj,wj->nhw", y, cols)
    if rounding is not None:
        z = rounding.sums(z, np.einsum("nhj,wj->nhw", y ** 2, cols ** 2), x.shape[2])
    return np.repeat(z[:, None], channels, axis=1)


def evaluate(spec: NetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, labels: np.ndarray, *,
             batch_size: int, rounding: Rounding | None = None) -> float:
    """Mean cross-entropy in evaluation mode (running statistics, dropout off), batch by batch."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        logits = forward(spec, weights, images[start:start + batch_size], rounding=rounding)
        total += softmax_cross_entropy(logits, labels[start:start + batch_size]) * len(logits)
    return total / len(images)
