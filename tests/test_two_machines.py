"""Each engine's multi-machine form (docs/distributed.md, "Two machines"), run as processes of this
machine over loopback only: `nin train --nodes 2` on PyTorch (torchrun's static rendezvous) and Flax
(jax.distributed with gloo CPU collectives), equal to `--devices 2` on one machine bit for bit, and the
one-line refusals of the loops that take no --nodes; MXNet's parameter-server kvstore dist_sync (a
scheduler, a server and two workers) and TensorFlow's MultiWorkerMirroredStrategy (two workers), run as
short scripts in the backend's own interpreter, one JSON line per worker; and Keras's fit under that
strategy, which fails (the reason nin train refuses --nodes on TensorFlow).

The processes meet at a port of 127.0.0.1 (torchrun's store, JAX's coordinator, MXNet's scheduler),
chosen free just before they start. A timeout only ends a hang (a failed worker leaves the others
waiting), and every process is killed then: nothing is left running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_S, require_installed

from common import backends
from harness import processes
from nin import cli
from training import runs

pytestmark = pytest.mark.main_env  # each backend runs in its own interpreter: once is enough


def _free_ports(count: int) -> list[int]:
    """Ports of 127.0.0.1 that nothing listens on, all different (each held until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_together(backend: str, script: str, envs: list[dict], args: list[list[str]] | None = None) -> list[str]:
    """One process of `script` per environment (plus its args), all at once in the backend's interpreter;
    each one's stdout once all have exited 0."""
    base = processes.environment_for(backend)
    return _together([[processes.python_for(backend), "-c", script, *(args[i] if args else [])]
                      for i in range(len(envs))], [{**base, **env} for env in envs])


def _together(commands: list[list[str]], envs: list[dict]) -> list[str]:
    """Every command at once, each in its environment; each one's stdout once all have exited 0. The first to
    fail, or a hang, ends them all (SIGKILL: a MultiWorkerMirroredStrategy worker ignores SIGTERM), so that a
    failure is reported at once."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = [(open(f"{tmp}/{i}.out", "w+"), open(f"{tmp}/{i}.err", "w+")) for i in range(len(envs))]
        procs = [subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
                 for command, env, (out, err) in zip(commands, envs, logs)]
        start = time.monotonic()
        try:  # files, not pipes: a worker never blocks on a full pipe while another is being waited for
            while any(p.poll() is None for p in procs) and all(p.poll() in (None, 0) for p in procs):
                if time.monotonic() - start > HANG_S:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        texts = []
        for out, err in logs:
            texts.append((Path(out.name).read_text(), Path(err.name).read_text()))
            out.close()
            err.close()
    assert all(p.returncode == 0 for p in procs), [f"{p.returncode}: {err[-1500:]}" for p, (_, err) in zip(procs, texts)]
    return [out for out, _ in texts]


# `nin train --nodes 2` on loopback: two `nin train` commands, node 0 and node 1, one device each, against
# `nin train --devices 2` on one machine. Two replicas either way, ranked alike, each drawing the same dropout
# masks: every all-reduce sums two terms, and a + b == b + a in floating point, so the weights are equal bit
# for bit. The backends whose loop refuses --nodes say so in one line (RUN_NODES_REFUSED).
RECIPE = ["--recipe", "tuned", "--warmup", "0.5", "--lr", "0.05", "--resize", "67", "--train-limit", "56",
          "--test-limit", "16", "--batch-size", "16", "--epochs", "2", "--quiet"]
COMPILE = {"jax": "compiled"}  # a JAX Mesh runs compiled only (docs/distributed.md)
NODES = ("torch", "jax")  # the loops that take --nodes; the others refuse it before training
NIN = [sys.executable, "-m", "nin", "train"]


def _train_command(name: str, out: Path, *flags) -> list[str]:
    return [*NIN, "--backend", name, *RECIPE, "--compile", COMPILE.get(name, "eager"), "--out", str(out),
            *map(str, flags)]


@pytest.mark.parametrize("name", NODES)
def test_nin_train_on_two_nodes_trains_as_two_devices_of_one(name, tmp_path, data_dir):
    """Node 0 writes the run, node 1 nothing; the run's header names 2 replicas on 2 nodes; its weights and
    losses are those of `--devices 2` on one machine, bit for bit."""
    require_installed(name)
    address = f"127.0.0.1:{_free_ports(1)[0]}"
    nodes = [_train_command(name, tmp_path / f"node{rank}", "--nodes", 2, "--node-rank", rank, "--rendezvous", address)
             for rank in range(2)]
    one = _train_command(name, tmp_path / "one", "--devices", 2)
    env = {**os.environ, "PYTHONPATH": str(backends.ROOT)}
    _together([*nodes, one], [env] * 3)
    assert not (tmp_path / "node1").exists()  # node 1 writes nothing: node 0 holds the run
    (header, epochs, _), (_, alone, _) = runs.read_metrics(tmp_path / "node0"), runs.read_metrics(tmp_path / "one")
    assert (header["devices"], header["nodes"], header["engine"]) == (2, 2, runs.read_metrics(tmp_path / "one")[0]["engine"])
    assert [e["train_loss"] for e in epochs] == [e["train_loss"] for e in alone]
    theirs, mine = runs.read_checkpoint(tmp_path / "one"), runs.read_checkpoint(tmp_path / "node0")
    for k, w in theirs[0].items():
        assert np.array_equal(mine[0][k], w), f"{name}: {k} differs by {np.abs(mine[0][k] - w).max():.3g}"
    for k, m in theirs[1].items():
        assert np.array_equal(mine[1][k], m), f"{name}: {k} differs by {np.abs(mine[1][k] - m).max():.3g}"


# one backend of each package whose loop refuses --nodes (Keras's three backends share nin_tf/loop.py's refusal)
REFUSING = [next(n for n, b in backends.BACKENDS.items() if b.package == package and n not in NODES)
            for package in backends.packages() if not any(backends.BACKENDS[n].package == package for n in NODES)]


@pytest.mark.parametrize("name", REFUSING)
def test_a_loop_without_nodes_refuses_them_in_one_line(name, tmp_path, capfd, data_dir):
    require_installed(name)
    code = cli.main(["train", "--backend", name, *RECIPE, "--nodes", "2", "--rendezvous", "127.0.0.1:9",
                     "--out", str(tmp_path / "r")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("nin train: --nodes 2: ") and "nin train does not" in err[-1], err[-3:]
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--nodes", "2"], "--nodes 2: --rendezvous HOST:PORT is required (where node 0 listens)"),
    (["--nodes", "2", "--node-rank", "2", "--rendezvous", "h:1"], "--node-rank 2: expected 0 to 1 for --nodes 2"),
    (["--node-rank", "1"], "--node-rank: a run on one machine takes neither --node-rank nor --rendezvous (pass "
                           "--nodes M for M machines)"),
    (["--nodes", "2", "--devices", "3", "--rendezvous", "h:1"],
     "--devices 3 on --nodes 2: --batch-size of 16 images does not split evenly over 6 replicas"),
])
def test_nodes_that_cannot_meet_are_refused_before_any_worker_starts(flags, message, tmp_path, capsys):
    code = cli.main(["train", "--backend", "torch", *RECIPE, *flags, "--out", str(tmp_path / "r")])
    assert (code, capsys.readouterr().err.strip()) == (2, f"nin train: {message}")
    assert not (tmp_path / "r").exists()


def test_a_rendezvous_that_is_not_host_and_port_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--backend", "torch", "--nodes", "2", "--rendezvous", "node0"])
    assert "expected HOST:PORT (port 1 to 65535), got 'node0'" in capsys.readouterr().err


# MXNet: dist_sync, the parameter server. Every role runs this script: in the scheduler and the server,
# `import mxnet` serves until the job ends and exits the process; the workers go on. Each worker pushes
# rank + 1 (the pulled value is the sum, 3), then takes one Gluon SGD step on its own 4 rows with the
# kvstore, against one step on all 8 rows in one process: the server sums the workers' gradients and the
# Trainer scales by 1 / step()'s batch, so step() takes the global batch (8).
MXNET_DIST_SYNC = """
import json
import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

kv = mx.kv.create("dist_sync")
kv.init(99, mx.nd.zeros((2, 3)))  # a key of its own: the Trainer below keys its parameters 0, 1, ...
kv.push(99, mx.nd.full((2, 3), kv.rank + 1))
summed = mx.nd.zeros((2, 3))
kv.pull(99, out=summed)
summed = float(summed.asnumpy().mean())  # waits: the Trainer's optimizer must not reach the server first

def rows(rank):
    rng = np.random.RandomState(rank)
    return mx.nd.array(rng.randn(4, 3)), mx.nd.array(rng.randn(4, 2))

def step(x, y, kvstore):
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(0.1))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore=kvstore)
    with autograd.record():
        loss = gluon.loss.L2Loss()(net(x), y)
    loss.backward()
    trainer.step(8)
    return net.weight.data().asnumpy()

mine = step(*rows(kv.rank), kv)
xs, ys = zip(*map(rows, range(kv.num_workers)))
one = step(mx.nd.concat(*xs, dim=0), mx.nd.concat(*ys, dim=0), None)
mx.nd.waitall()  # nothing in flight when the kvstore goes: otherwise every node can hang at exit
print(json.dumps([kv.rank, kv.num_workers, summed, float(abs(mine - one).max()),
                  mine.tolist()]))
"""


def test_mxnet_dist_sync_runs_as_a_scheduler_a_server_and_two_workers():
    """What `nin train --devices` does not do yet for MXNet: dist_sync itself, as MXNet's tools/launch.py
    starts it, sums the workers' pushes, and one Gluon step on 2 workers is one step on the global batch."""
    require_installed("mxnet")
    cluster = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": str(_free_ports(1)[0]), "DMLC_NUM_SERVER": "1",
               "DMLC_NUM_WORKER": "2", "DMLC_INTERFACE": "lo", "OMP_NUM_THREADS": "1"}
    roles = ["scheduler", "server", "worker", "worker"]
    outs = _run_together("mxnet", MXNET_DIST_SYNC, [{**cluster, "DMLC_ROLE": role} for role in roles])
    workers = sorted(json.loads(out.strip().splitlines()[-1]) for out, role in zip(outs, roles) if role == "worker")
    assert [w[:3] for w in workers] == [[0, 2, 3.0], [1, 2, 3.0]]  # ranks, 2 workers, the pushes summed
    assert all(w[3] < 1e-6 for w in workers), workers  # each worker's step is the global batch's
    assert workers[0][4] == workers[1][4]  # and the two hold the same weights


