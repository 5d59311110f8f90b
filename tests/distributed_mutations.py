"""Planted bugs of data parallelism, and the checks of the data-parallel case that catch them.

Each one wraps a backend's `distributed.data_parallel_run` in the worker process, so that the
engine is the backend's own and only what the bug changes differs; the record is then made and
judged exactly as the matrix makes and judges one (conformance.distributed.make_record, then
conformance.compare.compare). A bug is planted as its exact numerical equivalent where it lives
inside an engine (summing the gradients of N replicas is SGD with the rate times N and the weight
decay over N), so every engine can be tried with it, PyTorch's spawned ranks included.

    python -m tests.distributed_mutations --backend torch --json-out /tmp/torch.json

tests/test_distributed.py runs this per backend and asserts that every planted bug fails the checks
named here. Not planted, with the reason: the same dropout mask on every replica (the data-parallel
case trains with dropout off, as the constant-rate cases do), and the rate not scaled with the global
batch (the case keeps the global batch; `nin train --devices` is where a recipe would scale it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import tables
from common.fsio import atomic_write_text
from conformance import distributed
from conformance.cases import DATA_PARALLEL_PROBE, PROBE, PROBE_CASES
from conformance.compare import compare
from harness import processes

DEVICES = 2


@dataclass(frozen=True)
class Planted:
    what: str
    caught_by: tuple[str, ...]  # checks that must fail, every one
    sync_batch_norm: bool  # which probe: PROBE synchronised (True) or DATA_PARALLEL_PROBE (False)
    wrap: Callable  # (data_parallel_run, devices) -> the planted data_parallel_run
    applies: Callable = lambda dist_mod: True  # noqa: E731


def _summed_gradients(run, devices):
    """The all-reduce sums where it should average: g' = N g, i.e. rate x N and weight decay / N."""
    def planted(spec, weights, batches, lrs, *, momentum, weight_decay, **kw):
        return run(spec, weights, batches, np.asarray(lrs) * devices, momentum=momentum,
                   weight_decay=weight_decay / devices, **kw)
    return planted


def _loss_summed(run, devices):
    """Each replica's mean loss, summed over replicas: N times the loss, and its gradients."""
    def planted(*args, **kw):
        losses, final = _summed_gradients(run, devices)(*args, **kw)
        return [loss * devices for loss in losses], final
    return planted


def _same_shard(run, devices):
    """Every replica given the first replica's shard of each global batch."""
    def planted(spec, weights, batches, lrs, **kw):
        same = []
        for images, labels in batches:
            n = len(images) // devices
            same.append((np.concatenate([images[:n]] * devices), np.concatenate([labels[:n]] * devices)))
        return run(spec, weights, same, lrs, **kw)
    return planted


def _per_replica_batch_norm(run, devices):
    """Synchronised batch norm claimed (the record says "global"), the default per-replica one run."""
    def planted(*args, **kw):
        return run(*args, **{**kw, "sync_batch_norm": False})
    return planted


CATALOGUE = {
    "summed-gradients": Planted("gradients summed over the replicas instead of averaged",
                                ("final_weights", "momentum_final_weights"), False, _summed_gradients),
    "loss-summed": Planted("the loss averaged per replica, then summed over the replicas",
                           ("trajectory", "final_weights"), False, _loss_summed),
    "same-shard": Planted("every replica given the same shard", ("trajectory", "final_weights"), False,
                          _same_shard),
    "batch-norm-per-replica": Planted("batch-norm statistics claimed synchronised but per replica",
                                      ("trajectory", "running_statistics"), True, _per_replica_batch_norm,
                                      lambda d: bool(d.SYNC_BATCH_NORM) and d.DEFAULT_BATCH_NORM == "per replica"),
}


@contextlib.contextmanager
def planted(dist_mod, name: str):
    """The backend's data_parallel_run replaced by the planted one for the duration."""
    original = dist_mod.data_parallel_run
    dist_mod.data_parallel_run = CATALOGUE[name].wrap(original, DEVICES)
    try:
        yield
    finally:
        dist_mod.data_parallel_run = original


def judge(backend: str, spec, *, sync_batch_norm: bool, out: Path) -> dict:
    """A data-parallel record of `spec` on DEVICES replicas, judged by the matrix: {check: {"ratio": share of
    its bound (None: infinite), "detail": the row's detail}} of the checks that failed, {} when all passed."""
    try:
        out = distributed.make_record(backend, [spec], devices=DEVICES, sync_batch_norm=sync_batch_norm,
                                      device="cpu", precision="fp64", out=out, cases=PROBE_CASES)
    except NotImplementedError as e:  # not on this device (torch's SyncBatchNorm on a CPU)
        return {"skipped": str(e)}
    result = compare([out])
    assert result.numeric_checks > 0, f"{out}: nothing was checked"
    return {r.check: {"ratio": r.ratio if np.isfinite(r.ratio) else None, "detail": r.detail}
            for r in result.rows if not r.passed}


def run_all(backend: str, folder: Path) -> dict:
    """The quick tier's data-parallel case of one backend, unplanted and with every bug that applies:
    {"unplanted": judge(...), "synchronised": ..., "per_replica": ... (where that is the default), "caught":
    {bug: {check: share}}}. One process: the engine starts once."""
    dist_mod = processes.load(backend, "distributed")
    out = {"unplanted": judge(backend, DATA_PARALLEL_PROBE, sync_batch_norm=False, out=folder / "plain.safetensors"),
           "synchronised": judge(backend, PROBE, sync_batch_norm=True, out=folder / "sync.safetensors")}
    if dist_mod.DEFAULT_BATCH_NORM == "per replica":
        out["per_replica"] = judge(backend, PROBE, sync_batch_norm=False, out=folder / "per-replica.safetensors")
    out["caught"] = {}
    for name, entry in CATALOGUE.items():
        if entry.applies(dist_mod):
            spec = PROBE if entry.sync_batch_norm else DATA_PARALLEL_PROBE
            with planted(dist_mod, name):
                failed = judge(backend, spec, sync_batch_norm=entry.sync_batch_norm, out=folder / f"{name}.safetensors")
            out["caught"][name] = {check: row["ratio"] for check, row in failed.items()}
            print(f"{backend} {name}: fails {sorted(failed)}", file=sys.stderr, flush=True)
    return out


def render(results: list[dict]) -> list[str]:
    """The table of docs/distributed.md: per planted bug, the checks that must fail and, per backend,
    the share of its bound of the one that failed least (n/a where the bug does not apply)."""
    names = [r["backend"] for r in results]
    body = []
    for name, entry in CATALOGUE.items():
        cells = []
        for r in results:
            failed = r["caught"].get(name)
            missed = [c for c in entry.caught_by if failed is not None and c not in failed]
            least = min((math.inf if failed[c] is None else failed[c] for c in entry.caught_by if c in failed),
                        default=math.inf) if failed is not None else None
            cells.append("n/a" if failed is None else f"**missed** {', '.join(missed)}" if missed else f"{least:.3g}x")
        body.append([f"`{name}`", entry.what, ", ".join(entry.caught_by)] + cells)
    head = ["planted bug", "what", "must fail"] + [f"{n}: least share" for n in names]
    made = sorted({r["created"][:10] for r in results})
    return tables.markdown(head, body) + ["", f"Measured {', '.join(made)}, fp64 on {DEVICES} simulated CPU devices, "
                                              "each backend in its own interpreter, by `python -m "
                                              "tests.distributed_mutations --backend NAME --json-out "
                                              "results/distributed/mutations/NAME.json` (each file names its versions). "
                                              "Keras on JAX and PyTorch are held to fp32 bounds (their fp64 computes in "
                                              "float32), hence their smaller shares."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.distributed_mutations", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", help="plant every bug that applies to this backend's engine, in this process")
    p.add_argument("--json-out", type=Path, help="with --backend: {mutant: {failed check: share of its bound}}")
    p.add_argument("--merge", nargs="+", type=Path, help="results of --json-out, rendered ...")
    p.add_argument("--into", type=Path, help="... into this document's planted-bugs table")
    args = p.parse_args(argv)
    if args.merge:
        distributed.fill(args.into, "planted", render([json.loads(f.read_text()) for f in args.merge]))
        return 0
    dist_mod = processes.load(args.backend, "distributed")
    dist_mod.simulate_devices(DEVICES)  # before the framework computes anything (JAX counts its devices once)
    train_mod = processes.load(args.backend, "train")
    train_mod.configure("cpu", "fp64")
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(args.backend, Path(tmp))
    result = {"backend": args.backend, "engine": dist_mod.ENGINE, "versions": {k: str(v) for k, v in
                                                                             train_mod.versions().items()},
              "device_name": train_mod.device_name("cpu"), "command": "python -m tests.distributed_mutations " + " ".join(sys.argv[1:]),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **runs}
    atomic_write_text(args.json_out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
