"""The backends, as data: what users type, which package implements it, what it needs, where it runs.

Nothing here imports or loads a backend: the drivers (conformance, benchmarks, training) start
each backend in its own process with the interpreter and environment named here
(harness.processes), and that process imports the backend's package. What every backend package
provides, function by function, is the contract in docs/architecture.md; tests/test_mirror.py
holds the four packages to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


BACKENDS = {
    b.name: b for b in (
        Backend("mxnet", "nin_mxnet", ("mxnet",), ".venv-mxnet", "MXNet Gluon", ("eager", "compiled")),
        Backend("torch", "nin_torch", ("torch",), ".venv", "PyTorch", ("eager", "compiled")),
        Backend("keras-tf", "nin_tf", ("keras", "tensorflow"), ".venv", "Keras on TensorFlow",
                ("eager", "graph", "compiled"), (("KERAS_BACKEND", "tensorflow"),)),
        Backend("jax", "nin_jax", ("jax", "flax", "optax"), ".venv", "Flax NNX on JAX", ("eager", "compiled")),
        Backend("keras-jax", "nin_tf", ("keras", "jax"), ".venv", "Keras on JAX", ("eager", "compiled"),
                (("KERAS_BACKEND", "jax"),)),
        Backend("keras-torch", "nin_tf", ("keras", "torch"), ".venv", "Keras on PyTorch", ("eager", "compiled"),
                (("KERAS_BACKEND", "torch"),)),
    )
}


class BackendError(ValueError):
    """An unknown backend name; the message lists the known ones."""


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]
