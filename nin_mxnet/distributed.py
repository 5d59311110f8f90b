"""Data-parallel NiN the Gluon way: one process, the parameters on several contexts (mx.cpu(i) on a CPU,
mx.gpu(i) on GPUs), every global batch split over them with gluon.utils.split_and_load, forward and
backward per context under autograd.record(), and train.py's Trainer with a kvstore ("device") that
sums the contexts' gradients before each context applies the same SuiteSGD update. Trainer.step with
the global batch size turns the sum of per-example gradients into the global mean.

Across machines the kvstore is "dist_sync", with MXNet's tools/launch.py starting the workers and
servers (DMLC_* variables; docs/distributed.md).
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import SyncBatchNorm

from common.spec import NetSpec

from .model import build, export_weights, load_weights, to_input
from .train import cross_entropy, make_optimizer

ENGINE = "Gluon contexts with split_and_load and a kvstore ('device'; 'dist_sync' across machines)"
SYNC_BATCH_NORM = "mxnet.gluon.contrib.nn.SyncBatchNorm(num_devices=N) (GPUs, float32)"
DEFAULT_BATCH_NORM = "per replica"  # nn.BatchNorm normalises each context's shard by its own statistics


def simulate_devices(count: int) -> dict:
    """Nothing to set: MXNet addresses mx.cpu(i) for any i, each context a stream of the CPU's engine."""
    return {"contexts": count}


def _contexts(device: str, devices: int) -> list:
    if device == "gpu" and mx.context.num_gpus() < devices:
        raise ValueError(f"MXNet sees {mx.context.num_gpus()} GPUs, fewer than {devices} replicas")
    return [mx.gpu(i) if device == "gpu" else mx.cpu(i) for i in range(devices)]


def _synchronised(model: nn.HybridSequential, spec: NetSpec, devices: int) -> None:
    """Every nn.BatchNorm replaced by a SyncBatchNorm with the spec's settings and the layer's values (build
    has no switch: Gluon's users pick the layer class). Sequential.add keys a child by its position."""
    blocks = [block for block in model if isinstance(block, nn.HybridSequential)]
    for block, (_, layer) in zip(blocks, spec.blocks()):
        norm = spec.norm(layer)
        for position, child in enumerate(block):
            if type(child) is nn.BatchNorm:
                sync = SyncBatchNorm(in_channels=child.gamma.shape[0], num_devices=devices, momentum=norm.momentum,
                                     epsilon=norm.eps)
                sync.initialize(ctx=child.gamma.list_ctx())
                sync.cast(child.gamma.dtype)
                for name in ("gamma", "beta", "running_mean", "running_var"):
                    getattr(sync, name).set_data(getattr(child, name).data())
                block.register_child(sync, str(position))


def data_parallel_run(spec: NetSpec, weights: dict, batches: list, lrs: np.ndarray, *, devices: int, momentum: float,
                      weight_decay: float, device: str, precision: str, sync_batch_norm: bool) -> tuple:
    """train.py's Trainer (kvstore "device") over `devices` contexts, each global batch split evenly; the
    losses are the global batch's means, the weights and running statistics context 0's."""
    for images, _ in batches:
        if len(images) % devices:
            raise ValueError(f"a global batch of {len(images)} does not split over {devices} replicas")
    if sync_batch_norm and (device != "gpu" or precision == "fp64"):  # both measured with MXNet 1.9.1
        raise NotImplementedError("Gluon's SyncBatchNorm is for GPUs in float32: on CPU contexts its cross-context "
                                  "barrier deadlocks, and its kernel refuses float64")
    contexts = _contexts(device, devices)
    model = build(spec, device=device, dtype="float64" if precision == "fp64" else "float32")
    load_weights(model, weights)
    if sync_batch_norm:
        _synchronised(model, spec, devices)
    model.collect_params().reset_ctx(contexts)  # a copy of every parameter on each context
    # "device" sums the gradients on the contexts' own devices ("local": through the CPU); across machines it is
    # "dist_sync", every worker's Trainer pushing to the parameter servers that tools/launch.py starts
    trainer = make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay, kvstore="device")
    losses = []
    for images, labels in batches:
        xs = gluon.utils.split_and_load(to_input(model, images), contexts, even_split=True)
        ys = gluon.utils.split_and_load(mx.nd.array(labels, dtype="int32"), contexts, even_split=True)
        with autograd.record():
            per_example = [cross_entropy(model(x), y) for x, y in zip(xs, ys)]
        autograd.backward(per_example)
        trainer.step(len(images))  # the kvstore's sum of every context's gradient, over the global batch
        losses.append(sum(loss.sum().asscalar().item() for loss in per_example) / len(images))
    with mx.Context(contexts[0]):  # Parameter.data() without a context reads the current one
        return losses, export_weights(model)


def launch(devices: int, module: str, args: list, *, nodes: int = 1, node_rank: int = 0,
           rendezvous: str = "") -> None:
    """Nothing to start: one process drives every context. Across machines, MXNet's tools/launch.py starts the
    workers, servers and scheduler of a "dist_sync" kvstore (docs/distributed.md); loop.make_trainer refuses
    nodes > 1, so nothing is joined here."""
    return None


def process_index() -> int:
    """0: one process holds every context."""
    return 0
