"""`nin summary --depth N`: layer types, trainable and non-trainable parameters apart, and its totals
(computed from common.calc and common.spec, no framework) against each framework's own count of the
model its backend builds: Keras's count_params / trainable_weights / non_trainable_weights, PyTorch's
parameters (requires_grad) and buffers, Flax's nnx.state(model, nnx.Param) and nnx.BatchStat, Gluon's
collect_params by grad_req. Each framework counts in its own interpreter (MXNet's is .venv-mxnet); a
framework that is not installed skips with the reason."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from common import backends, calc
from common import spec as specs
from harness import processes
from nin import cli

VARIANTS = ("d2l", "d2l-bn", "paper")  # with and without batch norm's non-trainable statistics

# What each framework says of the model its backend package builds, by package (Keras on TensorFlow, JAX
# and PyTorch share nin_tf): {variant: {"trainable", "non_trainable", ...}}.
COUNT = {
    "nin_torch": """
def count(model):
    params = list(model.parameters())
    floats = [b for b in model.buffers() if b.is_floating_point()]  # num_batches_tracked is an int64 counter
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "non_trainable": sum(p.numel() for p in params if not p.requires_grad) + sum(b.numel() for b in floats),
            "buffers": sum(b.numel() for b in floats)}
""",
    "nin_tf": """
import math
def count(model):
    size = lambda ws: sum(math.prod(w.shape) for w in ws)
    return {"trainable": size(model.trainable_weights), "non_trainable": size(model.non_trainable_weights),
            "count_params": model.count_params()}
""",
    "nin_jax": """
import jax
from flax import nnx
def count(model):
    size = lambda state: sum(x.size for x in jax.tree_util.tree_leaves(state))
    return {"trainable": size(nnx.state(model, nnx.Param)), "non_trainable": size(nnx.state(model, nnx.BatchStat))}
""",
    "nin_mxnet": """
def count(model):
    params = list(model.collect_params().values())
    return {"trainable": sum(p.data().size for p in params if p.grad_req != "null"),
            "non_trainable": sum(p.data().size for p in params if p.grad_req == "null")}
""",
}
MAIN = """
import json, sys
from common import spec as specs
from harness import processes
model_mod = processes.load(sys.argv[1], "model")
print(json.dumps({v: count(model_mod.build(specs.get(v), device="cpu")) for v in sys.argv[2:]}))
"""


def own_counts(backend: str) -> dict:
    """Run its package's COUNT in the backend's own interpreter and environment; skip (fail when
    NIN_REQUIRE lists the backend, as `make test` does) when its framework is missing there."""
    python = processes.python_for(backend)
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    b = backends.get(backend)
    if subprocess.run([python, "-c", probe, *b.requires], capture_output=True).returncode:
        msg = f"{backend}: {', '.join(b.requires)} not all installed for {python}"
        if backend in os.environ.get("NIN_REQUIRE", "").split(","):
            pytest.fail(f"NIN_REQUIRE lists {backend}, but {msg}")
        pytest.skip(msg)
    r = subprocess.run([python, "-c", COUNT[b.package] + MAIN, backend, *VARIANTS], cwd=processes.ROOT,
                       env=processes.environment_for(backend), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_summary_totals_match_the_frameworks_own_counts(backend):
    counted = own_counts(backend)
    for variant in VARIANTS:
        s = calc.summary(specs.get(variant))
        own = counted[variant]
        assert (own["trainable"], own["non_trainable"]) == (s.total_params, s.total_state), (backend, variant, own)
        if "count_params" in own:  # Keras's own total: trainable and non-trainable weights together
            assert own["count_params"] == s.total_params + s.total_state
    assert counted["d2l-bn"]["non_trainable"] > 0 == counted["d2l"]["non_trainable"]


def test_every_backend_package_is_counted():
    assert set(COUNT) == {b.package for b in backends.BACKENDS.values()}


def test_depth_expands_blocks_and_splits_the_counts():
    spec = specs.get("d2l-bn")
    top, deep = calc.summary_rows(spec, 1), calc.summary_rows(spec, 2)
    assert [r["index"] for r in top] == [str(i) for i in range(len(spec.layers))]
    assert [r["type"] for r in top][:2] == ["NiNBlock", "MaxPool2d"]
    inner = [r for r in deep if r["depth"] == 2]
    assert {r["type"] for r in inner} == {"Conv2d", "BatchNorm2d", "ReLU"}
    for row in top:  # a block's row is the sum of its operations
        parts = [r for r in inner if r["index"].split(".")[0] == row["index"]]
        if parts:
            for key in ("trainable", "non_trainable", "macs", "activations"):
                assert row[key] == sum(r[key] for r in parts), (row["name"], key)
    s = calc.summary(spec)
    assert sum(r["trainable"] for r in top) == s.total_params == 1_994_404
    assert sum(r["non_trainable"] for r in top) == s.total_state == 4_476
    assert calc.summary_rows(spec, 5) == deep  # NiN has two levels


def test_the_command_prints_types_and_both_counts(capsys):
    assert cli.main(["summary", "--variant", "d2l-bn", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "non-trainable" in out and "BatchNorm2d" in out and "block0.conv0" in out
    assert "1,994,404 trainable, 4,476 non-trainable" in out
    assert cli.main(["summary", "--variant", "paper", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trainable_params"] == 966_986 and doc["non_trainable_params"] == 0
    assert [r["type"] for r in doc["rows"]][0] == "NiNBlock"
