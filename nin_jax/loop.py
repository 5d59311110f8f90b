"""Training NiN the Flax NNX way: a plain loop over the epoch's batches, each resized on the device
and passed to train.train_step (nnx.value_and_grad, optimizer.update) with train.make_optimizer's optax
SGD, the learning-rate table its schedule; when compiled, the resize runs under jax.jit and the step under nnx.jit.

The driver (training/worker.py) owns the data order, the learning-rate table, the seeds, the
metrics and the checkpoints; this file owns what only JAX and Flax know. Images arrive as uint8
28x28 and are resized on the device with two matmuls (common.data.input_matrices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from common.data import input_matrices
from common.spec import NetSpec
from common.weights import nhwc_to_nchw

from .model import (
    DTYPES,
    build,
    canonical_tensors,
    default_device,
    export_weights,
    from_canonical,
    load_weights,
    to_canonical,
)
from .train import make_optimizer, train_step


@dataclass
class Trainer:
    model: nnx.Module
    optimizer: nnx.Optimizer  # train.make_optimizer's: optax SGD, the table read at optax's count
    rows: jax.Array  # (H, 28) and (W, 28): the resize, on the device, in the model's dtype
    cols: jax.Array
    channels: int
    state: Sharding  # where the model, the optimizer and the resize live: one device, or copies on every one
    batch: Sharding  # where a batch goes: that device, or split along a Mesh's batch axis (data-parallel)


def _shardings(device: str, devices: int, nodes: int) -> tuple[Sharding, Sharding]:
    """(state, batch): one device; or, data-parallel, a Mesh with one axis over the first `devices` devices of
    each of `nodes` processes (jax.distributed's), the state replicated and every batch split along it (XLA
    inserts the gradient's all-reduce itself)."""
    if devices * nodes == 1:
        one = SingleDeviceSharding(default_device(device))
        return one, one
    found = [jax.local_devices(process_index=p, backend=device)[:devices] for p in range(nodes)]
    if min(map(len, found)) < devices:
        raise ValueError(f"JAX sees {min(map(len, found))} {device} devices in a process, fewer than {devices} "
                         "replicas")
    mesh = Mesh(np.array([d for mine in found for d in mine]), ("batch",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


def make_trainer(spec: NetSpec, lrs: np.ndarray, *, momentum: float, weight_decay: float, device: str,
                 compile: str, dtype: str = "float32", devices: int = 1, nodes: int = 1) -> Trainer:
    """The model in `dtype` (canonical weights are loaded by load_state) and train.make_optimizer's SGD;
    devices * nodes > 1: the same step under jax.sharding, each batch split over the devices. On several
    machines every process feeds the whole global batch and holds the whole state (jax.device_put keeps the
    rows of its own devices), so each runs this same loop: the program is one, as SPMD requires."""
    if devices * nodes > 1 and compile != "compiled":  # op by op, a Mesh's collectives deadlocked XLA's CPU runtime
        raise NotImplementedError("JAX runs a Mesh's replicas compiled (--compile compiled): eager, one op at a "
                                  "time, each op's all-reduce waits for both devices and XLA's CPU runtime hung")
    model = build(spec, device=device, dtype=dtype, compiled=compile == "compiled")
    state, batch = _shardings(device, devices, nodes)
    nnx.update(model, _placed(nnx.state(model), state))  # first: the optimizer's state follows the model's
    optimizer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay)
    rows, cols = (jax.device_put(np.asarray(m).astype(DTYPES[dtype]), state) for m in input_matrices(spec))
    return Trainer(model, optimizer, rows, cols, spec.input_shape[0], state, batch)


def _placed(tree, sharding: Sharding):
    """Every array of `tree` on `sharding`. An array held elsewhere travels through the host: across processes,
    jax.device_put takes host values (the same in every process), not another device's array; a key as its data."""
    def put(a: jax.Array) -> jax.Array:
        if a.sharding == sharding:
            return a
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # nnx.Rngs' keys: no NumPy form of their own
            data = jax.device_put(np.asarray(jax.random.key_data(a)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jax.device_put(np.asarray(a), sharding)
    return jax.tree.map(put, tree)


def _commit(trainer: Trainer) -> None:
    """Put every array of the model and the optimizer where the trainer keeps them explicitly: jax.jit keys
    its cache on whether an argument is committed to a device, so a mix (fresh arrays are not) compiles again."""
    for node in (trainer.model, trainer.optimizer):
        nnx.update(node, _placed(nnx.state(node), trainer.state))


def _param_paths(model: nnx.Module) -> dict[str, tuple]:
    """Canonical name -> the path of each trainable tensor (nnx.Param) in the model's state, which
    is also its path under the optax momentum trace."""
    paths = {id(node): tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)}
    return {name: paths[id(t)] for name, t in canonical_tensors(model).items() if isinstance(t, nnx.Param)}


def _slots(trainer: Trainer) -> tuple[nnx.State, dict[str, nnx.Variable], list[nnx.Variable]]:
    """The optimizer's state, its momentum trace by canonical name ({} without momentum) and optax's
    step counts (scale_by_schedule's `count`), as Variables of that state."""
    state = nnx.state(trainer.optimizer, nnx.OptState)
    flat = {tuple(path): leaf for path, leaf in nnx.to_flat_state(state)}
    traces = {path[path.index("trace") + 1:]: leaf for path, leaf in flat.items()
              if path[0] == "opt_state" and "trace" in path}
    counts = [leaf for path, leaf in flat.items() if path[0] == "opt_state" and path[-1] == "count"]
    momentum = {name: traces[path] for name, path in _param_paths(trainer.model).items() if path in traces}
    return state, momentum, counts


def load_state(trainer: Trainer, weights: dict, optimizer: dict, step: int) -> None:
    """Canonical weights, the momentum buffers by canonical name ("momentum/<name>", any backend's,
    canonical layout) into optax's trace, and the step count into nnx.Optimizer.step and optax's
    count (the table continues at lrs[step]). A fresh optimizer ({} at step 0) starts from zero."""
    load_weights(trainer.model, weights, "checkpoint")
    state, momentum, counts = _slots(trainer)
    for name, slot in momentum.items():
        key = f"momentum/{name}"
        if key not in optimizer:
            if step:
                raise ValueError(f"checkpoint: no {key} for a run with momentum at step {step}")
            slot.set_value(jnp.zeros_like(slot.get_value()))
            continue
        buffer = np.asarray(from_canonical(name, optimizer[key]))
        if buffer.shape != slot.get_value().shape:
            raise ValueError(f"checkpoint: {key} has shape {buffer.shape}, the model's "
                             f"{tuple(slot.get_value().shape)}")
        slot.set_value(jnp.asarray(buffer, dtype=slot.get_value().dtype))
    for count in counts:
        count.set_value(jnp.asarray(step, dtype=count.get_value().dtype))
    nnx.update(trainer.optimizer, state)
    trainer.optimizer.step.set_value(jnp.asarray(step, dtype=trainer.optimizer.step.get_value().dtype))
    _commit(trainer)


def export_state(trainer: Trainer) -> tuple[dict, dict, int]:
    """(canonical weights, {"momentum/<name>": canonical trace} ({} for plain SGD), steps done)."""
    _, momentum, _ = _slots(trainer)
    optimizer = {f"momentum/{name}": to_canonical(name, slot.get_value()) for name, slot in momentum.items()}
    return export_weights(trainer.model), optimizer, int(trainer.optimizer.step.get_value())


def _inputs(rows: jax.Array, cols: jax.Array, images: jax.Array, channels: int) -> jax.Array:
    """uint8 (N, 28, 28) -> float (N, H, W, C): rows @ X @ cols^T, the grey repeated (NHWC)."""
    x = rows @ images.astype(rows.dtype) @ cols.T
    return jnp.repeat(x[..., None], channels, axis=-1)


_inputs_jit = jax.jit(_inputs, static_argnames="channels")


def _eval_step(model, resize, batch, *, channels):
    (rows, cols), (images, labels) = resize, batch
    logits = model(_inputs(rows, cols, images, channels))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss, jnp.sum(jnp.argmax(logits, -1) == labels), jnp.sum(jnp.all(logits <= 0, axis=-1))


_eval_step_jit = nnx.jit(_eval_step, static_argnames="channels")


def train_epoch(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int, dropout_seed: int,
                progress: Callable[[int, float, int], None]) -> None:
    """One pass over images (uint8, already in the epoch's order); progress(n, mean loss, correct)
    after every batch. The dropout masks come from the model's nnx.Rngs restarted at dropout_seed: under a
    Mesh, one mask for the whole batch, so each replica's shard has its own."""
    resize = partial(_inputs_jit if trainer.model.jit else _inputs, trainer.rows, trainer.cols,
                     channels=trainer.channels)  # op by op in eager mode, as the model runs
    nnx.reseed(trainer.model, dropout=dropout_seed)
    _commit(trainer)
    for start in range(0, len(images), batch_size):
        x = resize(jax.device_put(images[start:start + batch_size], trainer.batch))  # 784 bytes per image
        y = jax.device_put(labels[start:start + batch_size].astype(np.int32), trainer.batch)
        loss, correct = train_step(trainer.model, trainer.optimizer, x, y)
        progress(len(y), loss, correct)


def dropout_masks(trainer: Trainer, shapes: list, *, dropout_seed: int) -> list:
    """The keep masks train_epoch(..., dropout_seed) draws, batch by batch, layer by layer: each nnx.Dropout called
    again in training mode on ones of its input's shape (NHWC, the model's dtype), the model's nnx.Rngs reseeded
    as train_epoch reseeds it (jax.random draws the same bits under nnx.jit and op by op)."""
    layers = [m for m in trainer.model.layers if isinstance(m, nnx.Dropout)]
    ones = lambda n, c, h, w: jnp.ones((n, h, w, c), dtype=trainer.rows.dtype)  # noqa: E731
    nnx.reseed(trainer.model, dropout=dropout_seed)
    trainer.model.train()
    return [[nhwc_to_nchw(np.asarray(layer(ones(*shape))) != 0) for layer, shape in zip(layers, batch, strict=True)]
            for batch in shapes]


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> dict:
    """Mean loss, accuracy and the share of images whose logits are all <= 0, dropout off."""
    step = _eval_step_jit if trainer.model.jit else _eval_step
    device = trainer.state  # data-parallel: every device evaluates the whole batch (a test batch need not split)
    trainer.model.eval()
    loss, correct, zero = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        x = jax.device_put(images[start:start + batch_size], device)
        y = jax.device_put(labels[start:start + batch_size].astype(np.int32), device)
        batch_loss, batch_correct, batch_zero = step(trainer.model, (trainer.rows, trainer.cols), (x, y),
                                                     channels=trainer.channels)
        loss, correct, zero = loss + float(batch_loss), correct + int(batch_correct), zero + int(batch_zero)
    n = len(images)
    return {"loss": loss / n, "accuracy": correct / n, "zero_logits": zero / n}
