"""Data-parallel NiN the PyTorch way: one process per replica, torch.distributed's process group
(gloo on a CPU, NCCL on GPUs) and DistributedDataParallel around the model, which averages the
gradients with an all-reduce during backward. train.py's optimizer and train_step run unchanged.

`nin train --devices N` starts the ranks with torchrun's launcher (launch; loop.py joins the group and
wraps the model); the data-parallel case starts them here with torch.multiprocessing, the rendezvous a
file (FileStore) in a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from common.spec import NetSpec

from .model import build, export_weights, load_weights, to_input
from .train import configure, make_optimizer, train_step

ENGINE = "torch.distributed DistributedDataParallel (gloo on CPU, NCCL on GPU)"
SYNC_BATCH_NORM = "torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)"
DEFAULT_BATCH_NORM = "per replica"  # nn.BatchNorm2d normalises each process's shard by its own statistics


def simulate_devices(count: int) -> dict:
    """Nothing to set: on a CPU each replica is a process of its own, and gloo connects them."""
    return {"processes": count, "backend": "gloo"}



def _replica(rank: int, job: dict) -> None:
    """One rank: its shard of every global batch, DDP's averaged gradients, rank 0 writes the result."""
    devices, spec, weights, batches, lrs = job["devices"], job["spec"], job["weights"], job["batches"], job["lrs"]
    device, precision, sync_batch_norm, out = job["device"], job["precision"], job["sync_batch_norm"], job["out"]
    configure(device, precision)
    dist.init_process_group("nccl" if device == "gpu" else "gloo", init_method=job["rendezvous"], rank=rank,
                            world_size=devices)
    try:
        where = f"cuda:{rank}" if device == "gpu" else "cpu"
        model = build(spec, device=where, dtype="float64" if precision == "fp64" else "float32")
        load_weights(model, weights)
        if sync_batch_norm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device == "gpu" else None)
        optimizer = make_optimizer(ddp, lrs, momentum=job["momentum"], weight_decay=job["weight_decay"])
        losses = []
        for images, labels in batches:
            share = len(images) // devices  # contiguous shards, as a DistributedSampler without shuffling
            mine = slice(rank * share, (rank + 1) * share)
            loss, _ = train_step(ddp, optimizer, to_input(model, images[mine]), labels[mine])
            total = torch.tensor([loss], dtype=torch.float64, device=where)
            dist.all_reduce(total)  # each replica's mean over equal shards: their mean is the global mean
            losses.append(total.item() / devices)
        if rank == 0:
            np.savez(out, losses=np.array(losses), **{f"w/{k}": v for k, v in export_weights(model).items()})
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()  # every rank has finished before any leaves
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: freeing DDP's reducer then destroys gloo's process group,
    # whose destructor joins a thread that waits for the GIL this thread holds (a hang seen here, now and then).
    os._exit(0)


def data_parallel_run(spec: NetSpec, weights: dict, batches: list, lrs: np.ndarray, *, devices: int, momentum: float,
                      weight_decay: float, device: str, precision: str, sync_batch_norm: bool) -> tuple:
    """`devices` ranks started with torch.multiprocessing, rendezvous in a temporary file; rank 0's result."""
    for images, _ in batches:
        if len(images) % devices:
            raise ValueError(f"a global batch of {len(images)} does not split over {devices} replicas")
    if sync_batch_norm and device != "gpu":
        raise NotImplementedError("torch.nn.SyncBatchNorm works on GPUs only (NCCL): on a CPU, DDP's batch norm is "
                                  "per replica")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.npz")
        job = {"devices": devices, "spec": spec, "weights": dict(weights), "batches": list(batches),
               "lrs": np.asarray(lrs), "momentum": momentum, "weight_decay": weight_decay, "device": device,
               "precision": precision, "sync_batch_norm": sync_batch_norm, "out": out,
               "rendezvous": f"file://{tmp}/rendezvous"}  # a file, not a port: no race with another job
        try:
            mp.start_processes(_replica, nprocs=devices, start_method="spawn", args=(job,))
        except mp.ProcessRaisedException as e:  # its message is a rank's whole traceback: keep the error's line
            raise RuntimeError(f"a replica failed: {str(e).strip().splitlines()[-1]}") from None
        with np.load(out) as z:
            return list(z["losses"]), {k[2:]: z[k] for k in z.files if k.startswith("w/")}


def launch(devices: int, module: str, args: list, *, nodes: int = 1, node_rank: int = 0,
           rendezvous: str = "") -> int | None:
    """`python -m module args` in `devices` processes on this machine, as `torchrun --standalone
    --nproc-per-node devices -m module args` starts them (the same launcher, called as a library so that a
    failed rank is one line here, its exit status kept). On `nodes` machines, as `torchrun --nnodes nodes
    --node-rank node_rank --rdzv-backend static --rdzv-endpoint rendezvous` does: node 0's launcher hosts the
    store at that address, and ranks are numbered node by node. None inside a rank: torchrun set WORLD_SIZE."""
    if "WORLD_SIZE" in os.environ:
        return None
    meeting = ({"rdzv_backend": "static", "rdzv_endpoint": rendezvous, "rdzv_configs": {"rank": node_rank},
                "run_id": f"nin-{rendezvous}"}  # every node's the same: the store's keys are kept under it
               if nodes > 1 else {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0", "run_id": uuid.uuid4().hex})
    config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=devices, max_restarts=0,
                          monitor_interval=0.1, **meeting)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", module, *args)
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        print(f"{module}: replica {rank} of {devices * nodes} exited with status {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def process_index() -> int:
    """torch.distributed's rank once the group is joined; torchrun's RANK before; 0 outside a launch."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
