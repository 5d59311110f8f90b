"""The data-parallel case (conformance/distributed.py, docs/distributed.md): every backend's own engine,
on 2 simulated CPU devices (gloo processes for PyTorch and Keras on PyTorch, host devices for JAX,
logical devices for TensorFlow, contexts for MXNet), trains the quick tier's probe as one device does
on the same global batch, judged by the matrix's own compare with the fp64 bounds; and every planted
bug of data parallelism (tests/distributed_mutations.py) fails the checks it names.

One worker per backend, in the backend's own interpreter (the engine starts once), makes and judges
every record; so this module imports no framework and runs in the main environment only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_installed
from distributed_mutations import CATALOGUE  # tests/: framework-free
from tiny_records import CASES, metadata, tiny

from common import backends
from conformance import distributed, records
from harness import processes

pytestmark = pytest.mark.main_env  # each backend runs in its own interpreter: once is enough

HANG_S = 1800  # ends a hang only; no test asserts how fast anything ran
NAMES = list(backends.BACKENDS)  # not `backend` (conftest narrows that per environment): every one, from here


WORKERS_AT_ONCE = 2  # CI's cores: a worker spends much of its time starting processes and frameworks


@pytest.fixture(scope="module")
def worked(tmp_path_factory):
    """backend -> the worker's result (tests/distributed_mutations.py). The first call starts every installed
    backend's worker, two at a time, in the registry's order; each call waits for its own."""
    from concurrent.futures import ThreadPoolExecutor

    def work(name: str) -> tuple[int, str, Path]:
        out = tmp_path_factory.mktemp(name) / "result.json"
        cmd = processes.worker_command(name, "tests.distributed_mutations", ["--backend", name, "--json-out", str(out)])
        r = processes.run(cmd, env=processes.environment_for(name), timeout=HANG_S)
        return r.returncode, r.stderr, out

    pool = ThreadPoolExecutor(max_workers=WORKERS_AT_ONCE)
    started = {}

    def get(name: str) -> dict:
        require_installed(name)
        if not started:
            started.update({n: pool.submit(work, n) for n in NAMES
                            if not (processes.missing_here(n) and processes.python_for(n) == sys.executable)})
        code, stderr, out = started[name].result()
        assert code == 0, f"{name}: {stderr.strip()[-3000:]}"
        return json.loads(out.read_text())

    yield get
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", NAMES)
def test_two_replicas_train_as_one_device_does(worked, name):
    assert worked(name)["unplanted"] == {}, worked(name)["unplanted"]


@pytest.mark.parametrize("name", NAMES)
def test_synchronised_batch_norm_is_the_global_batch_s(worked, name):
    """PROBE has batch norm: synchronised (or global by default, under jax.sharding), N replicas are one
    device; where the framework has no synchronised form on a CPU, the worker says so and this skips."""
    result = worked(name)["synchronised"]
    if "skipped" in result:
        pytest.skip(f"{name}: {result['skipped']}")
    assert result == {}, result


@pytest.mark.parametrize("name", NAMES)
def test_per_replica_batch_norm_fails_the_matrix_and_says_why(worked, name):
    """DDP's, MirroredStrategy's and Gluon's default batch norm normalises each shard by its own
    statistics: another computation, which the matrix must not pass as one device's; it names the cause."""
    result = worked(name)
    if "per_replica" not in result:
        pytest.skip(f"{name}: batch norm is global under {result['engine']} by default")
    failed = result["per_replica"]
    assert {"trajectory", "running_statistics"} <= set(failed), failed
    assert all("each replica's statistics, not the global batch's" in row["detail"] for row in failed.values())


@pytest.mark.parametrize("name", NAMES)
def test_planted_bugs_of_data_parallelism_are_caught(worked, name):
    """Every planted bug that applies to the backend's engine fails every check its entry names."""
    caught = worked(name)["caught"]
    assert {"summed-gradients", "loss-summed", "same-shard"} <= set(caught)
    for bug, checks in caught.items():
        missed = [c for c in CATALOGUE[bug].caught_by if c not in checks]
        assert not missed, f"{name} {bug}: {missed} passed; failed: {checks}"


def test_the_plan_splits_networks_by_batch_norm():
    plan = distributed.plan(["paper", "d2l-bn", "d2l"], [1, 2, 4])
    assert plan == [(2, False, ["paper", "d2l"]), (2, True, ["d2l-bn"]), (4, False, ["paper", "d2l"]),
                    (4, True, ["d2l-bn"])]


def test_the_measured_table_is_the_committed_matrix_s():
    """docs/distributed.md's table is what results/distributed/matrix.json holds (regenerate both with
    scripts/data_parallel.sh, then python -m conformance.distributed)."""
    doc = (processes.ROOT / "docs" / "distributed.md").read_text()
    matrix = json.loads((processes.ROOT / "results" / "distributed" / "matrix.json").read_text())
    assert "\n".join(distributed.table(matrix)) in doc


def _write(tmp_path, meta: dict, *, kind: str) -> Path:
    spec = tiny()
    tensors = {f"{spec.name}/{k}": np.zeros(shape, dtype=np.float32)
               for k, shape in records.expected_tensors(spec, CASES, kind=kind).items()}
    return records.write_record(tmp_path / "dp.safetensors", tensors, meta)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("devices", 1, "an integer from 2 to 1024"),
    ("batch_norm", "synchronised", "one of"),
    ("engine", 7, "string"),
])
def test_a_bad_data_parallel_field_is_one_line_naming_it(tmp_path, field, value, expected):
    dp = {"devices": 2, "engine": "DDP", "batch_norm": "global", "sync_batch_norm": True, field: value}
    path = _write(tmp_path, metadata(tiny(), data_parallel=dp), kind="data_parallel")
    with pytest.raises(records.RecordError) as e:
        records.read_record(path)
    message = str(e.value)
    assert "\n" not in message and f"data_parallel.{field}" in message and str(path) in message
    assert expected in message, message


def test_a_data_parallel_record_holds_the_constant_rate_runs_only(tmp_path):
    spec = tiny()
    dp = {"devices": 2, "engine": "DDP", "batch_norm": "global", "sync_batch_norm": True}
    good = _write(tmp_path, metadata(spec, data_parallel=dp), kind="data_parallel")
    assert sorted(records.read_record(good).tensors) == sorted(
        f"{spec.name}/{k}" for k in records.expected_tensors(spec, CASES, kind="data_parallel"))
    full = _write(tmp_path, metadata(spec), kind="data_parallel")  # no data_parallel: a full record lacks logits
    with pytest.raises(records.RecordError, match="missing tensor"):
        records.read_record(full)
