"""The backends, as data, and the contract each backend package fulfils, as code.

BACKENDS: what users type, which package implements it, what it needs, where it runs. Nothing here
imports or loads a backend: the drivers (conformance, benchmarks, training) start each backend in
its own process with the interpreter and environment named here (harness.processes), and that
process imports the backend's package.

CONTRACT: what every backend package provides, module by module, as typing.Protocols (a module
satisfies a Protocol by its module-level names, PEP 544): each function's signature, in order,
with its meaning in one line. tests/test_mirror.py holds every registered package to it (names,
order, parameters), and harness.processes.load refuses a module that lacks a name of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent  # the repository: where the environments live


@dataclass(frozen=True)
class Backend:
    name: str  # what users type: --backend torch
    package: str  # the nin_* package
    requires: tuple[str, ...]  # modules whose presence means the backend can run
    venv: str  # the environment that has them (MXNet needs numpy<1.24, so it lives apart)
    title: str  # for people: the framework and its idiom
    compile_modes: tuple[str, ...]  # how its users run a model: "eager" and the framework's compiler(s)
    env: tuple[tuple[str, str], ...] = ()  # environment variables its process needs (Keras's backend)
    # What it computes below float64 in an fp64 record, as its train.float64_limits() declares (a test holds
    # the two alike): "all" for Keras on JAX and PyTorch, whose fp64 mode is float32 (docs/numerics.md)
    float64_limits: tuple[str, ...] = ()


REGISTERED = (
    Backend("mxnet", "nin_mxnet", ("mxnet",), ".venv-mxnet", "MXNet Gluon", ("eager", "compiled")),
    Backend("torch", "nin_torch", ("torch",), ".venv", "PyTorch", ("eager", "compiled")),
    Backend("keras-tf", "nin_tf", ("keras", "tensorflow"), ".venv", "Keras on TensorFlow",
            ("eager", "graph", "compiled"), (("KERAS_BACKEND", "tensorflow"),)),
    Backend("jax", "nin_jax", ("jax", "flax", "optax"), ".venv", "Flax NNX on JAX", ("eager", "compiled")),
    Backend("keras-jax", "nin_tf", ("keras", "jax"), ".venv", "Keras on JAX", ("eager", "compiled"),
            (("KERAS_BACKEND", "jax"),), ("all",)),
    Backend("keras-torch", "nin_tf", ("keras", "torch"), ".venv", "Keras on PyTorch", ("eager", "compiled"),
            (("KERAS_BACKEND", "torch"),), ("all",)),
)
EXTRA = "NIN_EXTRA_BACKENDS"  # backends added without editing this file (extra_backends)


class BackendError(ValueError):
    """An unknown backend name, or a bad $NIN_EXTRA_BACKENDS; the message lists the known ones or the problem."""


def extra_backends(text: str) -> tuple[Backend, ...]:
    """The backends of $NIN_EXTRA_BACKENDS: a JSON list of objects with Backend's fields ("env": an object,
    optional), e.g. [{"name": "torch2", "package": "nin_torch2", "requires": ["torch"], "venv": ".venv",
    "title": "PyTorch, a copy", "compile_modes": ["eager", "compiled"]}]. Every process a driver starts
    inherits the variable, so each worker knows the backend as its driver does; the package must be
    importable there (PYTHONPATH reaches the workers too). tests/test_add_backend.py registers one so."""
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise BackendError(f"${EXTRA}: not JSON ({e})") from None
    fields = [f.name for f in dataclasses.fields(Backend)]
    required = [f.name for f in dataclasses.fields(Backend) if f.default is dataclasses.MISSING]
    out = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if not isinstance(entry, dict) or not set(required) <= set(entry) <= set(fields):
            raise BackendError(f"${EXTRA}: each backend is an object with the fields {fields} "
                               f"({', '.join(sorted(set(fields) - set(required)))} optional), got {entry!r}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        values["env"] = tuple(dict(entry.get("env") or {}).items())
        out.append(Backend(**values))
    return tuple(out)


def _registry(extra: tuple[Backend, ...]) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for b in REGISTERED + extra:
        if b.name in out:
            raise BackendError(f"${EXTRA}: backend {b.name!r} is registered already")
        out[b.name] = b
    return out


# name -> Backend: the registered ones, in the chapter's order of frameworks, then $NIN_EXTRA_BACKENDS's
BACKENDS = _registry(extra_backends(os.environ.get(EXTRA, "")))


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


# --- the contract ------------------------------------------------------------------------------
# Types are Any where the framework's own types go (a module, a tensor, an optimizer): the contract
# is about names, order and meaning; each package annotates with its framework's types.
class ModelModule(Protocol):
    """model.py: the network from the spec, canonical weights in and out, the forward pass."""

    FRAMEWORK: str  # the framework's name, as records show it
    RUNNING_VARIANCE: str  # "unbiased" or "biased": which variance batch norm keeps as its running one
    HYPERPARAMETERS: str  # "exact", or "float32" when the kernels take lr, momentum... as 32-bit floats
    BN_NAMES: Any  # the framework's names of batch norm's four tensors, by canonical suffix

    def nin_block(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
                  mlp: tuple = (), relu_last: bool = True, norm: Any = None) -> Any:
        """The chapter's block: a k x k conv, then 1x1 convs, each followed by ReLU (batch norm between)."""

    def default_device(self, device: str | None = None) -> Any:
        """The framework's device for "cpu" or "gpu" (None: the GPU when there is one); raises without it."""

    def build(self, spec: Any, *, device: str | None = None, dtype: str = "float32", compiled: bool = False) -> Any:
        """The network of a NetSpec, one framework layer per spec layer; compiled: the framework's compiler."""

    def canonical_tensors(self, model: Any) -> dict:
        """Canonical name -> the model's own parameter or buffer."""

    def to_canonical(self, name: str, value: Any) -> Any:
        """A parameter, buffer or gradient as canonical NumPy (OIHW)."""

    def from_canonical(self, name: str, value: Any) -> Any:
        """A canonical NumPy array in the framework's layout."""

    def load_weights(self, model: Any, weights: Any, source: str = "weights") -> None:
        """Canonical weights into the model; a missing or misshapen tensor names `source` and the tensor."""

    def export_weights(self, model: Any) -> dict:
        """Every parameter and buffer as canonical NumPy."""

    def device_of(self, model: Any) -> Any:
        """Where the model's parameters live."""

    def to_input(self, model: Any, images: Any) -> Any:
        """NCHW float images as the model's input: on its device, in its dtype and layout."""

    def forward(self, model: Any, images: Any, *, training: bool = False, seed: int = 0) -> Any:
        """Logits for NCHW images; training: dropout drops (seeded) and batch norm uses batch statistics."""

    def layer_shapes(self, model: Any, images: Any) -> list:
        """The output shape (C, H, W or features) of every spec layer, in canonical order."""


class TrainModule(Protocol):
    """train.py: the loss, the optimizer and one training step; the numerics switches; versions."""

    PRECISIONS: tuple  # the precisions configure() accepts

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Mean softmax cross-entropy over the batch, the framework's own."""

    def make_optimizer(self, model: Any, lrs: Any, *, momentum: float = 0.0, weight_decay: float = 0.0) -> Any:
        """SGD in the suite's form, g += wd * w; v = m * v + g; w -= lrs[t] * v, t counted by the optimizer."""

    def loss_and_grads(self, model: Any, images: Any, labels: Any) -> tuple:
        """(mean loss, canonical gradient of every trainable tensor), training mode."""

    def train_step(self, model: Any, optimizer: Any, x: Any, y: Any) -> tuple:
        """One step on a batch in the model's input form (training mode): (mean loss, correct predictions)."""

    def configure(self, device: str = "cpu", precision: str = "fp32") -> dict:
        """Process-wide numerics for a precision (fp32: no TF32, deterministic); what was set."""

    def float64_limits(self) -> dict:
        """Operations that compute below float64 in fp64 mode, each with its reason ({} for none)."""

    def device_name(self, device: str) -> str:
        """The device's name for records (the GPU's model, the CPU's)."""

    def versions(self) -> dict:
        """The framework's and its libraries' versions, for records and results."""


class LoopModule(Protocol):
    """loop.py: the framework's own training loop around the model (nin train)."""

    def make_trainer(self, spec: Any, lrs: Any, *, momentum: float, weight_decay: float, device: str,
                     compile: str, dtype: str = "float32", devices: int = 1, nodes: int = 1) -> Any:
        """The model and train.make_optimizer's optimizer for a run whose step k uses learning rate lrs[k];
        devices * nodes > 1: data-parallel on the framework's engine over `devices` devices of each of `nodes`
        machines (distributed.launch has started this machine's processes, if any, and joined the others)."""

    def load_state(self, trainer: Any, weights: dict, optimizer: dict, step: int) -> None:
        """Canonical weights, canonical momentum buffers ("momentum/<name>") and the step count: any backend's."""

    def export_state(self, trainer: Any) -> tuple:
        """(canonical weights, {"momentum/<name>": canonical buffer}, steps done): a framework-neutral checkpoint."""

    def train_epoch(self, trainer: Any, images: Any, labels: Any, *, batch_size: int, dropout_seed: int,
                    progress: Callable) -> None:
        """One pass over uint8 images in the epoch's order; progress(n, mean loss, correct) per batch (data-parallel:
        the global batch's; each replica its share of every batch and its own dropout masks)."""

    def dropout_masks(self, trainer: Any, shapes: list, *, dropout_seed: int) -> list:
        """The keep masks train_epoch(..., dropout_seed=dropout_seed) draws (one device): for each batch, for each
        dropout layer in order, a 0/1 NumPy array of its input's canonical NCHW shape (shapes[batch][layer]),
        drawn again by the model's own dropout layers from the random stream restarted as train_epoch restarts it."""

    def evaluate(self, trainer: Any, images: Any, labels: Any, *, batch_size: int) -> dict:
        """Mean loss, accuracy and the share of all-non-positive logits, dropout off."""


class BenchModule(Protocol):
    """bench.py: what only the framework knows about timing it (benchmarks/ owns the loop and the results)."""

    def make_step(self, spec: Any, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                  steps: int) -> Any:
        """(step, settings): step() runs one training or inference step on a fixed batch, at most `steps` times."""

    def plain_step(self, *, mode: str, batch_size: int, device: str) -> Any:
        """(step, settings): the chapter's d2l network and step as its readers write them, the yardstick."""

    def synchronize(self, device: str, result: Any = None) -> None:
        """Wait until the device has finished every step queued so far."""

    def reset_peak_memory(self, device: str) -> None:
        """Start counting the device's peak memory afresh."""

    def peak_memory_bytes(self, device: str) -> int | None:
        """The device's peak memory since the reset, or None where the framework cannot tell."""

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether an exception means the device ran out of memory."""

    def timing_loop(self, spec: Any, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                    warmup: int, steps: int) -> float | None:
        """Seconds of `steps` steps after `warmup`, one plain loop synced at its ends only; None: no such loop."""

    def api_checks(self, device: str) -> tuple:
        """(checks, problems): each framework API the package relies on, found or not; a sentence per missing one."""

    def matmul_peak(self, device: str) -> dict | None:
        """The device's matmul TFLOP/s per precision as the framework reaches them, or None where not measured."""


MAX_DEVICES = 1024  # replicas a data-parallel run or record may ask for: more than any machine this suite runs on


class DistributedModule(Protocol):
    """distributed.py: data parallelism on the framework's own engine (the data-parallel case, docs/distributed.md)."""

    ENGINE: str  # the framework's data-parallel engine, as records and docs name it
    SYNC_BATCH_NORM: str  # its synchronised batch norm, as its users write it ("" where it has none)
    DEFAULT_BATCH_NORM: str  # batch statistics under the engine by default: "global" or "per replica"

    def simulate_devices(self, count: int) -> dict:
        """Make a CPU show `count` devices to the framework, before it starts computing; what was set."""

    def data_parallel_run(self, spec: Any, weights: dict, batches: list, lrs: Any, *, devices: int, momentum: float,
                          weight_decay: float, device: str, precision: str, sync_batch_norm: bool) -> tuple:
        """Train from canonical weights on global (images, labels) batches, each split over `devices` replicas
        by the engine: (global mean loss of every step, final canonical weights and running statistics)."""

    def launch(self, devices: int, module: str, args: list, *, nodes: int = 1, node_rank: int = 0,
               rendezvous: str = "") -> int | None:
        """Where each replica is a process: run `python -m module args` once per replica of this machine with
        the framework's launcher and return its exit status; None in a replica already, or where replicas share
        one process. nodes > 1: this is machine `node_rank` of `nodes`, which meet at `rendezvous` (HOST:PORT,
        where node 0 listens): the launcher, or this process, joins the others before returning None."""

    def process_index(self) -> int:
        """This process's rank among the run's processes (0: the one that writes the run's files)."""


CONTRACT: dict[str, type] = {"model": ModelModule, "train": TrainModule, "loop": LoopModule, "bench": BenchModule,
                             "distributed": DistributedModule}


def packages() -> list[str]:
    """The backend packages, each once, in the registry's order (Keras's three backends share nin_tf)."""
    return list(dict.fromkeys(b.package for b in BACKENDS.values()))


def contract_names(module: str) -> list[str]:
    """The names a backend module must define: constants first, then functions, in contract order."""
    protocol = CONTRACT[module]
    constants = list(getattr(protocol, "__annotations__", {}))
    functions = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return constants + functions


def missing_names(module: str, loaded: Any) -> list[str]:
    """The contract's names that a loaded backend module lacks."""
    return [n for n in contract_names(module) if not hasattr(loaded, n)]


def package_titles() -> dict[str, str]:
    """Each package's framework, for people, in the registry's order: its backend's title, or for a package
    that backends share, their common first words, then each one's own (Keras on TensorFlow, JAX, PyTorch)."""
    out = {}
    for package in packages():
        titles = [b.title.split() for b in BACKENDS.values() if b.package == package]
        common = 0
        while all(len(t) > common + 1 and t[common] == titles[0][common] for t in titles):
            common += 1
        rests = ", ".join(" ".join(t[common:]) for t in titles)
        out[package] = " ".join([*titles[0][:common], rests]) if len(titles) > 1 else " ".join(titles[0])
    return out
