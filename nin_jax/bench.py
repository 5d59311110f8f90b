"""What only Flax and JAX know about timing NiN: the step to time and its plain peer, how to wait for the
device, peak memory, an independent timing loop (jax.lax written from the spec), the APIs the suite relies on.

benchmarks/ owns the timing loop, warm-up, windows, statistics and results; see docs/architecture.md.
The compiled path is what the Flax docs advise for speed: split the model (and optimizer) into a
graph definition and a state once, then jax.jit a pure step on the state with its buffers donated;
"eager" runs the same step op by op. bf16 builds the network with bfloat16 compute (parameters and
the loss stay float32). Data is NHWC, Flax's own layout. XLA cannot reset its peak-memory counter:
the number covers the process (the runner gives each configuration its own).
"""

from __future__ import annotations

import inspect
import os
import time
from functools import partial

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import spec as specs
from common import weights
from common.spec import NetSpec

from .model import build, default_device
from .train import cross_entropy, make_optimizer

LR = 0.05  # the book's rate, plain SGD: any rate times alike (benchmarks.runner predicts no momentum buffer)


def make_step(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str, steps: int):
    """(step, settings): step() runs one training step (forward, backward, SGD update) or one
    inference forward on synthetic data placed on the device once."""
    jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else "tensorfloat32")
    dev = default_device(device)
    model = build(spec, device=device, compute_dtype="bfloat16" if precision == "bf16" else None)
    rng = np.random.default_rng(0)
    c, h, w = spec.input_shape
    x = jax.device_put(rng.standard_normal((batch_size, h, w, c), dtype=np.float32), dev)
    y = jax.device_put(rng.integers(0, spec.num_classes, batch_size).astype(np.int32), dev)
    compiled = compile == "compiled"

    if mode == "train":
        model.train()
        graphdef, state = nnx.split((model, make_optimizer(model, np.full(steps, LR))))

        def train_step(state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x).astype(x.dtype), y))(model)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        run = jax.jit(train_step, donate_argnums=0) if compiled else train_step

        def step():
            nonlocal state
            state, loss = run(state, x, y)
            return state, loss
    else:
        model.eval()
        graphdef, state = nnx.split(model)

        def infer_step(state, x):
            return nnx.merge(graphdef, state)(x)

        run = jax.jit(infer_step) if compiled else infer_step

        def step():
            return run(state, x)

    settings = {
        "device": str(dev),
        "compile": "jax.jit (XLA)" if compiled else None,
        "donated_state": compiled and mode == "train",
        "layout": "NHWC",
        "compute_dtype": "bfloat16" if precision == "bf16" else "float32",
        "param_dtype": "float32",
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "optimizer": f"SGD(lr={LR}, momentum=0.0, weight_decay=0.0)" if mode == "train" else None,
    }
    return step, settings


def plain_step(*, mode: str, batch_size: int, device: str):
    """(step, settings): the d2l JAX tab's network in Flax NNX (fixed channel counts, Flax's default
    initialisers), with its train step under nnx.jit."""
    def nin_block(in_channels, out_channels, kernel_size, strides, padding, rngs):  # noqa: PLR0917 (the chapter's)
        return nnx.Sequential(
            nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=strides, padding=padding,
                     rngs=rngs), nnx.relu,
            nnx.Conv(out_channels, out_channels, (1, 1), rngs=rngs), nnx.relu,
            nnx.Conv(out_channels, out_channels, (1, 1), rngs=rngs), nnx.relu)

    rngs = nnx.Rngs(0)
    pool = partial(nnx.max_pool, window_shape=(3, 3), strides=(2, 2))
    with jax.default_device(default_device(device)):
        net = nnx.Sequential(
            nin_block(1, 96, 11, 4, "VALID", rngs), pool,
            nin_block(96, 256, 5, 1, "SAME", rngs), pool,
            nin_block(256, 384, 3, 1, "SAME", rngs), pool,
            nnx.Dropout(0.5, rngs=rngs),
            nin_block(384, 10, 3, 1, "SAME", rngs),
            lambda x: jnp.mean(x, axis=(1, 2)))
        optimizer = nnx.Optimizer(net, optax.sgd(LR), wrt=nnx.Param)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch_size, 224, 224, 1), dtype=np.float32))
        y = jnp.asarray(np.random.default_rng(1).integers(0, 10, batch_size))

    @nnx.jit
    def train_step(net, optimizer, x, y):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    @nnx.jit
    def predict(net, x):
        return net(x)

    if mode == "train":
        net.train()
    else:
        net.eval()

    def step():
        return train_step(net, optimizer, x, y) if mode == "train" else predict(net, x)

    return step, {"code": "d2l JAX tab (Flax NNX)", "device": str(x.devices())}


def synchronize(device: str, result=None) -> None:
    """Wait for the last step's result: JAX dispatches asynchronously, one step after another."""
    if result is not None:
        jax.block_until_ready(result)


def reset_peak_memory(device: str) -> None:
    """XLA keeps no resettable peak: each configuration runs in a fresh process instead."""


def peak_memory_bytes(device: str) -> int | None:
    return (default_device(device).memory_stats() or {}).get("peak_bytes_in_use") if device == "gpu" else None


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, jax.errors.JaxRuntimeError) and ("RESOURCE_EXHAUSTED" in text or
                                                              "out of memory" in text.lower())


