"""An independent check of the harness's clock: one plain loop, timed once from end to end.

No harness code is used: the step is written out here, the loop is plain Python, and the device is
synchronised only before and after the whole loop (time.perf_counter around it). PyTorch builds
the model with nin_torch.model.build; JAX, when importable, runs a few lines of jax.lax written
from the spec (NHWC as Flax, the same convolutions and so the same FLOPs as nin_jax). The loop runs
windows x steps steps after the same warm-up, and its images/s is set beside the harness's
median: on a GPU they must agree within TOLERANCE.

    python -m benchmarks.verify_timing --backend torch --variant d2l --mode train --batch-size 128 --device gpu
    python -m benchmarks.verify_timing --compare benchmarks/results/<file>.json   (re-times, rewrites the file)
    nin bench --verify ...                                                      (the same, in the sweep)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from common import spec as specs
from harness import processes

from . import worker

TOLERANCE = 0.10  # |harness / loop - 1|


def torch_loop(spec, config: dict, steps: int) -> float:
    mode, batch_size, precision, device = config["mode"], config["batch_size"], config["precision"], config["device"]
    warmup = config["warmup"]
    import torch
    import torch.nn.functional as F

    from nin_torch.model import build

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    model = build(spec, device=device)
    x = torch.randn(batch_size, *spec.input_shape, device=dev)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
    compile = config["compile"] == "compiled"
    if compile and dev.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    config = specs.recipe(spec.name)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    model.train(mode == "train")

    def step():
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        if mode == "infer":
            with torch.inference_mode(), amp:
                net(x)
            return
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup + 1):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start


def jax_loop(spec, config: dict, steps: int) -> float:
    mode, batch_size, precision, device = config["mode"], config["batch_size"], config["precision"], config["device"]
    warmup = config["warmup"]
    import jax
    import jax.numpy as jnp
    import numpy as np

    from common import weights

    compile = config["compile"] == "compiled"
    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    prec = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
    rng = np.random.default_rng(0)
    params = {k: weights.oihw_to_hwio(v) if v.ndim == 4 else v for k, v in weights.init(spec).items()}
    params = jax.device_put(params, dev)  # NHWC / HWIO, the layout Flax (and so nin_jax) uses
    c, h, w = spec.input_shape
    x = jax.device_put(rng.standard_normal((batch_size, h, w, c), dtype=np.float32), dev)
    y = jax.device_put(rng.integers(0, spec.num_classes, batch_size), dev)

    def forward(p, x, key, train):
        x, b = x.astype(dtype), 0
        for layer in spec.layers:
            if isinstance(layer, specs.NiNBlock):
                for j, (_, _k, s, pad) in enumerate(layer.convs):
                    conv = f"block{b}.conv{j}"
                    x = jax.lax.conv_general_dilated(x, p[f"{conv}.weight"].astype(dtype), (s, s), [(pad, pad)] * 2,
                                                     precision=prec, dimension_numbers=("NHWC", "HWIO", "NHWC"))
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

    def loss(p, x, y, key):
        logp = jax.nn.log_softmax(forward(p, x, key, True))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    lr = specs.recipe(spec.name).lr  # plain SGD: momentum's few bytes per weight do not change the timing

    def train(p, key, x, y):  # data as arguments: jit would bake closed-over arrays into the program
        key, sub = jax.random.split(key)
        grads = jax.grad(loss)(p, x, y, sub)
        return jax.tree.map(lambda w, g: w - lr * g, p, grads), key

    def infer(p, x):
        return forward(p, x, None, False)

    outputs = []  # every step's logits, so that the wait at the end covers every step
    if mode == "train":
        fn = jax.jit(train, donate_argnums=0) if compile else train
        state = (params, jax.random.key(0))

        def step(state):
            return fn(*state, x, y)
    else:
        fn = jax.jit(infer) if compile else infer
        state = params

        def step(state):
            outputs.append(fn(state, x))
            return state

    for _ in range(warmup + 1):
        state = step(state)
    jax.block_until_ready((state, outputs))
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    jax.block_until_ready((state, outputs))
    return time.perf_counter() - start


LOOPS = {"torch": torch_loop, "jax": jax_loop}


def run(config: dict) -> dict:
    """Time windows x steps steps in one plain loop (in the backend's own process); never raises."""
    backend = config["backend"]
    if backend not in LOOPS:
        return {"status": "skipped", "reason": f"no independent loop for {backend} (only {sorted(LOOPS)})"}
    missing = processes.missing_here(backend)
    if missing:
        return {"status": "skipped", "reason": f"{', '.join(missing)} not installed for {sys.executable}"}
    n = config["windows"] * config["steps"]
    try:
        seconds = LOOPS[backend](specs.get(config["variant"]), config, n)
    except Exception as e:
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"[:2000]}
    return {"status": "ok", "images_per_second": config["batch_size"] * n / seconds, "seconds": seconds, "steps": n}


def check(results: list[dict], timeout: float | None = None) -> list[dict]:
    """Time every "ok" result again in a fresh process of its backend; adds r["verify"] to each."""
    for r in results:
        if r["status"] != "ok":
            continue
        config = {k: r[k] for k in worker.CONFIG_KEYS}
        loop = processes.call(r["backend"], "benchmarks.verify_timing", worker.arguments(config), timeout)
        if loop["status"] == "ok":
            ratio = r["images_per_second"] / loop["images_per_second"]
            loop.update(ratio=ratio, agrees=abs(ratio - 1) <= TOLERANCE, tolerance=TOLERANCE)
        r["verify"] = loop
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, metavar="RESULT_JSON",
                        help="re-time every measured configuration of a result file and write the check into it")
    worker.add_config_arguments(parser, backend_required=False)
    args = parser.parse_args(argv)
    if args.compare:
        from . import report
        doc = json.loads(args.compare.read_text())
        check(doc["results"])
        report.write(doc, args.compare)
        print(report.table(doc["results"]))
        gpu = doc["device"]["kind"] == "gpu"
        return 1 if gpu and any((r.get("verify") or {}).get("agrees") is False for r in doc["results"]) else 0
    if not args.backend:
        parser.error("--backend is needed (or --compare)")
    with contextlib.redirect_stdout(sys.stderr):
        result = run(worker.config_from_args(args))
    processes.print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
