"""Each engine's multi-process form, as on two machines (docs/distributed.md, "Two machines"), run as
processes of this machine over loopback only: JAX's jax.distributed with gloo CPU collectives, MXNet's
parameter-server kvstore dist_sync (a scheduler, a server and two workers) and TensorFlow's
MultiWorkerMirroredStrategy (two workers). PyTorch's DDP runs as real processes in
tests/test_distributed.py and test_train_devices.py already.

Each case is a short script in the backend's own interpreter: one JSON line per worker, checked here.
The processes meet at a port of 127.0.0.1 (JAX's coordinator, MXNet's scheduler), chosen free just
before they start. A timeout only ends a hang (a failed MXNet worker leaves the others waiting), and
every process is killed then: nothing is left running."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import HANG_S, require_installed

from harness import processes

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
    each one's stdout once all have exited 0. The first to fail, or a hang, ends them all (SIGKILL: a
    MultiWorkerMirroredStrategy worker ignores SIGTERM), so that a failure is reported at once."""
    base = processes.environment_for(backend)
    with tempfile.TemporaryDirectory() as tmp:
        logs = [(open(f"{tmp}/{i}.out", "w+"), open(f"{tmp}/{i}.err", "w+")) for i in range(len(envs))]
        procs = [subprocess.Popen([processes.python_for(backend), "-c", script, *(args[i] if args else [])],
                                  env={**base, **env}, stdout=out, stderr=err, text=True)
                 for i, (env, (out, err)) in enumerate(zip(envs, logs))]
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


# JAX: jax.distributed with CPU collectives over gloo, one device per process, a Mesh over both, each
# process feeding its own rows (jax.make_array_from_process_local_data), the sum all-reduced.
JAX_TWO_PROCESSES = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1]))
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
mesh = Mesh(np.array(jax.devices()), ("batch",))
rows = np.full((2, 3), float(jax.process_index() + 1), dtype=np.float32)
x = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("batch")), rows)
total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
print(json.dumps([jax.process_index(), len(jax.devices()), len(jax.local_devices()), float(total)]))
"""


def test_jax_runs_across_two_processes_with_cpu_collectives():
    """What `nin train --devices` does not do yet for JAX: the engine itself works as 2 processes, each with
    its own rows, the sum all-reduced across them."""
    require_installed("jax")
    address = f"127.0.0.1:{_free_ports(1)[0]}"  # JAX's coordinator takes no file rendezvous
    outs = _run_together("jax", JAX_TWO_PROCESSES, [{}, {}], [["0", address], ["1", address]])
    results = sorted(json.loads(out.strip().splitlines()[-1]) for out in outs)
    assert results == [[0, 2, 1, 18.0], [1, 2, 1, 18.0]]  # 2 global devices, 1 each, rows 2 x 3 x (1 + 2)


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
