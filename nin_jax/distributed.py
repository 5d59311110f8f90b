"""Data-parallel NiN the JAX way: one process, a Mesh over the devices with a single batch axis, every global
batch placed with a NamedSharding that splits it along that axis, the parameters and the optimizer's state
replicated, and train.py's step run unchanged under nnx.jit. XLA's SPMD partitioner splits the computation
by those shardings and inserts the all-reduces itself (the gradient's batch sum, batch norm's batch mean).

On a CPU, simulate_devices asks JAX for several CPU devices (jax_num_cpu_devices) before it starts; the
data-parallel case (docs/distributed.md) runs every replica in this one process.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.spec import NetSpec

from .model import build, export_weights, load_weights, to_input
from .train import make_optimizer, train_step

ENGINE = "jax.sharding: a Mesh over the batch axis, NamedSharding, nnx.jit"
# A batch sharded over devices under jit is still one global array: nnx.BatchNorm's batch mean and variance
# are global reductions, for which the compiler inserts the collective. Synchronised is the default, with
# nothing to write (not "": that would read as none); per-replica statistics would take shard_map.
SYNC_BATCH_NORM = "nnx.BatchNorm as it is (under nnx.jit its statistics span the whole sharded batch)"
DEFAULT_BATCH_NORM = "global"  # nnx.BatchNorm reduces over the whole sharded batch
_AXIS = "batch"  # the mesh's one axis: the replicas


def simulate_devices(count: int) -> dict:
    """jax_num_cpu_devices, which JAX reads once, when its CPU backend starts: call it before any JAX
    computation. Once started, a backend with `count` CPU devices or more is kept as it is."""
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend has started: only its own device count can answer now
        have = len(jax.devices("cpu"))
        if have < count:
            raise RuntimeError(f"JAX has started with {have} CPU devices, fewer than {count}: call "
                               f"simulate_devices before any JAX computation") from None
        return {"jax_num_cpu_devices": have}
    return {"jax_num_cpu_devices": count}


def _mesh(device: str, devices: int) -> Mesh:
    """The first `devices` devices of the kind, in a one-axis mesh."""
    found = jax.devices(device)
    if len(found) < devices:
        raise ValueError(f"JAX sees {len(found)} {device} devices, fewer than {devices} replicas"
                         + (" (simulate_devices first)" if device == "cpu" else ""))
    return Mesh(np.array(found[:devices]), (_AXIS,))


def _replicate(node: nnx.Module | nnx.Optimizer, sharding: NamedSharding) -> None:
    """Every array of a model or an optimizer, a full copy on each device of the mesh."""
    nnx.update(node, jax.device_put(nnx.state(node), sharding))


def data_parallel_run(spec: NetSpec, weights: dict, batches: list, lrs: np.ndarray, *, devices: int, momentum: float,
                      weight_decay: float, device: str, precision: str, sync_batch_norm: bool) -> tuple:
    """train.train_step under nnx.jit on every global batch sharded over `devices` devices along the batch
    axis; the losses are the global batch's means. sync_batch_norm changes nothing: JAX's batch statistics
    are global (see SYNC_BATCH_NORM)."""
    for images, _ in batches:
        if len(images) % devices:
            raise ValueError(f"a global batch of {len(images)} does not split over {devices} replicas")
    mesh = _mesh(device, devices)
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(_AXIS))
    model = build(spec, device=device, dtype="float64" if precision == "fp64" else "float32", compiled=True)
    load_weights(model, weights)
    optimizer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay)
    _replicate(model, replicated)
    _replicate(optimizer, replicated)
    losses = []
    for images, labels in batches:
        x = jax.device_put(to_input(model, images), split)  # NHWC: the batch axis is still the first
        y = jax.device_put(np.asarray(labels, dtype=np.int32), split)
        loss, _ = train_step(model, optimizer, x, y)
        losses.append(loss)
    return losses, export_weights(model)


def launch(devices: int, module: str, args: list, *, nodes: int = 1, node_rank: int = 0,
           rendezvous: str = "") -> None:
    """Nothing to start: one process drives every device of this machine's Mesh. On `nodes` machines, each
    runs the same command and joins the others here, before any JAX computation: jax.distributed.initialize
    with node 0 the coordinator at `rendezvous`, CPU collectives over gloo (on GPUs, NCCL's)."""
    if nodes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=rendezvous, num_processes=nodes, process_id=node_rank)
    return None


def process_index() -> int:
    """jax.process_index(): 0 on one machine, node_rank on several (one process each)."""
    return jax.process_index()
