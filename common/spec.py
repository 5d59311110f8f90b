"""Network in Network as data: the one place where a channel count or a kernel size is written.

A network is a `NetSpec`: an input shape (C, H, W), a class count and a tuple of layers.
The layer kinds are the five the chapter's code uses:

    NiNBlock       k x k conv (stride, padding) then 1x1 convs, each conv followed by ReLU
                   (and, as an ablation, batch norm between conv and ReLU)
    MaxPool        k x k window, stride, zero padding (exact because its input is post-ReLU)
    Dropout        rate p; identity at evaluation
    GlobalAvgPool  mean over all remaining rows and columns
    Flatten        (C, 1, 1) -> (C,)

Every backend's `build(spec)` loops over `spec.layers` and writes its framework's own code.
`validate` (called by `NetSpec.__post_init__`) rejects a spec that cannot work with one
message that names the layer and the sizes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union


class SpecError(ValueError):
    """A network spec that cannot be built; the message names the layer and the sizes."""


@dataclass(frozen=True)
class BatchNorm:
    """What a backend needs to build one batch-norm layer; `NetSpec.norm(block)` hands it out."""
    eps: float
    momentum: float  # share of the running statistic kept per step (PyTorch's momentum = 1 - this)


@dataclass(frozen=True)
class NiNBlock:
    channels: int  # output channels of the k x k conv
    kernel: int
    stride: int
    padding: int
    mlp: tuple[int, ...]  # output channels of the 1x1 convs that follow it
    batch_norm: bool = False  # conv -> BN -> ReLU (the d2l-bn ablation)
    relu_last: bool = True  # the chapter's net ends in a ReLU; d2l-linear-head switches it off
    kind = "nin_block"

    @property
    def convs(self) -> tuple[tuple[int, int, int, int], ...]:
        """(out_channels, kernel, stride, padding) of each conv in the block, in order."""
        return ((self.channels, self.kernel, self.stride, self.padding),) + tuple(
            (c, 1, 1, 0) for c in self.mlp
        )

    @property
    def out_channels(self) -> int:
        return self.mlp[-1] if self.mlp else self.channels


@dataclass(frozen=True)
class MaxPool:
    kernel: int
    stride: int
    padding: int = 0  # zero padding: equals -inf padding only because the input is post-ReLU
    kind = "max_pool"


@dataclass(frozen=True)
class Dropout:
    rate: float
    kind = "dropout"


@dataclass(frozen=True)
class GlobalAvgPool:
    kind = "global_avg_pool"


@dataclass(frozen=True)
class Flatten:
    kind = "flatten"


Layer = Union[NiNBlock, MaxPool, Dropout, GlobalAvgPool, Flatten]
LAYER_TYPES: dict[str, type] = {t.kind: t for t in (NiNBlock, MaxPool, Dropout, GlobalAvgPool, Flatten)}


@dataclass(frozen=True)
class NetSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W); each backend converts to its own layout
    num_classes: int
    layers: tuple[Layer, ...]
    init: str = "xavier_uniform"  # the chapter asks for Xavier; see common.weights.INITIALIZERS
    init_std: float = 0.05  # used by init="normal" only: the paper's Gaussian std
    bn_eps: float = 1e-5  # pinned: Keras's default is 1e-3, the others' 1e-5
    bn_momentum: float = 0.9  # share of the running statistic kept per step (PyTorch momentum = 0.1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        validate(self)

    # --- views that every backend and the calculator use -------------------------------
    def blocks(self) -> Iterator[tuple[int, NiNBlock]]:
        """(block index, block) for the NiN blocks, in order: the index names their weights."""
        return enumerate(layer for layer in self.layers if isinstance(layer, NiNBlock))

    def conv_layers(self) -> Iterator[tuple[str, int, int, int, int, int]]:
        """(weight prefix, in_ch, out_ch, kernel, stride, padding) of every conv, in order."""
        in_ch = self.input_shape[0]
        for b, block in self.blocks():
            for j, (out_ch, k, s, p) in enumerate(block.convs):
                yield f"block{b}.conv{j}", in_ch, out_ch, k, s, p
                in_ch = out_ch

    def norm(self, block: NiNBlock) -> BatchNorm | None:
        """The batch-norm settings for a block's convs, or None when the block has none."""
        return BatchNorm(self.bn_eps, self.bn_momentum) if block.batch_norm else None

    def with_dropout(self, rate: float) -> "NetSpec":
        """The same network with every dropout rate replaced (0.0: dropout off for conformance)."""
        layers = tuple(Dropout(rate) if isinstance(l, Dropout) else l for l in self.layers)
        return dataclasses.replace(self, layers=layers)

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "layers"}
        out["input_shape"] = list(self.input_shape)
        out["layers"] = [{"type": l.kind, **_fields(l)} for l in self.layers]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict, source: str = "spec") -> "NetSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        missing = {"name", "input_shape", "num_classes", "layers"} - set(data)
        if missing:
            raise SpecError(f"{source}: missing field(s) {sorted(missing)}")
        if not isinstance(data["layers"], list):
            raise SpecError(f"{source}: 'layers' must be a list, got {type(data['layers']).__name__}")
        layers = [_layer_from_dict(i, d, source) for i, d in enumerate(data["layers"])]
        shape = data["input_shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3):
            raise SpecError(f"{source}: input_shape must be [C, H, W], got {shape!r}")
        kwargs = {**data, "layers": layers, "input_shape": tuple(shape)}
        try:
            return cls(**kwargs)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "NetSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"spec file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise SpecError(f"spec file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=str(path))


def _fields(layer: Layer) -> dict:
    d = dataclasses.asdict(layer)
    if "mlp" in d:
        d["mlp"] = list(d["mlp"])
    return d


def _layer_from_dict(i: int, d: dict, source: str) -> Layer:
    if not isinstance(d, dict) or "type" not in d:
        raise SpecError(f"{source}: layer {i} must be an object with a 'type', got {d!r}")
    kind = d["type"]
    if kind not in LAYER_TYPES:
        raise SpecError(f"{source}: layer {i} has unknown type {kind!r}; expected one of {sorted(LAYER_TYPES)}")
    cls = LAYER_TYPES[kind]
    args = {k: v for k, v in d.items() if k != "type"}
    names = {f.name for f in dataclasses.fields(cls)}
    if set(args) - names:
        raise SpecError(f"{source}: layer {i} ({kind}) has unknown field(s) {sorted(set(args) - names)}; "
                        f"expected {sorted(names)}")
    if "mlp" in args:
        if not isinstance(args["mlp"], list):
            raise SpecError(f"{source}: layer {i} ({kind}) field 'mlp' must be a list, got {args['mlp']!r}")
        args["mlp"] = tuple(args["mlp"])
    try:
        return cls(**args)
    except TypeError as e:
        raise SpecError(f"{source}: layer {i} ({kind}): {e}") from None


# --- validation --------------------------------------------------------------------------
def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")


def out_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """floor((n + 2p - k) / s) + 1: rows a window cannot fully cover are never visited."""
    return (n + 2 * padding - kernel) // stride + 1


def validate(spec: NetSpec) -> None:
    """Walk the spec as the calculator does and raise SpecError at the first layer that cannot work."""
    if not isinstance(spec.name, str) or not spec.name:
        raise SpecError(f"name must be a non-empty string, got {spec.name!r}")
    c, h, w = spec.input_shape
    for what, v in (("input channels", c), ("input height", h), ("input width", w)):
        _positive_int(v, f"{spec.name}: {what}")
    _positive_int(spec.num_classes, f"{spec.name}: num_classes")
    if spec.init not in ("xavier_uniform", "normal"):
        raise SpecError(f"{spec.name}: init must be 'xavier_uniform' or 'normal', got {spec.init!r}")
    if not spec.layers:
        raise SpecError(f"{spec.name}: a network needs at least one layer")
    flat = False
    post_relu = False  # padded max pooling is exact in every framework only on non-negative input
    for i, layer in enumerate(spec.layers):
        where = f"{spec.name}: layer {i} ({getattr(layer, 'kind', type(layer).__name__)})"
        if not isinstance(layer, tuple(LAYER_TYPES.values())):
            raise SpecError(f"{where}: unknown layer type {type(layer).__name__}; expected one of {sorted(LAYER_TYPES)}")
        if flat and not isinstance(layer, Dropout):
            raise SpecError(f"{where}: comes after flatten; only dropout may follow it")
        if isinstance(layer, NiNBlock):
            if not isinstance(layer.mlp, tuple):
                raise SpecError(f"{where}: mlp must be a tuple of channel counts, got {layer.mlp!r}")
            for j, (oc, k, s, p) in enumerate(layer.convs):
                conv = f"{where}, conv {j}"
                _positive_int(oc, f"{conv}: channel count")
                _positive_int(k, f"{conv}: kernel size")
                _positive_int(s, f"{conv}: stride")
                if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                    raise SpecError(f"{conv}: padding must be a non-negative integer, got {p!r}")
                oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
                if oh < 1 or ow < 1:
                    raise SpecError(f"{conv}: a {k}x{k} kernel (stride {s}, padding {p}) does not fit its "
                                    f"{c}x{h}x{w} input: the output would be {oc}x{oh}x{ow}")
                c, h, w = oc, oh, ow
            post_relu = layer.relu_last
        elif isinstance(layer, MaxPool):
            _positive_int(layer.kernel, f"{where}: kernel size")
            _positive_int(layer.stride, f"{where}: stride")
            if isinstance(layer.padding, bool) or not isinstance(layer.padding, int) or layer.padding < 0:
                raise SpecError(f"{where}: padding must be a non-negative integer, got {layer.padding!r}")
            if 2 * layer.padding > layer.kernel:
                raise SpecError(f"{where}: padding {layer.padding} is more than half the kernel {layer.kernel}")
            if layer.padding and not post_relu:
                raise SpecError(f"{where}: padding {layer.padding} needs a post-ReLU input (Keras pads with zeros, "
                                "the others with -inf; the two agree only on non-negative values)")
            oh, ow = (out_size(n, layer.kernel, layer.stride, layer.padding) for n in (h, w))
            if oh < 1 or ow < 1:
                raise SpecError(f"{where}: a {layer.kernel}x{layer.kernel} window (stride {layer.stride}, "
                                f"padding {layer.padding}) does not fit its {c}x{h}x{w} input: "
                                f"the output would be {c}x{oh}x{ow}")
            h, w = oh, ow
        elif isinstance(layer, Dropout):
            if isinstance(layer.rate, bool) or not isinstance(layer.rate, (int, float)) or not 0 <= layer.rate < 1:
                raise SpecError(f"{where}: rate must be in [0, 1), got {layer.rate!r}")
        elif isinstance(layer, GlobalAvgPool):
            h, w = 1, 1
        elif isinstance(layer, Flatten):
            if (h, w) != (1, 1):
                raise SpecError(f"{where}: flatten needs a {c}x1x1 input (add global_avg_pool first), got {c}x{h}x{w}")
            flat = True
    if not flat:
        raise SpecError(f"{spec.name}: the network must end with flatten (after global_avg_pool), "
                        f"but its output is {c}x{h}x{w}")
    if c != spec.num_classes:
        raise SpecError(f"{spec.name}: the network ends with {c} features but num_classes is {spec.num_classes}")


# --- the named variants ------------------------------------------------------------------
def _d2l(name: str, last_block: NiNBlock | None = None, mlp_len: int = 2, **block_kw) -> NetSpec:
    """The chapter's network; the ablations change one thing each."""
    def mlp(c: int) -> tuple[int, ...]:
        return (c,) * mlp_len

    pool = MaxPool(kernel=3, stride=2)
    return NetSpec(
        name=name,
        input_shape=(1, 224, 224),  # Fashion-MNIST resized, as in the chapter
        num_classes=10,
        layers=(
            NiNBlock(96, kernel=11, stride=4, padding=0, mlp=mlp(96), **block_kw), pool,
            NiNBlock(256, kernel=5, stride=1, padding=2, mlp=mlp(256), **block_kw), pool,
            NiNBlock(384, kernel=3, stride=1, padding=1, mlp=mlp(384), **block_kw), pool,
            Dropout(0.5),
            last_block or NiNBlock(10, kernel=3, stride=1, padding=1, mlp=mlp(10), **block_kw),
            GlobalAvgPool(), Flatten(),
        ),
    )


def _paper() -> NetSpec:
    """Lin et al.'s CIFAR-10 NiN. Caffe's pools round up (32 -> 16 -> 8); padding 1 does the same here.
    Dropout follows every mlpconv layer but the last, as the paper says."""
    pool = MaxPool(kernel=3, stride=2, padding=1)
    return NetSpec(
        name="paper",
        input_shape=(3, 32, 32),
        num_classes=10,
        layers=(
            NiNBlock(192, kernel=5, stride=1, padding=2, mlp=(160, 96)), pool, Dropout(0.5),
            NiNBlock(192, kernel=5, stride=1, padding=2, mlp=(192, 192)), pool, Dropout(0.5),
            NiNBlock(192, kernel=3, stride=1, padding=1, mlp=(192, 10)),
            GlobalAvgPool(), Flatten(),  # over the remaining 8x8
        ),
        init="normal",
        init_std=0.05,  # the authors' Gaussian init
    )


VARIANTS = {
    "d2l": lambda: _d2l("d2l"),
    "paper": _paper,
    # Exercise 2: one 1x1 conv per block instead of two.
    "d2l-single-1x1": lambda: _d2l("d2l-single-1x1", mlp_len=1),
    # Exercise 4: 384 -> 10 in three steps (3x3 to 128, 1x1 to 32, 1x1 to 10) instead of one.
    "d2l-gradual": lambda: _d2l("d2l-gradual", last_block=NiNBlock(128, kernel=3, stride=1, padding=1, mlp=(32, 10))),
    # The chapter's net without the ReLU after its last conv: logits may be negative.
    "d2l-linear-head": lambda: _d2l(
        "d2l-linear-head", last_block=NiNBlock(10, kernel=3, stride=1, padding=1, mlp=(10, 10), relu_last=False)),
    # Batch normalisation between every conv and its ReLU.
    "d2l-bn": lambda: _d2l("d2l-bn", batch_norm=True),
}


def get(name: str) -> NetSpec:
    """A named variant, or a spec read from a JSON file when `name` ends in .json."""
    if str(name).endswith(".json"):
        return NetSpec.from_json_file(name)
    if name not in VARIANTS:
        raise SpecError(f"unknown variant {name!r}; expected one of {sorted(VARIANTS)} or a .json spec file")
    return VARIANTS[name]()


# --- training recipes --------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """What a training run needs besides the network. Defaults are the chapter's recipe."""
    lr: float = 0.05  # the book's current value: 0.1 often kills the final ReLU (see DESIGN.md)
    momentum: float = 0.0  # the chapter uses plain SGD
    weight_decay: float = 0.0  # coupled L2, as PyTorch/Gluon/optax add_decayed_weights apply it
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    resize: int = 224  # Fashion-MNIST's 28x28 resized to the spec's input
    train_limit: int | None = None  # use only the first N training images (quick runs); None = all
    test_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "epochs"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise SpecError(f"train config: {name} must be positive, got {v!r}")
        if not 0 <= self.momentum < 1:
            raise SpecError(f"train config: momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise SpecError(f"train config: weight_decay must be >= 0, got {self.weight_decay!r}")


RECIPES = {
    "paper": TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, resize=32),  # the authors' CIFAR solver
}


def recipe(variant: str) -> TrainConfig:
    return RECIPES.get(variant, TrainConfig())
