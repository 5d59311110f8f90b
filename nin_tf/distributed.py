"""Data-parallel NiN the Keras way, on the engine of whichever backend Keras runs on (KERAS_BACKEND):

- TensorFlow: tf.distribute.MirroredStrategy, the model and optimizer made under strategy.scope() and a
  custom step run with strategy.run; Keras's loss divides each replica's mean by the replica count (as
  tf.nn.compute_average_loss with the global batch), and Keras's optimizer sums the replicas' gradients.
- JAX: keras.distribution.DataParallel, a device mesh with one batch axis: Keras shards every batch
  over it and train.py's step runs unchanged as one jax.jit, whose SPMD partitioner adds the all-reduces.
- PyTorch: DistributedDataParallel around the Keras model (a torch.nn.Module on this backend), one
  process per replica, as keras.io's "Multi-GPU distributed training with PyTorch" does; train.py's
  optimizer applies DDP's averaged gradients.

On a CPU, simulate_devices gives TensorFlow logical CPU devices and JAX host devices before they start;
PyTorch's replicas are processes, connected by gloo. train.py's train_step is Keras's train_on_batch,
which cannot split a batch over tf.distribute's replicas or run through DDP: only JAX runs it as it is.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.spec import NetSpec

from .model import build, export_weights, load_weights, to_input
from .train import configure, cross_entropy, make_optimizer, train_step

ENGINE = {"tensorflow": "tf.distribute.MirroredStrategy (custom step under strategy.run)",
          "jax": "keras.distribution.DataParallel (a jax.sharding mesh over the batch axis, jax.jit)",
          "torch": "torch.distributed DistributedDataParallel around the Keras model (gloo on CPU, NCCL on GPU)",
          }[keras.backend.backend()]
# JAX: a batch sharded under jit is one global array, so batch norm's statistics are global already, with
# nothing to write (as nin_jax). PyTorch: torch.nn.SyncBatchNorm converts torch's BatchNorm*d modules only,
# and Keras accepts synchronized=True on TensorFlow only, so Keras on PyTorch has none: statistics per replica.
SYNC_BATCH_NORM = {"tensorflow": "keras.layers.BatchNormalization(synchronized=True)", "jax": "", "torch": ""
                   }[keras.backend.backend()]
DEFAULT_BATCH_NORM = "global" if keras.backend.backend() == "jax" else "per replica"


def simulate_devices(count: int) -> dict:
    """TensorFlow: `count` logical CPU devices; JAX: `count` host devices (jax_num_cpu_devices); both are
    read once, when the framework starts, so call it before any computation. PyTorch: nothing to set."""
    return _ENGINES[keras.backend.backend()][0](count)


def _dtype(precision: str) -> str:
    return "float64" if precision == "fp64" else "float32"


def _shard(images: np.ndarray, labels: np.ndarray, replica: int, devices: int) -> tuple:
    """The replica's contiguous share of a global batch, as a DistributedSampler without shuffling."""
    share = len(images) // devices
    mine = slice(replica * share, (replica + 1) * share)
    return images[mine], np.asarray(labels[mine], dtype=np.int32)


# --- TensorFlow: tf.distribute.MirroredStrategy ----------------------------------------------------------
def _tf_devices(count: int) -> dict:
    import tensorflow as tf  # each engine imports its own framework: a Keras process has one backend

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # TensorFlow has started: only its own device count can answer now
        have = len(tf.config.list_logical_devices("CPU"))
        if have < count:
            raise RuntimeError(f"TensorFlow has started with {have} CPU devices, fewer than {count}: call "
                               "simulate_devices before any TensorFlow computation") from None
        return {"tf_logical_cpu_devices": have}
    return {"tf_logical_cpu_devices": count}


@functools.cache
def _strategy(names: tuple) -> Any:
    """One MirroredStrategy per set of devices for the whole process, as TensorFlow expects: a second one
    over the same devices hands out the same collective instance keys, and their collectives collide."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(names))


def _tf_run(job: dict) -> tuple:
    """Model and optimizer under strategy.scope() (mirrored variables); each step's global batch split into
    per-replica shards, strategy.run of the step, the replicas' losses summed into the global mean. Unsynchronised,
    each replica keeps its own moving statistics (Keras makes them with aggregation "none"): replica 0's come back."""
    import tensorflow as tf

    devices = job["devices"]
    found = tf.config.list_logical_devices("GPU" if job["device"] == "gpu" else "CPU")
    if len(found) < devices:
        raise ValueError(f"TensorFlow sees {len(found)} {job['device']} devices, fewer than {devices} replicas"
                         + (" (simulate_devices first)" if job["device"] == "cpu" else ""))
    strategy = _strategy(tuple(d.name for d in found[:devices]))
    with strategy.scope():
        model = build(job["spec"], device=job["device"], dtype=_dtype(job["precision"]))
        load_weights(model, job["weights"])
        optimizer = make_optimizer(model, job["lrs"], momentum=job["momentum"], weight_decay=job["weight_decay"])
    if job["sync_batch_norm"]:  # build has no switch for it; the layer reads `synchronized` only when it runs
        for block in model.layers:
            for layer in getattr(block, "layers", []):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = cross_entropy(model(x, training=True), y)  # already / num_replicas_in_sync: see the docstring
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))  # all-reduced (summed) here
        return loss

    @tf.function  # not jit_compile: one XLA cluster cannot reach the other replicas' variables (other devices)
    def step(shards):
        return strategy.reduce("SUM", strategy.run(replica_step, args=shards), axis=None)

    def shards(images, labels):
        x = to_input(model, images)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tuple(map(tf.convert_to_tensor, _shard(x, labels, ctx.replica_id_in_sync_group, devices))))

    losses = [float(step(shards(images, labels))) for images, labels in job["batches"]]
    return losses, export_weights(model)


# --- JAX: keras.distribution.DataParallel ----------------------------------------------------------------
def _jax_devices(count: int) -> dict:
    """XLA's host device count, read when JAX's CPU backend starts (Keras does not start it on import), set
    through XLA_FLAGS so that this package imports no framework but Keras; checked through Keras."""
    flag = f"--xla_force_host_platform_device_count={count}"
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flag]))
    have = len(keras.distribution.list_devices("cpu"))
    if have < count:
        raise RuntimeError(f"JAX has started with {have} CPU devices, fewer than {count}: call "
                           "simulate_devices before any JAX computation")
    return {"xla_force_host_platform_device_count": have}


def _jax_run(job: dict) -> tuple:
    """Everything made and trained under a DataParallel scope: variables replicated over the mesh, every
    batch sharded along its batch axis by train_on_batch, train.py's step compiled (jax.jit) unchanged."""
    devices, found = job["devices"], keras.distribution.list_devices(job["device"])
    if len(found) < devices:
        raise ValueError(f"JAX sees {len(found)} {job['device']} devices, fewer than {devices} replicas"
                         + (" (simulate_devices first)" if job["device"] == "cpu" else ""))
    with keras.distribution.DataParallel(devices=found[:devices]).scope():
        model = build(job["spec"], device=job["device"], dtype=_dtype(job["precision"]), compiled=True)
        load_weights(model, job["weights"])
        optimizer = make_optimizer(model, job["lrs"], momentum=job["momentum"], weight_decay=job["weight_decay"])
        losses = [train_step(model, optimizer, to_input(model, images), labels)[0]
                  for images, labels in job["batches"]]
        return losses, export_weights(model)


# --- PyTorch: DistributedDataParallel, one process per replica -------------------------------------------
def _torch_processes(count: int) -> dict:
    """Nothing to set: on a CPU each replica is a process of its own, and gloo connects them."""
    return {"processes": count, "backend": "gloo"}


def _torch_replica(rank: int, job: dict) -> None:
    """One rank: its shard of every global batch through DDP (forward, then backward, which averages the
    gradients), train.py's optimizer applying them as Keras's own PyTorch step does; rank 0 writes."""
    # Keras has no data-parallel wrapper on PyTorch: keras.io's guide wraps the model in torch's own DDP,
    # the one place this package imports a framework other than Keras (and TensorFlow, Keras's engine there).
    import torch
    import torch.distributed as dist

    devices, gpu = job["devices"], job["device"] == "gpu"
    where = f"gpu:{rank}" if gpu else "cpu"  # Keras's name of this rank's device
    configure(job["device"], job["precision"])
    dist.init_process_group("nccl" if gpu else "gloo", init_method=job["rendezvous"], rank=rank, world_size=devices)
    try:
        if gpu:
            torch.cuda.set_device(rank)
        model = build(job["spec"], device=where, dtype=_dtype(job["precision"]))
        load_weights(model, job["weights"])
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if gpu else None)
        optimizer = make_optimizer(model, job["lrs"], momentum=job["momentum"], weight_decay=job["weight_decay"])
        variables = model.trainable_variables
        losses = []
        for images, labels in job["batches"]:
            x, y = _shard(to_input(model, images), labels, rank, devices)
            with keras.device(where):
                loss = cross_entropy(ddp(keras.ops.convert_to_tensor(x), training=True), keras.ops.convert_to_tensor(y))
            model.zero_grad()
            loss.backward()
            optimizer.apply([v.value.grad for v in variables], variables)
            total = loss.detach().to(torch.float64)
            dist.all_reduce(total)  # each replica's mean over equal shards: their mean is the global mean
            losses.append(total.item() / devices)
        if rank == 0:
            np.savez(job["out"], losses=np.array(losses), **{f"w/{k}": v for k, v in export_weights(model).items()})
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()  # every rank has finished before any leaves
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: freeing DDP's reducer then destroys gloo's process group,
    # whose destructor joins a thread that waits for the GIL this thread holds (a hang seen here, now and then).
    os._exit(0)



def _torch_run(job: dict) -> tuple:
    """`devices` ranks started with torch.multiprocessing, rendezvous in a temporary file; rank 0's result."""
    import torch.multiprocessing as mp

    if job["sync_batch_norm"]:
        raise NotImplementedError("Keras on PyTorch has no synchronised batch norm (SyncBatchNorm converts "
                                  "torch's BatchNorm*d only; synchronized=True is TensorFlow's)")
    with tempfile.TemporaryDirectory() as tmp:  # a rendezvous file, not a port: no race with another job
        job = {**job, "out": str(Path(tmp) / "rank0.npz"), "rendezvous": f"file://{tmp}/rendezvous"}
        try:
            mp.start_processes(_torch_replica, nprocs=job["devices"], start_method="spawn", args=(job,))
        except mp.ProcessRaisedException as e:  # its message is a rank's whole traceback: keep the error's line
            raise RuntimeError(f"a replica failed: {str(e).strip().splitlines()[-1]}") from None
        with np.load(job["out"]) as z:
            return list(z["losses"]), {k[2:]: z[k] for k in z.files if k.startswith("w/")}


# Keras backend -> (simulate_devices, run)
_ENGINES = {"tensorflow": (_tf_devices, _tf_run), "jax": (_jax_devices, _jax_run),
            "torch": (_torch_processes, _torch_run)}


def data_parallel_run(spec: NetSpec, weights: dict, batches: list, lrs: np.ndarray, *, devices: int, momentum: float,
                      weight_decay: float, device: str, precision: str, sync_batch_norm: bool) -> tuple:
    """The active Keras backend's engine on every global batch split over `devices` replicas: (the global
    batch's mean loss per step, the final canonical weights and running statistics, replica 0's)."""
    for images, _ in batches:
        if len(images) % devices:
            raise ValueError(f"a global batch of {len(images)} does not split over {devices} replicas")
    job = {"spec": spec, "weights": dict(weights), "batches": list(batches), "lrs": np.asarray(lrs),
           "devices": devices, "momentum": momentum, "weight_decay": weight_decay, "device": device,
           "precision": precision, "sync_batch_norm": sync_batch_norm}
    return _ENGINES[keras.backend.backend()][1](job)


def launch(devices: int, module: str, args: list, *, nodes: int = 1, node_rank: int = 0,
           rendezvous: str = "") -> None:
    """Nothing to start: on TensorFlow and JAX one process drives every replica (fit under the engine's scope);
    Keras's fit has no data-parallel engine on PyTorch (loop.make_trainer says so). Across machines nothing is
    joined: loop.make_trainer refuses nodes > 1 (NODES_REFUSED)."""
    return None


def process_index() -> int:
    """0: one process holds every replica."""
    return 0