# Keras on TensorFlow: MultiWorkerMirroredStrategy, one CPU replica per process, TF_CONFIG naming both; the
# strategy comes first (collectives are configured at startup). Each worker sums its own rows (the sum is
# all-reduced: 18) and takes two SGD steps on a mirrored variable, w -= 0.1 * mean over workers of
# mean(x): each worker's loss is scaled by 1 / replicas, and apply_gradients sums the gradients across them.
# 1 - 2 * 0.1 * 1.5 = 0.7, where a worker left to itself would end at 0.8 or 0.6.
TF_MULTI_WORKER = """
import json
import keras
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING))
replicas = strategy.num_replicas_in_sync
task = strategy.cluster_resolver.task_id
rows = tf.fill([2, 3], float(task + 1))
with strategy.scope():
    w = tf.Variable(1.0)
    sgd = keras.optimizers.SGD(learning_rate=0.1)

@tf.function
def step(x):
    def replica(x):
        with tf.GradientTape() as tape:
            loss = w * tf.reduce_mean(x) / replicas
        sgd.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        return tf.reduce_sum(x)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(x,)), axis=None)

for _ in range(2):
    total = step(rows)
print(json.dumps([task, replicas, float(total), round(float(w.numpy()), 6)]))
"""


def test_keras_tf_multi_worker_mirrored_strategy_runs_as_two_workers():
    """What `nin train --devices` does not do yet for Keras on TensorFlow: MultiWorkerMirroredStrategy
    itself, as TF_CONFIG describes two machines, all-reduces the workers' values and gradients."""
    require_installed("keras-tf")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    envs = [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}),
             "TF_CPP_MIN_LOG_LEVEL": "2"} for i in range(2)]
    outs = _run_together("keras-tf", TF_MULTI_WORKER, envs)
    assert sorted(json.loads(out.strip().splitlines()[-1]) for out in outs) == [[0, 2, 18.0, 0.7], [1, 2, 18.0, 0.7]]


# Keras's own fit under MultiWorkerMirroredStrategy, as `nin train --nodes` would run it on TensorFlow: a small
# model compiled in the strategy's scope, fit on the same NumPy rows in both workers. Each worker prints the
# error fit raised, or "fit ran".
TF_FIT_MULTI_WORKER = """
import json
import numpy as np
import keras
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 3, size=32).astype("int32")
try:
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    print(json.dumps("fit ran"))
except ValueError as e:
    print(json.dumps(f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"))
"""


def test_keras_fit_fails_under_multi_worker_mirrored_strategy_so_nin_train_refuses_nodes():
    """Why nin_tf/loop.py refuses --nodes on TensorFlow, measured each run: Keras's fit with two workers
    raises a ValueError before its first step. When a Keras release fixes it, this test fails: nin train can
    then start MultiWorkerMirroredStrategy's workers (and this test should assert that it does)."""
    require_installed("keras-tf")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    envs = [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}),
             "TF_CPP_MIN_LOG_LEVEL": "2"} for i in range(2)]
    said = [json.loads(out.strip().splitlines()[-1]) for out in _run_together("keras-tf", TF_FIT_MULTI_WORKER, envs)]
    assert all(s.startswith("ValueError: Attempt to convert a value (PerReplica") for s in said), said
