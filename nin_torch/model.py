"""NiN in PyTorch: nn.Sequential blocks built from a common.spec.NetSpec, NCHW as PyTorch is."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import WeightsError, check_shapes

FRAMEWORK = "torch"


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None) -> nn.Sequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, strides, padding)]
    for c in mlp:
        convs.append((convs[-1][1], c, 1, 1, 0))
    layers: list[nn.Module] = []
    for j, (cin, cout, k, s, p) in enumerate(convs):
        layers.append(nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p, bias=norm is None))
        if norm is not None:
            layers.append(nn.BatchNorm2d(cout, eps=norm.eps, momentum=1 - norm.momentum))
        if j < len(convs) - 1 or relu_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def default_device(device: str | None = None) -> torch.device:
    """None: CUDA when PyTorch sees a GPU, else the CPU."""
    if device in (None, "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if device == "gpu":
            raise RuntimeError("device 'gpu' asked for, but torch.cuda.is_available() is False")
        return torch.device("cpu")
    return torch.device(device)


def build(spec: NetSpec, device: str | None = None) -> nn.Sequential:
    """One top-level module per entry of spec.layers."""
    layers: list[nn.Module] = []
    channels = spec.input_shape[0]
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            layers.append(nin_block(channels, layer.channels, layer.kernel, layer.stride, layer.padding,
                                    mlp=layer.mlp, relu_last=layer.relu_last, norm=spec.norm(layer)))
            channels = layer.out_channels
        elif isinstance(layer, MaxPool):
            layers.append(nn.MaxPool2d(layer.kernel, stride=layer.stride, padding=layer.padding))
        elif isinstance(layer, Dropout):
            layers.append(nn.Dropout(layer.rate))
        elif isinstance(layer, GlobalAvgPool):
            layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        elif isinstance(layer, Flatten):
            layers.append(nn.Flatten())
    return nn.Sequential(*layers).to(default_device(device))


# --- canonical weights in and out ---------------------------------------------------------
_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def _canonical_tensors(model: nn.Sequential) -> dict[str, torch.Tensor]:
    """Canonical name -> the model's own parameter or buffer (OIHW already: no conversion)."""
    out = {}
    blocks = [m for m in model if isinstance(m, nn.Sequential)]
    for b, block in enumerate(blocks):
        convs = [m for m in block if isinstance(m, nn.Conv2d)]
        norms = [m for m in block if isinstance(m, nn.BatchNorm2d)]
        for j, conv in enumerate(convs):
            out[f"block{b}.conv{j}.weight"] = conv.weight
            if conv.bias is not None:
                out[f"block{b}.conv{j}.bias"] = conv.bias
        for j, bn in enumerate(norms):
            for theirs, ours in _BN_NAMES.items():
                out[f"block{b}.bn{j}.{ours}"] = getattr(bn, theirs)
    return out


def load_weights(model: nn.Sequential, weights, source: str = "weights") -> None:
    tensors = _canonical_tensors(model)
    check_shapes({k: tuple(t.shape) for k, t in tensors.items()}, weights, source)
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(torch.as_tensor(np.asarray(weights[name], dtype=np.float32)))


def export_weights(model: nn.Sequential) -> dict[str, np.ndarray]:
    return {k: t.detach().float().cpu().numpy().copy() for k, t in _canonical_tensors(model).items()}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else default_device()


def forward(model: nn.Sequential, images: np.ndarray, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW float32 images. training=True: dropout drops, batch norm uses batch statistics."""
    torch.manual_seed(seed)
    model.train(training)
    with torch.no_grad():
        return model(torch.as_tensor(images, device=_device_of(model))).float().cpu().numpy()


def layer_shapes(model: nn.Sequential, images: np.ndarray) -> list[tuple[int, ...]]:
    model.eval()
    x = torch.as_tensor(images, device=_device_of(model))
    shapes = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes
