"""How a `nin train` run is spread over devices and machines, on the backend's own engine (its
distributed.py): which replicas this process holds, whether it writes the run, and how a replica leaves."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from harness import processes

from . import recipe as recipes
from .recipe import Settings


@dataclass(frozen=True)
class Replicas:
    """How a run is spread: `devices` replicas on each of `nodes` machines, on the framework's engine
    (distributed.py); `primary` in the one process that writes the run's files and shows its progress."""
    devices: int = 1
    nodes: int = 1
    primary: bool = True
    engine: str = ""  # the engine's name (distributed.ENGINE) when there are several replicas

    @property
    def total(self) -> int:
        return self.devices * self.nodes


def spread(s: Settings, *, devices: int, nodes: int, node_rank: int, rendezvous: str,
           argv: list[str]) -> Replicas | int:
    """One device: Replicas(). Several: the backend's distributed.py starts a process per replica where its
    engine needs that (its launcher's exit status comes back) and joins the other machines, or makes a CPU
    show `devices` devices."""
    recipes.check_devices(s, devices, s.train_limit or 60_000, nodes=nodes)
    if devices * nodes == 1:
        return Replicas()
    parallel = processes.load(s.backend, "distributed")
    code = parallel.launch(devices, "training.worker", argv, nodes=nodes, node_rank=node_rank,
                           rendezvous=rendezvous)
    if code is not None:
        return code
    if s.device == "cpu":
        parallel.simulate_devices(devices)
    return Replicas(devices, nodes, parallel.process_index() == 0, parallel.ENGINE)


def leave(code: int) -> None:
    """A replica of a data-parallel run leaves without the interpreter's teardown: freeing DDP's reducer
    destroys gloo's process group, whose destructor can wait for the GIL this thread holds (seen here)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
