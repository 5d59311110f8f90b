"""NiN in PyTorch: nn.Sequential blocks built from a common.spec.NetSpec, NCHW as PyTorch is."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.spec import BatchNorm, Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from common.weights import check_shapes

FRAMEWORK = "torch"
RUNNING_VARIANCE = "unbiased"  # nn.BatchNorm2d keeps the unbiased batch variance (n / (n - 1))
HYPERPARAMETERS = "exact"  # optimizer and batch-norm settings are Python floats
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def nin_block(in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
              mlp: tuple[int, ...] = (), relu_last: bool = True, norm: BatchNorm | None = None) -> nn.Sequential:
    """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU."""
    convs = [(in_channels, out_channels, kernel_size, stride, padding)]
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
            raise RuntimeError("no GPU is visible to PyTorch (torch.cuda.is_available() is False)")
        return torch.device("cpu")
    return torch.device(device)


def build(spec: NetSpec, *, device: str | None = None, dtype: str = "float32", compiled: bool = False) -> nn.Sequential:
    """One top-level module per entry of spec.layers. compiled: the module's calls go through
    torch.compile (nn.Module.compile, in place: the module and its parameters stay as they are)."""
    layers: list[nn.Module] = []
    channels = spec.input_shape[0]
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            layers.append(nin_block(channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                    padding=layer.padding, mlp=layer.mlp, relu_last=layer.relu_last,
                                    norm=spec.norm(layer)))
            channels = layer.final_channels
        elif isinstance(layer, MaxPool):
            layers.append(nn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding))
        elif isinstance(layer, Dropout):
            layers.append(nn.Dropout(layer.rate))
        elif isinstance(layer, GlobalAvgPool):
            layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        elif isinstance(layer, Flatten):
            layers.append(nn.Flatten())
    model = nn.Sequential(*layers).to(device=default_device(device), dtype=DTYPES[dtype])
    if compiled:
        model.compile()
    return model


# --- canonical weights in and out ---------------------------------------------------------
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def canonical_tensors(model: nn.Sequential) -> dict[str, torch.Tensor]:
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
            for theirs, ours in BN_NAMES.items():
                out[f"block{b}.bn{j}.{ours}"] = getattr(bn, theirs)
    return out


def to_canonical(name: str, value: torch.Tensor) -> np.ndarray:
    """A parameter, buffer or gradient as canonical NumPy: PyTorch's layout is the canonical one."""
    return value.detach().cpu().numpy().copy()


def from_canonical(name: str, value) -> np.ndarray:
    return np.asarray(value)


def load_weights(model: nn.Sequential, weights, source: str = "weights") -> None:
    tensors = canonical_tensors(model)
    check_shapes({k: tuple(t.shape) for k, t in tensors.items()}, weights, source)
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(torch.as_tensor(from_canonical(name, weights[name])))  # copy_ casts to the model's dtype


def export_weights(model: nn.Sequential) -> dict[str, np.ndarray]:
    return {k: to_canonical(k, t) for k, t in canonical_tensors(model).items()}


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else default_device()


def to_input(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    """NCHW images as the model's input: on its device, in its dtype (a model without parameters
    keeps the images' own dtype)."""
    param = next(model.parameters(), None)
    return torch.as_tensor(images, device=device_of(model), dtype=param.dtype if param is not None else None)


def forward(model: nn.Sequential, images: np.ndarray, *, training: bool = False, seed: int = 0) -> np.ndarray:
    """Logits for NCHW images. training=True: dropout drops, batch norm uses batch statistics."""
    torch.manual_seed(seed)
    model.train(training)
    with torch.no_grad():
        return model(to_input(model, images)).cpu().numpy()


def layer_shapes(model: nn.Sequential, images: np.ndarray) -> list[tuple[int, ...]]:
    model.eval()
    x = to_input(model, images)
    shapes = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes
