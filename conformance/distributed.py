"""The data-parallel case: each backend's own data-parallel engine (nin_<x>/distributed.py) trains the
matrix's constant-rate runs on N replicas, and the record is judged like any other, against the
float64 reference of the single-device run on the same global batch, with the same bounds.

    nin record --backend torch --variant paper d2l-bn --precision fp64 --devices 2 --sync-batch-norm \\
        --out records/dp/torch-cpu-fp64-dp2.safetensors

The worker (conformance.record, in the backend's interpreter) calls make_record here. The engine
splits every global batch of `cases.train_batch` images into N equal shards; the replicas' gradients
are averaged by the engine's own all-reduce. A network without batch norm is then the single-device
computation up to rounding. With batch norm, "global" statistics (synchronised, or the engine's
default where it is global) are too; "per replica" statistics are another computation, and the
matrix fails it, naming why: docs/distributed.md measures by how much.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from common import calc, tables, weights
from common import spec as specs
from common.fsio import atomic_write_text
from conformance import records
from conformance.cases import Cases, constant_rate_runs, inputs, training_batches
from harness import processes


def plan(variants: list, devices: list[int]) -> list[tuple[int, bool, list]]:
    """The data-parallel records of a matrix: (replicas, synchronised batch norm, variants) for each replica
    count; the networks without batch norm under the engine's default, those with it synchronised."""
    nets = {v: specs.get(v) if isinstance(v, str) else v for v in variants}
    with_bn = [v for v, spec in nets.items() if any(block.batch_norm for _, block in spec.blocks())]
    without = [v for v in nets if v not in with_bn]
    return [(n, sync, chosen) for n in devices if n > 1 for sync, chosen in ((False, without), (True, with_bn))
            if chosen]


def batch_norm_of(dist_mod, *, sync_batch_norm: bool) -> str:
    """What a run's batch-norm statistics are: "global" (synchronised, or the engine's default) or "per replica"."""
    if sync_batch_norm and not dist_mod.SYNC_BATCH_NORM and dist_mod.DEFAULT_BATCH_NORM != "global":
        raise NotImplementedError(f"--sync-batch-norm: {dist_mod.ENGINE} has no synchronised batch norm")
    return "global" if sync_batch_norm else dist_mod.DEFAULT_BATCH_NORM


def compute_variant(dist_mod, spec, *, cases: Cases, batches: list, devices: int, device: str, precision: str,
                    sync_batch_norm: bool) -> dict[str, np.ndarray]:
    """The constant-rate runs of one variant on `devices` replicas: keys as in a record, without the variant."""
    init = weights.init(spec, cases.init_seed)
    out = {}
    for prefix, steps, sgd in constant_rate_runs(cases):
        losses, final = dist_mod.data_parallel_run(spec.with_dropout(0.0), init, batches[:steps],
                                                   np.full(steps, cases.lr), devices=devices, device=device,
                                                   precision=precision, sync_batch_norm=sync_batch_norm, **sgd)
        out[f"{prefix}trajectory"] = np.asarray(losses)
        out.update({f"{prefix}final/{k}": v for k, v in final.items() if calc.is_trainable(k)})
        if not prefix:
            out.update({f"running/{k}": v for k, v in final.items() if not calc.is_trainable(k)})
    return {k: np.asarray(v, dtype=records.DTYPES[precision]) for k, v in out.items()}


def variant_info(model_mod, spec, *, cases: Cases, device: str, precision: str) -> dict:
    """The spec, layer shapes and parameter count of one variant, from a single-device model (as a record's)."""
    model = model_mod.build(spec, device=device, dtype=records.DTYPES[precision])
    shapes = model_mod.layer_shapes(model, inputs(spec, cases)[0])
    exported = model_mod.export_weights(model)
    return {"spec": spec.to_dict(), "layer_shapes": [list(s) for s in shapes],
            "param_count": int(sum(v.size for k, v in exported.items() if calc.is_trainable(k)))}


def make_record(backend: str, variants: list, *, devices: int, sync_batch_norm: bool, device: str, precision: str,
                out, cases: Cases = Cases(), data_dir=None, progress=None):
    """A data-parallel record of `variants`: the engine's devices first (JAX counts them once), then numerics."""
    dist_mod = processes.load(backend, "distributed")
    simulated = dist_mod.simulate_devices(devices) if device == "cpu" else {}
    model_mod = processes.load(backend, "model")
    train_mod = processes.load(backend, "train")
    numerics = train_mod.configure(device, precision)
    batch_norm = batch_norm_of(dist_mod, sync_batch_norm=sync_batch_norm)
    tensors, per_variant = {}, {}
    for name in variants:
        spec = specs.get(name) if isinstance(name, str) else name
        if progress:
            progress(f"{backend} {precision} on {devices} replicas ({batch_norm} batch norm): {spec.name}")
        batches = training_batches(spec, cases, data_dir).batches
        values = compute_variant(dist_mod, spec, cases=cases, batches=batches, devices=devices, device=device,
                                 precision=precision, sync_batch_norm=sync_batch_norm)
        tensors.update({f"{spec.name}/{k}": v for k, v in values.items()})
        per_variant[spec.name] = variant_info(model_mod, spec, cases=cases, device=device, precision=precision)
    meta = records.record_meta(model_mod, train_mod, backend=backend, device=device, precision=precision,
                               compile="eager", cases=cases, variants=per_variant,
                               numerics={**numerics, **{f"simulated_{k}": v for k, v in simulated.items()}})
    meta["data_parallel"] = {"devices": devices, "engine": dist_mod.ENGINE, "batch_norm": batch_norm,
                             "sync_batch_norm": sync_batch_norm}
    return records.write_record(out, tensors, meta)


# --- the measured table of docs/distributed.md --------------------------------------------------
def table(matrix: dict) -> list[str]:
    """A Markdown table from a comparison's JSON (`nin compare --json-out`) of data-parallel records: a
    row per record, per variant its worst share of a bound over the training checks, FAIL past 1, and
    the check that decided."""
    rows = [r for r in matrix["checks"] if r["against"] == "reference" and r["check"] not in ("shapes", "params")]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r["backend"], r["variant"])
        ratio = math.inf if r["ratio"] is None else r["ratio"]
        if key not in cells or ratio > cells[key]["ratio"]:
            cells[key] = {**r, "ratio": ratio}
    body = []
    for label in dict.fromkeys(r["backend"] for r in rows):
        row = [f"`{label}`"]
        for v in variants:
            c = cells.get((label, v))
            row.append("–" if c is None else f"{'ok' if c['ratio'] <= 1 else '**FAIL**'} {c['ratio']:.2g} "
                                             f"({c['check']})")
        body.append(row)
    head = ["record (backend/replicas)"] + [f"{v}: worst share of its bound (check)" for v in variants]
    prov = matrix.get("provenance", {})
    cpu = prov.get("cpu") if isinstance(prov.get("cpu"), dict) else {}
    made = (f"Made {prov.get('date', '?')} at {str(prov.get('commit', '?'))[:7]} on {cpu.get('model', '?')} "
            f"({cpu.get('cpus', '?')} CPUs)")
    return tables.markdown(head, body) + ["", f"{made}, by `scripts/data_parallel.sh`; every row in full: "
                                              "[results/distributed/matrix.md](../results/distributed/matrix.md)."]


def fill(doc: Path, name: str, lines: list[str]) -> None:
    """Put `lines` between the markers `<!-- NAME: ... -->` and `<!-- end NAME -->` of `doc`, atomically."""
    text = Path(doc).read_text()
    start, end = f"<!-- {name}:", f"<!-- end {name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no markers {start} ... --> and {end}")
    head, rest = text.split(start, 1)
    marker, rest = rest.split("-->", 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(doc, f"{head}{start}{marker}-->\n" + "\n".join(lines) + f"\n{end}{tail}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m conformance.distributed MATRIX.json DOC.md   (the measured table into DOC)")
    fill(Path(sys.argv[2]), "measured", table(json.loads(Path(sys.argv[1]).read_text())))
