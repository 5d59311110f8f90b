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
`walk(spec)` is the one loop that follows the sizes through a spec: validation, the calculator
and the reference read the network through it. A spec that cannot work is rejected with one
message that names the field (`layers[3].padding`) or the layer and its sizes. JSON is checked
first against the pydantic models SpecJSON and its layers' (below; common/schema.py words their
errors), then built and followed through its sizes as a spec written in Python is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, Strict

from . import schema

# Bounds on what a spec may ask for: a spec is input, and input must not ask for days of work.
MAX_SIZE = 4096  # input height / width
MAX_CHANNELS = 65536
MAX_LAYERS = 256
MAX_KERNEL = 64
MAX_CONVS = 1024  # convolutions in one network (the chapter's has 12): a framework builds each one
MAX_SPEC_BYTES = 1_000_000  # a spec is a few kB
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


class SpecError(ValueError):
    """A network spec that cannot be built; the message names the field or the layer and the sizes."""


@dataclass(frozen=True)
class BatchNorm:
    """What a backend needs to build one batch-norm layer; `NetSpec.norm(block)` hands it out."""
    eps: float
    momentum: float  # share of the running statistic kept per step (PyTorch's momentum = 1 - this)


@dataclass(frozen=True)
class NiNBlock:
    out_channels: int  # of the k x k conv (the chapter's nin_block argument)
    kernel_size: int
    stride: int
    padding: int
    mlp: tuple[int, ...]  # out_channels of the 1x1 convs that follow it
    batch_norm: bool = False  # conv -> BN -> ReLU (the d2l-bn ablation)
    relu_last: bool = True  # the chapter's net ends in a ReLU; d2l-linear-head switches it off
    kind = "nin_block"

    @property
    def convs(self) -> tuple[tuple[int, int, int, int], ...]:
        """(out_channels, kernel_size, stride, padding) of each conv in the block, in order."""
        return ((self.out_channels, self.kernel_size, self.stride, self.padding),) + tuple(
            (c, 1, 1, 0) for c in self.mlp)

    @property
    def final_channels(self) -> int:
        """Channels that leave the block: the last 1x1 conv's, or the k x k conv's when there is none."""
        return self.mlp[-1] if self.mlp else self.out_channels


@dataclass(frozen=True)
class MaxPool:
    kernel_size: int
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


Layer = NiNBlock | MaxPool | Dropout | GlobalAvgPool | Flatten
LAYER_TYPES: dict[str, type] = {t.kind: t for t in (NiNBlock, MaxPool, Dropout, GlobalAvgPool, Flatten)}
INITS = ("xavier_uniform", "normal")


@dataclass(frozen=True)
class NetSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W); each backend converts to its own layout
    num_classes: int
    layers: tuple[Layer, ...]
    init: str = "xavier_uniform"  # the chapter asks for Xavier; see common.weights.init
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
        """(weight prefix, in_channels, out_channels, kernel_size, stride, padding) of every conv."""
        for op in walk(self):
            if op.kind == "conv":
                yield op.name, op.in_shape[0], op.out_shape[0], op.kernel_size, op.stride, op.padding

    def norm(self, block: NiNBlock) -> BatchNorm | None:
        """The batch-norm settings for a block's convs, or None when the block has none."""
        return BatchNorm(self.bn_eps, self.bn_momentum) if block.batch_norm else None

    def with_dropout(self, rate: float) -> NetSpec:
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
    def from_dict(cls, data, source: str = "spec") -> NetSpec:
        """Check the JSON against its schema first (SpecJSON: every field's type and range, the message
        names the field's path), then build the spec, which follows the sizes (validate)."""
        fields = schema.check(SpecJSON, data, source=source, error=SpecError, tags=LAYER_TYPES).model_dump(
            exclude_unset=True)  # a field left out takes the dataclass's default
        fields["input_shape"] = tuple(fields["input_shape"])
        fields["layers"] = tuple(_layer(layer) for layer in fields["layers"])
        try:
            return cls(**fields)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> NetSpec:
        path = Path(path)
        try:
            if path.is_dir():
                raise SpecError(f"spec file {path} is a directory, not a JSON file")
            if path.exists() and not path.is_file():
                raise SpecError(f"spec file {path} is not a regular file")
            if path.exists() and path.stat().st_size > MAX_SPEC_BYTES:
                raise SpecError(f"spec file {path}: {path.stat().st_size:,} bytes, more than a spec's "
                                f"{MAX_SPEC_BYTES:,}: not a spec")
            text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is allowed
        except FileNotFoundError:
            raise SpecError(f"spec file {path} does not exist") from None
        except UnicodeDecodeError as e:
            raise SpecError(f"spec file {path} is not UTF-8 text (byte {e.start}): not a JSON spec") from None
        except OSError as e:
            raise SpecError(f"spec file {path} cannot be read: {e.strerror or e}") from None
        return cls.from_dict(loads(text, f"spec file {path}"), source=str(path))


def _fields(layer: Layer) -> dict:
    d = dataclasses.asdict(layer)
    if "mlp" in d:
        d["mlp"] = list(d["mlp"])
    return d


# --- the schema of a spec's JSON: pydantic models (common/schema.py words their errors) ----------
def _good_name(value) -> bool:
    """A spec's name names files (caches, records' tensors) and table columns: letters, digits, . _ + -."""
    return (isinstance(value, str) and 0 < len(value) <= 100 and not value.startswith(".")
            and set(value) <= NAME_CHARACTERS)


NAME_WORDS = "a non-empty string of at most 100 letters, digits and . _ + - (not first a dot)"


def _at_most(limit: int, words: Callable[[int], str]) -> BeforeValidator:
    """A list refused by its length alone, before its entries are read (a spec is input: it must not ask
    for minutes of checking)."""
    def count(value):
        if isinstance(value, list) and len(value) > limit:
            raise schema.MessageError(words(len(value)))
        return value
    return BeforeValidator(count)


NAME = schema.expect(Annotated[str, Strict()], NAME_WORDS, accept=lambda v: not isinstance(v, str) or _good_name(v))
CHANNELS = schema.integer(1, MAX_CHANNELS)
SIZE = schema.integer(1, MAX_SIZE)
KERNEL = schema.integer(1, MAX_KERNEL)
PADDING = schema.integer(0, MAX_KERNEL)
SHAPE = schema.expect(Annotated[tuple[CHANNELS, SIZE, SIZE], Strict(False)], "[C, H, W]",
                      accept=lambda v: isinstance(v, list) and len(v) == 3)
MLP = Annotated[schema.expect(list[CHANNELS], "a list of channel counts"), _at_most(
    MAX_CONVS - 1, lambda n: f"{n:,} 1x1 convs; a network may have at most {MAX_CONVS} convs")]


class NiNBlockJSON(schema.Schema):
    type: Literal["nin_block"]
    out_channels: CHANNELS
    kernel_size: KERNEL
    stride: SIZE
    padding: PADDING
    mlp: MLP
    batch_norm: schema.BOOLEAN = None  # None here: absent, the dataclass's default
    relu_last: schema.BOOLEAN = None


class MaxPoolJSON(schema.Schema):
    type: Literal["max_pool"]
    kernel_size: KERNEL
    stride: SIZE
    padding: PADDING = None


class DropoutJSON(schema.Schema):
    type: Literal["dropout"]
    rate: schema.number(0.0, 1.0, high_open=True)


class GlobalAvgPoolJSON(schema.Schema):
    type: Literal["global_avg_pool"]


class FlattenJSON(schema.Schema):
    type: Literal["flatten"]


LAYER = schema.expect(Annotated[NiNBlockJSON | MaxPoolJSON | DropoutJSON | GlobalAvgPoolJSON | FlattenJSON,
                                Field(discriminator="type")],
                      "an object with a 'type'", accept=lambda v: isinstance(v, dict) and "type" in v)


class SpecJSON(schema.Schema):
    """A spec as JSON (NetSpec.to_dict's form); the bounds are MAX_* above."""
    expected: ClassVar[str] = "a JSON object (the spec)"
    name: NAME
    input_shape: SHAPE
    num_classes: CHANNELS
    layers: Annotated[schema.expect(list[LAYER], "a list of layer objects"), _at_most(
        MAX_LAYERS, lambda n: f"{n} layers, at most {MAX_LAYERS} are allowed")]
    init: schema.one_of(INITS) = None
    init_std: schema.number(0.0, 10.0, low_open=True) = None
    bn_eps: schema.number(0.0, 1.0, low_open=True) = None
    bn_momentum: schema.number(0.0, 1.0) = None


def _layer(fields: dict) -> Layer:
    """A layer's dataclass from its checked JSON fields."""
    fields = dict(fields)
    kind = fields.pop("type")
    if "mlp" in fields:
        fields["mlp"] = tuple(fields["mlp"])
    return LAYER_TYPES[kind](**fields)


# --- reading JSON ----------------------------------------------------------------------------
def _unique_keys(pairs: list) -> dict:
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise SpecError(f"field {k!r} is given twice")
        seen[k] = v
    return seen


def loads(text: str, where: str):
    """JSON as a spec or a record's metadata is read: a duplicated field, a number too large to be
    one (Python refuses integers of more than 4300 digits), or nesting too deep for a parser to
    follow is a SpecError that names `where`, never a traceback."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise SpecError(f"{where} is nested too deeply to read") from None
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise SpecError(f"{where} holds a number too large to read: {str(e).split(';')[0]}") from None


def finite(value) -> bool:
    """A real number (not a boolean) that is finite as a float: an integer of hundreds of digits is
    not (math.isfinite would raise OverflowError for it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


# --- the one walk through a spec's sizes -------------------------------------------------------
def out_size(n: int, kernel_size: int, stride: int, padding: int) -> int:
    """floor((n + 2p - k) / s) + 1: rows a window cannot fully cover are never visited."""
    return (n + 2 * padding - kernel_size) // stride + 1


@dataclass(frozen=True)
class Op:
    """One operation of the forward pass, with the sizes around it. `index` is its entry in spec.layers."""
    index: int
    kind: str  # conv, batch_norm, relu, max_pool, dropout, global_avg_pool, flatten
    name: str  # block0.conv1, block0.bn1, block0.relu1, pool0, dropout0, gap0, flatten0
    in_shape: tuple[int, ...]  # (C, H, W), or (C,) after flatten
    out_shape: tuple[int, ...]
    kernel_size: int = 0
    stride: int = 0
    padding: int = 0


def walk(spec: NetSpec) -> Iterator[Op]:
    """Every operation of one forward pass, in order, with its input and output shape. Raises
    SpecError at the first operation whose window does not fit (its output would be empty)."""
    shape: tuple[int, ...] = tuple(spec.input_shape)
    counts = {"pool": 0, "dropout": 0, "gap": 0, "flatten": 0}
    b = 0
    for i, layer in enumerate(spec.layers):
        where = f"layer {i} ({layer.kind})"
        if isinstance(layer, NiNBlock):
            convs = layer.convs  # once per block: a property that builds a tuple (a walk stays linear)
            for j, (oc, k, s, p) in enumerate(convs):
                c, h, w = shape
                oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
                if oh < 1 or ow < 1:
                    raise SpecError(f"{spec.name}: {where}, conv {j}: a {k}x{k} kernel (stride {s}, padding {p}) "
                                    f"does not fit its {c}x{h}x{w} input: the output would be {oc}x{oh}x{ow}")
                out = (oc, oh, ow)
                yield Op(i, "conv", f"block{b}.conv{j}", shape, out, k, s, p)
                if layer.batch_norm:
                    yield Op(i, "batch_norm", f"block{b}.bn{j}", out, out)
                if j < len(convs) - 1 or layer.relu_last:
                    yield Op(i, "relu", f"block{b}.relu{j}", out, out)
                shape = out
            b += 1
        elif isinstance(layer, MaxPool):
            c, h, w = shape
            k, s, p = layer.kernel_size, layer.stride, layer.padding
            oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
            if oh < 1 or ow < 1:
                raise SpecError(f"{spec.name}: {where}: a {k}x{k} window (stride {s}, padding {p}) does not fit "
                                f"its {c}x{h}x{w} input: the output would be {c}x{oh}x{ow}")
            yield Op(i, "max_pool", f"pool{counts['pool']}", shape, (c, oh, ow), k, s, p)
            counts["pool"] += 1
            shape = (c, oh, ow)
        elif isinstance(layer, Dropout):
            yield Op(i, "dropout", f"dropout{counts['dropout']}", shape, shape)
            counts["dropout"] += 1
        elif isinstance(layer, GlobalAvgPool):
            yield Op(i, "global_avg_pool", f"gap{counts['gap']}", shape, (shape[0], 1, 1))
            counts["gap"] += 1
            shape = (shape[0], 1, 1)
        elif isinstance(layer, Flatten):
            yield Op(i, "flatten", f"flatten{counts['flatten']}", shape, (shape[0],))
            counts["flatten"] += 1
            shape = (shape[0],)


# --- validation --------------------------------------------------------------------------
def _positive_int(value, what: str, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise SpecError(f"{what} must be an integer from 1 to {high}, got {value!r}")


def _check_layer(layer, where: str) -> None:
    """Types and ranges of one layer built in Python (from_dict has checked JSON already)."""
    if not isinstance(layer, tuple(LAYER_TYPES.values())):
        raise SpecError(f"{where}: unknown layer type {type(layer).__name__}; expected one of {sorted(LAYER_TYPES)}")
    if isinstance(layer, NiNBlock):
        if not isinstance(layer.mlp, tuple):
            raise SpecError(f"{where}: mlp must be a tuple of channel counts, got {layer.mlp!r}")
        for flag in ("batch_norm", "relu_last"):
            if not isinstance(getattr(layer, flag), bool):
                raise SpecError(f"{where}: {flag} must be True or False, got {getattr(layer, flag)!r}")
        for j, (oc, k, s, p) in enumerate(layer.convs):
            conv = f"{where}, conv {j}"
            _positive_int(oc, f"{conv}: out_channels", MAX_CHANNELS)
            _positive_int(k, f"{conv}: kernel_size", MAX_KERNEL)
            _positive_int(s, f"{conv}: stride", MAX_SIZE)
            if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                raise SpecError(f"{conv}: padding must be a non-negative integer, got {p!r}")
            if 2 * p > k:
                raise SpecError(f"{conv}: padding {p} is more than half the kernel_size {k}: "
                                "outputs would see only padding")
    elif isinstance(layer, MaxPool):
        _positive_int(layer.kernel_size, f"{where}: kernel_size", MAX_KERNEL)
        _positive_int(layer.stride, f"{where}: stride", MAX_SIZE)
        if isinstance(layer.padding, bool) or not isinstance(layer.padding, int) or layer.padding < 0:
            raise SpecError(f"{where}: padding must be a non-negative integer, got {layer.padding!r}")
        if 2 * layer.padding > layer.kernel_size:
            raise SpecError(f"{where}: padding {layer.padding} is more than half the kernel_size {layer.kernel_size}")
    elif isinstance(layer, Dropout):
        rate = layer.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise SpecError(f"{where}: rate must be in [0, 1), got {rate!r}")


def validate(spec: NetSpec) -> None:
    """Types and ranges of every field, then the walk through the sizes; raise SpecError at the
    first thing that cannot work."""
    if not isinstance(spec.name, str) or not spec.name:
        raise SpecError(f"name must be a non-empty string, got {spec.name!r}")
    if not _good_name(spec.name):
        raise SpecError(f"name: expected {NAME_WORDS}, got {spec.name!r}")
    if len(spec.input_shape) != 3:
        raise SpecError(f"{spec.name}: input_shape must be (C, H, W), got {spec.input_shape!r}")
    c, h, w = spec.input_shape
    _positive_int(c, f"{spec.name}: input channels", MAX_CHANNELS)
    _positive_int(h, f"{spec.name}: input height", MAX_SIZE)
    _positive_int(w, f"{spec.name}: input width", MAX_SIZE)
    _positive_int(spec.num_classes, f"{spec.name}: num_classes", MAX_CHANNELS)
    if spec.init not in INITS:
        raise SpecError(f"{spec.name}: init must be one of {list(INITS)}, got {spec.init!r}")
    for field, low, high in (("init_std", 0.0, 10.0), ("bn_eps", 0.0, 1.0), ("bn_momentum", -1e-300, 1.0)):
        v = getattr(spec, field)
        if not finite(v) or not low < v <= high:
            raise SpecError(f"{spec.name}: {field} must be a number in ({max(low, 0):g}, {high:g}], got {v!r}")
    if not spec.layers:
        raise SpecError(f"{spec.name}: a network needs at least one layer")
    if len(spec.layers) > MAX_LAYERS:
        raise SpecError(f"{spec.name}: {len(spec.layers)} layers, at most {MAX_LAYERS} are allowed")
    convs = sum(1 + len(layer.mlp) for layer in spec.layers if isinstance(layer, NiNBlock)
                and isinstance(layer.mlp, tuple))
    if convs > MAX_CONVS:
        raise SpecError(f"{spec.name}: {convs:,} convs, at most {MAX_CONVS} are allowed")
    flat = False
    post_relu = False  # padded max pooling is exact in every framework only on non-negative input
    for i, layer in enumerate(spec.layers):
        where = f"{spec.name}: layer {i} ({getattr(layer, 'kind', type(layer).__name__)})"
        _check_layer(layer, where)
        if flat and not isinstance(layer, Dropout):
            raise SpecError(f"{where}: comes after flatten; only dropout may follow it")
        if isinstance(layer, NiNBlock):
            post_relu = layer.relu_last
        elif isinstance(layer, MaxPool) and layer.padding and not post_relu:
            raise SpecError(f"{where}: padding {layer.padding} needs a post-ReLU input (Keras pads with zeros, "
                            "the others with -inf; the two agree only on non-negative values)")
        elif isinstance(layer, Flatten):
            flat = True
    shape = tuple(spec.input_shape)
    for op in walk(spec):
        if op.kind == "flatten" and op.in_shape[1:] != (1, 1):
            c, h, w = op.in_shape
            raise SpecError(f"{spec.name}: layer {op.index} (flatten): flatten needs a {c}x1x1 input "
                            f"(add global_avg_pool first), got {c}x{h}x{w}")
        shape = op.out_shape
    if not flat:
        raise SpecError(f"{spec.name}: the network must end with flatten (after global_avg_pool), "
                        f"but its output is {'x'.join(map(str, shape))}")
    if shape[0] != spec.num_classes:
        raise SpecError(f"{spec.name}: the network ends with {shape[0]} features but num_classes is {spec.num_classes}")


# --- the named variants ------------------------------------------------------------------
def _d2l(name: str, last_block: NiNBlock | None = None, mlp_len: int = 2, **block_kw) -> NetSpec:
    """The chapter's network; the ablations change one thing each."""
    def mlp(c: int) -> tuple[int, ...]:
        return (c,) * mlp_len

    pool = MaxPool(kernel_size=3, stride=2)
    return NetSpec(
        name=name,
        input_shape=(1, 224, 224),  # Fashion-MNIST resized, as in the chapter
        num_classes=10,
        layers=(
            NiNBlock(96, kernel_size=11, stride=4, padding=0, mlp=mlp(96), **block_kw), pool,
            NiNBlock(256, kernel_size=5, stride=1, padding=2, mlp=mlp(256), **block_kw), pool,
            NiNBlock(384, kernel_size=3, stride=1, padding=1, mlp=mlp(384), **block_kw), pool,
            Dropout(0.5),
            last_block or NiNBlock(10, kernel_size=3, stride=1, padding=1, mlp=mlp(10), **block_kw),
            GlobalAvgPool(), Flatten(),
        ),
    )


def _paper() -> NetSpec:
    """Lin et al.'s CIFAR-10 NiN. Caffe's pools round up (32 -> 16 -> 8); padding 1 does the same here.
    Dropout follows every mlpconv layer but the last, as the paper says."""
    pool = MaxPool(kernel_size=3, stride=2, padding=1)
    return NetSpec(
        name="paper",
        input_shape=(3, 32, 32),
        num_classes=10,
        layers=(
            NiNBlock(192, kernel_size=5, stride=1, padding=2, mlp=(160, 96)), pool, Dropout(0.5),
            NiNBlock(192, kernel_size=5, stride=1, padding=2, mlp=(192, 192)), pool, Dropout(0.5),
            NiNBlock(192, kernel_size=3, stride=1, padding=1, mlp=(192, 10)),
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
    "d2l-gradual": lambda: _d2l("d2l-gradual", last_block=NiNBlock(128, kernel_size=3, stride=1, padding=1,
                                                                    mlp=(32, 10))),
    # The chapter's net without the ReLU after its last conv: logits may be negative.
    "d2l-linear-head": lambda: _d2l("d2l-linear-head", last_block=NiNBlock(10, kernel_size=3, stride=1, padding=1,
                                                                            mlp=(10, 10), relu_last=False)),
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
