"""Canonical weights: one dict of float32 NumPy arrays, NCHW / OIHW, with stable names.

    block{b}.conv{j}.weight   (out, in, k, k)     block{b}.conv{j}.bias  (out,)
    block{b}.bn{j}.gamma / .beta / .running_mean / .running_var   (out,)   (batch-norm variants)

Every backend loads and exports exactly this; files are safetensors (no pickle anywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .calc import param_shapes
from .fsio import atomic_path
from .spec import NetSpec


class WeightsError(ValueError):
    """Weights that do not fit a spec, or a file that cannot be read; the message names which."""


def _xavier_uniform(rng, shape):
    cout, cin, k, _ = shape
    bound = np.sqrt(6.0 / (cin * k * k + cout * k * k))  # Glorot: fan_in + fan_out of the receptive field
    return rng.uniform(-bound, bound, size=shape)


def _normal(rng, shape, std):
    return rng.normal(0.0, std, size=shape)


def init(spec: NetSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The spec's own init scheme (Xavier for the chapter, Gaussian std spec.init_std for the paper),
    zero biases, batch norm at identity. Same seed, same weights, on every machine."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(spec).items():
        if name.endswith(".weight"):
            w = _xavier_uniform(rng, shape) if spec.init == "xavier_uniform" else _normal(rng, shape, spec.init_std)
        elif name.endswith((".gamma", ".running_var")):
            w = np.ones(shape)
        else:  # bias, beta, running_mean
            w = np.zeros(shape)
        out[name] = w.astype(np.float32)
    return out


def random_weights(spec: NetSpec, seed: int) -> dict[str, np.ndarray]:
    """init() with every other tensor random too (biases, batch-norm scale, shift and statistics),
    so that a backend that drops a bias or misreads a running variance cannot pass a comparison."""
    rng = np.random.default_rng(seed + 1_000_003)
    out = init(spec, seed)
    for name, w in out.items():
        if name.endswith(".bias") or name.endswith(".beta") or name.endswith(".running_mean"):
            out[name] = rng.normal(0.0, 0.1, size=w.shape).astype(np.float32)
        elif name.endswith(".gamma"):
            out[name] = rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32)
        elif name.endswith(".running_var"):
            out[name] = rng.uniform(0.5, 2.0, size=w.shape).astype(np.float32)
    return out


def check(spec: NetSpec, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise WeightsError naming the first parameter that is missing, extra or of the wrong shape."""
    check_shapes(param_shapes(spec), weights, source, spec.name)


def check_shapes(expected: Mapping[str, tuple], weights: Mapping[str, np.ndarray], source: str,
                 network: str = "the model") -> None:
    """The same check against the canonical shapes a built model reports (backends' load_weights)."""
    missing = [n for n in expected if n not in weights]
    extra = [n for n in weights if n not in expected]
    if missing:
        raise WeightsError(f"{source}: missing parameter(s) for {network}: {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise WeightsError(f"{source}: parameter(s) {extra[:5]} are not in {network}; "
                           f"expected names like {next(iter(expected))!r}")
    for name, shape in expected.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise WeightsError(f"{source}: {name} has shape {got}, {network} expects {tuple(shape)} (OIHW)")
        if not np.all(np.isfinite(weights[name])):
            raise WeightsError(f"{source}: {name} holds NaN or infinite values")


def save(path: str | Path, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:  # never a half-written file under the real name
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}, str(tmp),
                  metadata={k: str(v) for k, v in (metadata or {}).items()})


def load(path: str | Path, spec: NetSpec | None = None) -> dict[str, np.ndarray]:
    """Read a safetensors file; with a spec, check every name and shape against it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"weights file {path} is not a readable safetensors file: {e}") from None
    if spec is not None:
        check(spec, weights, source=str(path))
    return weights


# --- layout at the boundary of the NHWC frameworks (Keras, Flax) ---------------------------
def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