def timing_loop(spec: NetSpec, *, mode: str, batch_size: int, precision: str, compile: str, device: str,
                warmup: int, steps: int) -> float | None:
    """A few lines of jax.lax written from the spec, apart from nin_jax's model and make_step (NHWC as
    Flax, the same convolutions and so the same FLOPs), in one plain loop: JAX dispatches asynchronously,
    so a step that left work out of its result would show here. None for the plain code."""
    if compile == "plain":
        return None
    dev = default_device(device)
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    prec = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
    rng = np.random.default_rng(0)
    params = {k: weights.oihw_to_hwio(v) if v.ndim == 4 else v for k, v in weights.init(spec).items()}
    params = jax.device_put(params, dev)  # NHWC / HWIO, the layout Flax (and so nin_jax) uses
    c, h, w = spec.input_shape
    x = jax.device_put(rng.standard_normal((batch_size, h, w, c), dtype=np.float32), dev)
    y = jax.device_put(rng.integers(0, spec.num_classes, batch_size), dev)
    forward = partial(_lax_forward, spec=spec, dtype=dtype, precision=prec)

    def loss(p, x, y, key):
        logp = jax.nn.log_softmax(forward(p, x, key, train=True))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def train(p, key, x, y):  # data as arguments: jit would bake closed-over arrays into the program
        key, sub = jax.random.split(key)
        grads = jax.grad(loss)(p, x, y, sub)
        return jax.tree.map(lambda w, g: w - LR * g, p, grads), key

    outputs = []  # every step's logits, so that the wait at the end covers every step
    if mode == "train":
        fn = jax.jit(train, donate_argnums=0) if compile == "compiled" else train

        def step(state):
            return fn(*state, x, y)
        state = (params, jax.random.key(0))
    else:
        def infer(p, x):
            return forward(p, x, None, train=False)
        fn = jax.jit(infer) if compile == "compiled" else infer

        def step(state):
            outputs.append(fn(state, x))
            return state
        state = params
    for _ in range(warmup + 1):
        state = step(state)
    jax.block_until_ready((state, outputs))
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    jax.block_until_ready((state, outputs))
    return time.perf_counter() - start


def _lax_forward(p: dict, x, key, *, spec: NetSpec, train: bool, dtype, precision):
    """The spec's network in jax.lax on NHWC data and HWIO kernels; logits in float32."""
    x, b = x.astype(dtype), 0
    for layer in spec.layers:
        if isinstance(layer, specs.NiNBlock):
            for j, (_, _k, s, pad) in enumerate(layer.convs):
                conv = f"block{b}.conv{j}"
                x = jax.lax.conv_general_dilated(x, p[f"{conv}.weight"].astype(dtype), (s, s), [(pad, pad)] * 2,
                                                 precision=precision, dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if f"{conv}.bias" in p:  # none before batch norm
                    x = x + p[f"{conv}.bias"].astype(dtype)
                if layer.batch_norm:
                    bn = f"block{b}.bn{j}"
                    mean, var = ((x.mean((0, 1, 2)), x.var((0, 1, 2))) if train
                                 else (p[f"{bn}.running_mean"], p[f"{bn}.running_var"]))
                    scale = p[f"{bn}.gamma"] * jax.lax.rsqrt(var + spec.bn_eps)
                    x = ((x - mean) * scale + p[f"{bn}.beta"]).astype(dtype)
                if j < len(layer.convs) - 1 or layer.relu_last:
                    x = jax.nn.relu(x)
            b += 1
        elif isinstance(layer, specs.MaxPool):
            k, s, pad = layer.kernel_size, layer.stride, layer.padding
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
                                      [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        elif isinstance(layer, specs.Dropout) and train:
            key, sub = jax.random.split(key)
            x = jnp.where(jax.random.bernoulli(sub, 1 - layer.rate, x.shape), x / (1 - layer.rate), 0)
        elif isinstance(layer, specs.GlobalAvgPool):
            x = x.mean((1, 2))  # (N, C): Flatten has nothing left to do
    return x.astype(jnp.float32)


def api_checks(device: str) -> tuple[dict, list[str]]:
    """The Flax NNX, optax and JAX APIs nin_jax uses (Flax's Optimizer changed at 0.11)."""
    checks, problems = {}, []
    init = inspect.signature(nnx.Optimizer.__init__).parameters
    update = list(inspect.signature(nnx.Optimizer.update).parameters)
    checks["nnx.Optimizer(model, tx, wrt=)"] = "wrt" in init
    checks["optimizer.update(model, grads)"] = update[1:3] == ["model", "grads"]
    if not (checks["nnx.Optimizer(model, tx, wrt=)"] and checks["optimizer.update(model, grads)"]):
        problems.append(f"flax {flax.__version__}: nnx.Optimizer is the older one (no wrt=, update(grads)); "
                        "nin_jax needs flax >= 0.11")
    for name in ("value_and_grad", "jit", "split", "merge", "state", "reseed", "Sequential", "BatchNorm", "Dropout"):
        checks[f"nnx.{name}"] = hasattr(nnx, name)
        if not checks[f"nnx.{name}"]:
            problems.append(f"flax {flax.__version__} has no nnx.{name}: nin_jax uses it")
    checks["nnx.Variable[...]"] = hasattr(nnx.Variable, "__getitem__")
    for name in ("add_decayed_weights", "sgd", "chain", "softmax_cross_entropy_with_integer_labels"):
        checks[f"optax.{name}"] = hasattr(optax, name)
        if not checks[f"optax.{name}"]:
            problems.append(f"optax {optax.__version__} has no {name}: nin_jax uses it")
    checks["jax_default_matmul_precision"] = hasattr(jax.config, "jax_default_matmul_precision")
    checks["platforms"] = sorted({d.platform for d in jax.devices()})
    return checks, problems


def matmul_peak(device: str) -> dict | None:
    """None: not measured with JAX (the GPU session takes the rate from the backend it probes first)."""
    return None
