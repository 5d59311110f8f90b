"""NiN in MXNet Gluon: nn.HybridSequential blocks built from a common.spec.NetSpec, NCHW as MXNet is."""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import check_shapes

FRAMEWORK = "mxnet"
RUNNING_VARIANCE = "biased"  # Gluon's BatchNorm keeps the biased batch variance
HYPERPARAMETERS = "float32"  # its BatchNorm kernel takes the running statistics' momentum as a float32


def nin_block(in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None) -> nn.HybridSequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, stride, padding)]
    for c in mlp:
        convs.append((convs[-1][1], c, 1, 1, 0))
    blk = nn.HybridSequential()
    for j, (cin, cout, k, s, p) in enumerate(convs):
        relu = j < len(convs) - 1 or relu_last
        if norm is None:  # the chapter's form: the ReLU is the conv's activation
            blk.add(nn.Conv2D(cout, kernel_size=k, strides=s, padding=p, in_channels=cin,
                              activation="relu" if relu else None))
        else:
            blk.add(nn.Conv2D(cout, kernel_size=k, strides=s, padding=p, in_channels=cin, use_bias=False),
                    nn.BatchNorm(momentum=norm.momentum, epsilon=norm.eps, in_channels=cout))
            if relu:
                blk.add(nn.Activation("relu"))
    return blk


def default_device(device: str | None = None) -> mx.Context:
    """None: the GPU when MXNet sees one, else the CPU."""
    if device in (None, "gpu"):
        if mx.context.num_gpus() > 0:
            return mx.gpu()
        if device == "gpu":
            raise RuntimeError("no GPU is visible to MXNet (mx.context.num_gpus() is 0)")
        return mx.cpu()
    if device == "cpu":
        return mx.cpu()
    raise ValueError(f"device must be 'cpu', 'gpu' or None, got {device!r}")


def build(spec: NetSpec, *, device: str | None = None, dtype: str = "float32",
          compiled: bool = False) -> nn.HybridSequential:
    """One top-level block per entry of spec.layers, initialised on the device. compiled: hybridize()
    (Gluon's compiler: one cached graph); otherwise the block runs imperatively."""
    net = nn.HybridSequential()
    channels = spec.input_shape[0]
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            net.add(nin_block(channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, mlp=layer.mlp, relu_last=layer.relu_last,
                              norm=spec.norm(layer)))
            channels = layer.final_channels
        elif isinstance(layer, MaxPool):
            net.add(nn.MaxPool2D(pool_size=layer.kernel_size, strides=layer.stride, padding=layer.padding))
        elif isinstance(layer, Dropout):
            net.add(nn.Dropout(layer.rate))
        elif isinstance(layer, GlobalAvgPool):
            net.add(nn.GlobalAvgPool2D())
        elif isinstance(layer, Flatten):
            net.add(nn.Flatten())
    net.initialize(mx.init.Xavier(), ctx=default_device(device))  # in_channels given: no deferred init
    if dtype != "float32":
        net.cast(dtype)
    if compiled:
        net.hybridize()
    return net


# --- canonical weights in and out ---------------------------------------------------------
BN_NAMES = ("gamma", "beta", "running_mean", "running_var")  # Gluon's names are the canonical ones


def canonical_tensors(model: nn.HybridSequential) -> dict[str, mx.gluon.Parameter]:
    """Canonical name -> the model's own Parameter (OIHW already: no conversion)."""
    out = {}
    blocks = [m for m in model if isinstance(m, nn.HybridSequential)]
    for b, block in enumerate(blocks):
        convs = [m for m in block if isinstance(m, nn.Conv2D)]
        norms = [m for m in block if isinstance(m, nn.BatchNorm)]
        for j, conv in enumerate(convs):
            out[f"block{b}.conv{j}.weight"] = conv.weight
            if conv.bias is not None:
                out[f"block{b}.conv{j}.bias"] = conv.bias
        for j, bn in enumerate(norms):
            for name in BN_NAMES:
                out[f"block{b}.bn{j}.{name}"] = getattr(bn, name)
    return out


def to_canonical(name: str, value: mx.nd.NDArray) -> np.ndarray:
    """A parameter's data or gradient as canonical NumPy: Gluon's layout is the canonical one."""
    return value.asnumpy()


def from_canonical(name: str, value) -> np.ndarray:
    return np.asarray(value)


def load_weights(model: nn.HybridSequential, weights, source: str = "weights") -> None:
    params = canonical_tensors(model)
    check_shapes({k: p.shape for k, p in params.items()}, weights, source)
    for name, p in params.items():
        p.set_data(mx.nd.array(from_canonical(name, weights[name]), dtype=p.dtype))


def export_weights(model: nn.HybridSequential) -> dict[str, np.ndarray]:
    return {k: to_canonical(k, p.data()) for k, p in canonical_tensors(model).items()}


def device_of(model: nn.Block) -> mx.Context:
    params = list(model.collect_params().values())
    return params[0].list_ctx()[0] if params else default_device()


def to_input(model: nn.Block, images: np.ndarray) -> mx.nd.NDArray:
    """NCHW images as the model's input: on its device, in its dtype."""
    params = list(model.collect_params().values())
    dtype = params[0].dtype if params else np.asarray(images).dtype  # no parameters: the images' own dtype
    return mx.nd.array(images, ctx=device_of(model), dtype=dtype)


def forward(model: nn.HybridSequential, images: np.ndarray, *, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW images. training=True: dropout drops, batch norm uses batch statistics
    (Gluon updates the running statistics in the backward pass, so a forward alone leaves them)."""
    mx.random.seed(seed)
    x = to_input(model, images)
    with autograd.train_mode() if training else autograd.predict_mode():
        return model(x).asnumpy()


def layer_shapes(model: nn.HybridSequential, images: np.ndarray) -> list[tuple[int, ...]]:
    x = to_input(model, images)
    shapes = []
    with autograd.predict_mode():
        for layer in model:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes
