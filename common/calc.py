"""Shapes, parameters, multiply-accumulates and memory of a NetSpec: the chapter's exercise 3, exactly.

Conventions (stated so that every number can be checked by hand):

* Output size is floor((n + 2p - k) / s) + 1. The chapter's first conv, 11x11 stride 4 on 224:
  (224 - 11) / 4 = 53.25, floor 53, plus 1 = 54. The last 224 - (53 * 4 + 11) = 1 row and column
  are never covered by a window: nothing is cropped at random, the window simply cannot fit.
* `macs` counts the multiply-accumulates of convolutions (and dense layers, of which NiN has none)
  in one forward pass of ONE input: C_out * H_out * W_out * C_in * k * k. This is the convention of
  fvcore and torchinfo. Pooling, ReLU, batch norm and the global average are not MACs; pooling's
  comparisons and adds are reported separately as `other_ops`.
* FLOPs = 2 * MACs. One training step costs 3x the forward FLOPs (forward, plus backward for the
  inputs and for the weights), the usual MFU convention (Kaplan et al.; nanoGPT).
* Activations are counted per stored tensor, per input, in elements: each conv output, each
  batch-norm output, each ReLU output (not in place), each pool, dropout and global-average output.
  Flatten is a view and stores nothing.
* Training memory = weights + gradients + optimizer state (one momentum buffer per weight when
  momentum is used) + every activation above and the input, kept for backward (+ the dropout masks,
  one byte per element). Inference memory = weights + the largest (input, output) pair of
  consecutive tensors: all a forward pass needs alive at once.
  Frameworks add workspace, allocator rounding and fused-kernel savings on top: the benchmarks
  set the measured peak beside this figure.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .spec import NetSpec, walk

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


class CostError(ValueError):
    """Work or memory that a command would need past its limit, found from the spec and the flags
    before any worker starts; the message names the spec or flag, the estimate and the limit."""


def size_text(n: int) -> str:
    """Bytes for people: 3.2 TiB, 17.5 GiB, 12.0 MiB."""
    for unit, scale in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


MEMORY_LIMIT_VARIABLE = "NIN_MEMORY_LIMIT"


def host_memory() -> int:
    """Bytes of memory this machine's processes may use: its own, or its container's (cgroup v2
    memory.max, v1 memory.limit_in_bytes) when that is smaller."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        total = 2 ** 62
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_limit(device: tuple[int, str] | None = None) -> tuple[int, str]:
    """(bytes, what they are) that a computation may count on: $NIN_MEMORY_LIMIT when set (bytes: a
    machine with swap, or a test), else `device` (a GPU's memory and its name) when given, else the
    host's (host_memory). A bad $NIN_MEMORY_LIMIT is a CostError naming it."""
    text = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if text:
        if not (text.isascii() and text.isdigit() and len(text) < 25 and int(text) > 0):
            raise CostError(f"{MEMORY_LIMIT_VARIABLE}: expected a number of bytes > 0, got {text!r}")
        return int(text), f"that {MEMORY_LIMIT_VARIABLE} allows"
    return device or (host_memory(), "of this machine")


def check_memory(need: int, *, what: str, limit: tuple[int, str] | None = None) -> None:
    """CostError when `need` bytes (an estimate from this module: a lower bound, as the frameworks add
    workspace) are more than `limit` (memory_limit() by default): said before the work starts,
    instead of a MemoryError seconds or minutes into it. The message names `what` and both sizes."""
    limit_bytes, source = limit or memory_limit()
    if need > limit_bytes:
        raise CostError(f"{what} needs at least {size_text(need)} of memory, more than the "
                        f"{size_text(limit_bytes)} {source} (set {MEMORY_LIMIT_VARIABLE}, in bytes, to change "
                        "the limit)")


@dataclass(frozen=True)
class LayerInfo:
    index: int  # position in spec.layers
    name: str  # e.g. "block0.conv1", "pool1", "dropout0"
    kind: str  # conv, batch_norm, relu, max_pool, dropout, global_avg_pool, flatten
    output_shape: tuple[int, ...]  # (C, H, W), or (C,) after flatten
    params: int  # trainable parameters
    state: int  # non-trainable state (batch-norm running mean and variance)
    macs: int  # per input
    other_ops: int  # pooling comparisons / adds, per input
    activations: int  # elements stored for backward, per input
    bytes_moved: int  # elements read + written in a forward pass (weights and activations), per input

    @property
    def elements(self) -> int:
        return _prod(self.output_shape)


def layers(spec: NetSpec) -> list[LayerInfo]:
    """Every operation of one forward pass of one input, in order (convs, BN, ReLU listed apart)."""
    out: list[LayerInfo] = []
    bias = {f"block{b}": not block.batch_norm for b, block in spec.blocks()}  # none before batch norm
    for op in walk(spec):
        n_in, n_out = _prod(op.in_shape), _prod(op.out_shape)
        c, k = op.in_shape[0], op.kernel_size
        if op.kind == "conv":
            oc = op.out_shape[0]
            params = oc * c * k * k + (oc if bias[op.name.split(".")[0]] else 0)
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, params, 0, n_out * c * k * k, 0, n_out,
                                 n_in + n_out + params))
        elif op.kind == "batch_norm":
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, 2 * c, 2 * c, 0, 0, n_out,
                                 2 * n_out + 4 * c))
        elif op.kind in ("relu", "dropout"):
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, 0, 0, 0, 0, n_out, 2 * n_out))
        elif op.kind == "max_pool":
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, 0, 0, 0, n_out * k * k, n_out, n_in + n_out))
        elif op.kind == "global_avg_pool":
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, 0, 0, 0, n_in, c, n_in + c))
        else:  # flatten: a view, stores nothing
            out.append(LayerInfo(op.index, op.name, op.kind, op.out_shape, 0, 0, 0, 0, 0, 0))
    return out


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layer_output_shapes(spec: NetSpec) -> list[tuple[int, ...]]:
    """The output shape of each entry of spec.layers (what every backend's layer_shapes must return)."""
    by_layer: dict[int, tuple[int, ...]] = {}
    for info in layers(spec):
        by_layer[info.index] = info.output_shape
    return [by_layer[i] for i in range(len(spec.layers))]


def param_count(spec: NetSpec) -> int:
    return sum(l.params for l in layers(spec))


def param_shapes(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes (NCHW / OIHW), in order: the names every backend exports."""
    shapes: dict[str, tuple[int, ...]] = {}
    bn = {b: block.batch_norm for b, block in spec.blocks()}
    for prefix, cin, cout, k, _, _ in spec.conv_layers():
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        if not bn[int(prefix.split(".")[0][len("block"):])]:
            shapes[f"{prefix}.bias"] = (cout,)  # none before batch norm: its mean subtraction undoes it
        else:
            bnp = prefix.replace(".conv", ".bn")
            for name in ("gamma", "beta", "running_mean", "running_var"):
                shapes[f"{bnp}.{name}"] = (cout,)
    return shapes


STATE_SUFFIXES = (".running_mean", ".running_var", ".running_var_unbiased")


def is_trainable(name: str) -> bool:
    return not name.endswith(STATE_SUFFIXES)


@dataclass(frozen=True)
class Summary:
    variant: str
    input_shape: tuple[int, int, int]
    batch_size: int
    dtype: str
    total_params: int
    total_state: int
    total_macs: int  # per input
    forward_flops: int  # per input: 2 * macs
    train_flops: int  # per input: 3 * forward
    other_ops: int  # per input
    activations: int  # elements kept for backward, per input (input included)
    bytes_moved: int  # forward pass, per input, in bytes at dtype
    weights_bytes: int
    train_memory_bytes: int  # for batch_size, with momentum state
    inference_memory_bytes: int  # for batch_size
    layers: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def summary(spec: NetSpec, batch_size: int = 1, dtype: str = "float32", momentum: bool = True) -> Summary:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    nbytes = DTYPE_BYTES[dtype]
    infos = layers(spec)
    params = sum(l.params for l in infos)
    state = sum(l.state for l in infos)
    c, h, w = spec.input_shape
    input_elems = c * h * w
    acts = input_elems + sum(l.activations for l in infos)
    masks = sum(l.elements for l in infos if l.kind == "dropout")  # one byte each
    weights_bytes = (params + state) * nbytes
    train = weights_bytes + params * nbytes * (2 if momentum else 1) + batch_size * (acts * nbytes + masks)
    sizes = [input_elems] + [l.elements for l in infos if l.kind != "flatten"]
    peak_pair = max(a + b for a, b in zip(sizes, sizes[1:]))
    infer = weights_bytes + batch_size * peak_pair * nbytes
    macs = sum(l.macs for l in infos)
    rows = []
    for l in infos:
        row = asdict(l)
        row["output_shape"] = list(l.output_shape)
        rows.append(row)
    return Summary(
        variant=spec.name, input_shape=spec.input_shape, batch_size=batch_size, dtype=dtype,
        total_params=params, total_state=state, total_macs=macs, forward_flops=2 * macs,
        train_flops=6 * macs, other_ops=sum(l.other_ops for l in infos), activations=acts,
        bytes_moved=sum(l.bytes_moved for l in infos) * nbytes, weights_bytes=weights_bytes,
        train_memory_bytes=train, inference_memory_bytes=infer, layers=rows,
    )


def spec_layers(spec: NetSpec) -> list[dict]:
    """One row per entry of spec.layers (blocks not split): what `nin summary` prints and `--json` lists."""
    by_layer: list[list[LayerInfo]] = [[] for _ in spec.layers]
    for info in layers(spec):  # one pass: a spec of many layers stays linear
        by_layer[info.index].append(info)
    rows = []
    for i, layer in enumerate(spec.layers):
        mine = by_layer[i]
        rows.append({
            "index": i,
            "type": layer.kind,
            "name": mine[-1].name.split(".")[0] if layer.kind == "nin_block" else mine[-1].name,
            "output_shape": list(mine[-1].output_shape),
            "params": sum(l.params for l in mine),
            "macs": sum(l.macs for l in mine),
            "activations": sum(l.activations for l in mine),
        })
    return rows


TYPE_NAMES = {"nin_block": "NiNBlock", "conv": "Conv2d", "batch_norm": "BatchNorm2d", "relu": "ReLU",
              "max_pool": "MaxPool2d", "dropout": "Dropout", "global_avg_pool": "GlobalAvgPool2d",
              "flatten": "Flatten"}  # the layer types `nin summary` shows (PyTorch's names, the best known)


def _details(layer_or_op) -> str:
    """A layer's or op's arguments in a few characters: 11x11/4 p0, 3x3/2, rate 0.5."""
    kind = layer_or_op.kind
    if kind == "nin_block":
        b = layer_or_op
        return (f"{b.kernel_size}x{b.kernel_size}/{b.stride} p{b.padding} -> {b.out_channels}"
                + "".join(f", 1x1 -> {c}" for c in b.mlp) + (", BN" if b.batch_norm else "")
                + ("" if b.relu_last else ", no last ReLU"))
    if kind in ("conv", "max_pool"):
        o = layer_or_op
        return f"{o.kernel_size}x{o.kernel_size}/{o.stride} p{o.padding}"
    if kind == "dropout":
        return f"rate {layer_or_op.rate:g}"
    return ""


def summary_rows(spec: NetSpec, depth: int = 1) -> list[dict]:
    """The rows of `nin summary --depth N`: every entry of spec.layers (depth 1) and, from depth 2 on,
    the operations inside each NiN block (its convs, batch norms and ReLUs) below it, as torchinfo's
    depth does. Each row: "index" ("2" or "2.1"), "depth", "name", "type" (TYPE_NAMES), "details",
    "output_shape", "trainable" and "non_trainable" parameters (batch norm's running mean and
    variance are the non-trainable ones: Keras's non_trainable_weights, PyTorch's buffers, Flax's
    BatchStat, Gluon's grad_req 'null'), "macs" and "activations" per input."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    by_layer: list[list[LayerInfo]] = [[] for _ in spec.layers]
    ops = {op.name: op for op in walk(spec)}
    for info in layers(spec):
        by_layer[info.index].append(info)
    rows = []
    for i, layer in enumerate(spec.layers):
        mine = by_layer[i]
        rows.append({
            "index": str(i), "depth": 1,
            "name": mine[-1].name.split(".")[0] if layer.kind == "nin_block" else mine[-1].name,
            "type": TYPE_NAMES[layer.kind], "details": _details(layer),
            "output_shape": list(mine[-1].output_shape),
            "trainable": sum(l.params for l in mine), "non_trainable": sum(l.state for l in mine),
            "macs": sum(l.macs for l in mine), "activations": sum(l.activations for l in mine),
        })
        if depth >= 2 and layer.kind == "nin_block":
            rows += [{"index": f"{i}.{j}", "depth": 2, "name": l.name, "type": TYPE_NAMES[l.kind],
                      "details": _details(ops[l.name]), "output_shape": list(l.output_shape),
                      "trainable": l.params, "non_trainable": l.state, "macs": l.macs,
                      "activations": l.activations} for j, l in enumerate(mine)]
    return rows


def traffic_bytes_per_image(spec: NetSpec, batch_size: int, dtype: str = "float32", *, train: bool = False,
                            momentum: bool = False) -> float:
    """Bytes one image costs the memory system, for the roofline. Activations: what each op reads and
    writes (3x in training: the forward, then a backward that reads them and writes their gradients).
    Weights are shared by the batch: inference reads them once; training reads them in the forward
    and the backward, writes their gradient, and the update reads weight and gradient and writes the
    weight (3 more with a momentum buffer: read, written, and read again by nothing: 2)."""
    nbytes = DTYPE_BYTES[dtype]
    infos = layers(spec)
    params = sum(l.params + l.state for l in infos)
    activations = (sum(l.bytes_moved for l in infos) - sum(l.params for l in infos)) * nbytes
    if not train:
        return activations + params * nbytes / batch_size
    weight_passes = 5 + (2 if momentum else 0)
    return 3 * activations + weight_passes * params * nbytes / batch_size
