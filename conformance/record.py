"""The worker side of `nin record`: run in the backend's own interpreter, write one record.

    python -m conformance.record --backend torch --variant d2l paper --device cpu --precision fp32 \
        --compile eager --out records/torch-cpu-fp32-eager.safetensors

It imports the backend by the registry's name (harness.processes.load), computes every case of
conformance.cases with the backend's own functions (`compute_variant`, which the tests call in-process
too) and writes the record atomically (conformance.records.write_record).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from common import calc, weights
from common import spec as specs
from common.backends import BackendError
from common.data import DataError
from common.fsio import OutputError, check_writable
from common.spec import Dropout, SpecError
from conformance import distributed, records
from conformance.cases import (
    DATA_PARALLEL_PROBE,
    DROPOUT_PROBE,
    PROBE,
    PROBE_CASES,
    Cases,
    TrainingData,
    constant_rate_runs,
    dropout_probe,
    dropout_rates,
    dropout_shapes,
    inputs,
    mask_shapes,
    midpoint,
    replays_dropout,
    scheduled_lrs,
    scheduled_order,
    scheduled_steps,
    training_batches,
)
from harness import processes

DTYPES = records.DTYPES  # a precision -> the dtype its record holds


class DeviceError(RuntimeError):
    """The device asked for is not visible to the framework (`--device gpu` without a GPU)."""


def _epochs(loop_mod, spec, state: tuple, first: int, *, cases: Cases, data: TrainingData, device: str,
            precision: str, compile: str) -> tuple[list, list, dict, tuple, tuple | None]:
    """Epochs `first`.. of the scheduled run through the backend's loop, as `nin train` runs them: each
    in a fresh trainer resumed from the last checkpoint (export_state -> load_state), train_epoch over
    the uint8 images in the driver's order, evaluate; with dropout on (replays_dropout), the masks its dropout
    layers drew (loop.dropout_masks) as "masks/<step>/<layer>". (losses, evaluations, masks, last state,
    midpoint state)."""
    lrs, losses, evals, masks, middle = scheduled_lrs(cases), [], [], {}, None
    rates = [layer.rate for layer in spec.layers if isinstance(layer, Dropout)]
    for epoch in range(first, cases.scheduled_epochs):
        trainer = loop_mod.make_trainer(spec, lrs, momentum=cases.momentum, weight_decay=cases.weight_decay,
                                        device=device, compile=compile, dtype=DTYPES[precision])
        loop_mod.load_state(trainer, *state)
        order = scheduled_order(cases, epoch)
        loop_mod.train_epoch(trainer, data.images[order], data.labels[order], batch_size=cases.scheduled_batch,
                             dropout_seed=epoch, progress=lambda n, loss, correct: losses.append(loss))
        if replays_dropout(spec):
            drawn = loop_mod.dropout_masks(trainer, dropout_shapes(spec, cases), dropout_seed=epoch)
            for b, batch in enumerate(drawn):
                kept = [m for m, rate in zip(batch, rates, strict=True) if rate > 0]
                masks.update({f"masks/{epoch * scheduled_steps(cases) + b}/{j}": m for j, m in enumerate(kept)})
        evals.append(loop_mod.evaluate(trainer, data.test_images, data.test_labels,
                                       batch_size=cases.scheduled_batch)["loss"])
        state = loop_mod.export_state(trainer)
        middle = state if epoch + 1 == midpoint(cases) else middle
        if not all(np.all(np.isfinite(v)) for v in state[0].values()):  # diverged: no checkpoint to resume
            break
    done = cases.scheduled_epochs - first  # a run that stopped early records NaN for what it did not do
    losses += [np.nan] * (done * scheduled_steps(cases) - len(losses))
    masks.update({k: np.ones(shape) for k, shape in mask_shapes(spec, cases).items()  # and keeps every unit
                  if k not in masks and int(k.split("/")[1]) >= first * scheduled_steps(cases)})
    evals += [np.nan] * (done - len(evals))
    middle = middle or (state if first < midpoint(cases) else None)
    return losses, evals, masks, state, middle


def _run_tensors(prefix: str, losses: list, evals: list, final: dict, *, masks: dict) -> dict[str, np.ndarray]:
    out = {f"{prefix}/trajectory": np.array(losses), f"{prefix}/eval": np.array(evals)}
    out.update({f"{prefix}/{k}": v for k, v in masks.items()})
    out.update({f"{prefix}/{'final' if calc.is_trainable(k) else 'running'}/{k}": v for k, v in final.items()})
    return out


def scheduled_run(loop_mod, spec, *, cases: Cases, data: TrainingData, device: str, precision: str,
                  compile: str) -> dict[str, np.ndarray]:
    """The scheduled case (conformance.cases) and its midpoint checkpoint, keys without the variant."""
    spec = spec if replays_dropout(spec) else spec.with_dropout(0.0)
    losses, evals, masks, state, middle = _epochs(loop_mod, spec, (weights.init(spec, cases.init_seed), {}, 0), 0,
                                                  cases=cases, data=data, device=device, precision=precision,
                                                  compile=compile)
    out = _run_tensors("scheduled", losses, evals, state[0], masks=masks)
    w, momentum, step = middle
    out.update({f"scheduled/checkpoint/weights/{k}": v for k, v in w.items()})
    out.update({f"scheduled/checkpoint/{k}": v for k, v in momentum.items()})
    out["scheduled/checkpoint/step"] = np.array([step])
    return out


def resumed_run(loop_mod, spec, checkpoint: dict, *, cases: Cases, data: TrainingData, device: str, precision: str,
                compile: str) -> dict[str, np.ndarray]:
    """The scheduled run continued from another record's midpoint checkpoint ("scheduled/checkpoint/..."
    keys, canonical names): the cross-framework resume case. Keys "resumed/...", without the variant; with
    dropout on, "resumed/masks/..." of every step: the checkpoint's record's before the midpoint, then its own."""
    spec = spec if replays_dropout(spec) else spec.with_dropout(0.0)
    w = {k[len("weights/"):]: v for k, v in checkpoint.items() if k.startswith("weights/")}
    momentum = {k: v for k, v in checkpoint.items() if k.startswith("momentum/")}
    state = (w, momentum, int(np.asarray(checkpoint["step"]).reshape(-1)[0]))
    losses, evals, masks, state, _ = _epochs(loop_mod, spec, state, midpoint(cases), cases=cases, data=data,
                                             device=device, precision=precision, compile=compile)
    before = {k: v for k, v in checkpoint.items() if k.startswith("masks/")}  # the checkpoint's run's, to the midpoint
    return _run_tensors("resumed", losses, evals, state[0], masks={**before, **masks})


def compute_variant(model_mod, train_mod, loop_mod, spec, *, cases: Cases, data: TrainingData, device: str,
                    precision: str, compile: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, info) of one variant: what the backend computes for every case, keys without the variant."""
    dtype, compiled = DTYPES[precision], compile == "compiled"
    w = weights.random_weights(spec, cases.weights_seed)
    images, labels = inputs(spec, cases)
    model = model_mod.build(spec, device=device, dtype=dtype, compiled=compiled)
    model_mod.load_weights(model, w)
    out = {"logits": model_mod.forward(model, images)}
    shapes = model_mod.layer_shapes(model, images)
    exported = model_mod.export_weights(model)

    nodrop = spec.with_dropout(0.0)
    model = model_mod.build(nodrop, device=device, dtype=dtype, compiled=compiled)
    model_mod.load_weights(model, w)
    loss, grads = train_mod.loss_and_grads(model, images, labels)
    out["loss"] = np.array([loss], dtype=dtype)
    out.update({f"grad/{k}": g for k, g in grads.items()})

    init = weights.init(spec, cases.init_seed)
    for prefix, steps, sgd in constant_rate_runs(cases):
        model = model_mod.build(nodrop, device=device, dtype=dtype, compiled=compiled)
        model_mod.load_weights(model, init)
        optimizer = train_mod.make_optimizer(model, np.full(steps, cases.lr), **sgd)  # a constant table
        losses = [train_mod.train_step(model, optimizer, model_mod.to_input(model, x), y)[0]
                  for x, y in data.batches[:steps]]
        out[f"{prefix}trajectory"] = np.array(losses, dtype=dtype)
        final = model_mod.export_weights(model)
        out.update({f"{prefix}final/{k}": v for k, v in final.items() if calc.is_trainable(k)})
        if not prefix:
            out.update({f"running/{k}": v for k, v in final.items() if not calc.is_trainable(k)})
    out.update(scheduled_run(loop_mod, spec, cases=cases, data=data, device=device, precision=precision,
                             compile=compile))
    ones = np.ones(DROPOUT_PROBE + (1, 1), dtype=dtype)
    for i, rate in enumerate(dropout_rates(spec)):
        probe = model_mod.build(dropout_probe(rate), device=device, dtype=dtype, compiled=compiled)
        out[f"dropout/{i}/train"] = model_mod.forward(probe, ones, training=True, seed=1)
        out[f"dropout/{i}/eval"] = model_mod.forward(probe, ones, training=False)
    info = {
        "spec": spec.to_dict(),
        "layer_shapes": [list(s) for s in shapes],
        "param_count": int(sum(v.size for k, v in exported.items() if calc.is_trainable(k))),
    }
    return {k: np.asarray(v, dtype=dtype) for k, v in out.items()}, info


def make_record(backend: str, variants: list, *, device: str, precision: str, compile: str, out: Path,
                cases: Cases = Cases(), data_dir=None, progress=None) -> Path:
    model_mod = processes.load(backend, "model")
    train_mod = processes.load(backend, "train")
    loop_mod = processes.load(backend, "loop")
    numerics = train_mod.configure(device, precision)  # first: XLA reads its flags when its GPU backend starts
    if device == "gpu":
        try:
            model_mod.default_device("gpu")
        except RuntimeError as e:
            raise DeviceError(one_line(e)) from None
    tensors: dict[str, np.ndarray] = {}
    per_variant = {}
    for name in variants:
        spec = specs.get(name) if isinstance(name, str) else name  # a name, a .json file, or a NetSpec
        if spec.name in per_variant:  # a record holds one network per name
            if per_variant[spec.name]["spec"] == spec.to_dict():
                continue
            raise SpecError(f"{name}: a second, different network named {spec.name!r} in one record")
        if progress:
            progress(f"{backend} {precision} {compile}: {spec.name}")
        values, info = compute_variant(model_mod, train_mod, loop_mod, spec, cases=cases,
                                       data=training_batches(spec, cases, data_dir), device=device,
                                       precision=precision, compile=compile)
        tensors.update({f"{spec.name}/{k}": v for k, v in values.items()})
        per_variant[spec.name] = info
    meta = records.record_meta(model_mod, train_mod, backend=backend, device=device, precision=precision,
                               compile=compile, numerics=numerics, cases=cases, variants=per_variant)
    return records.write_record(out, tensors, meta)


def make_resumed_record(backend: str, source: Path, *, device: str, precision: str, compile: str, out: Path,
                        data_dir=None, progress=None) -> Path:
    """A resume record: every variant of the record `source` (another backend's, or this one's) continued
    by this backend from the source's midpoint checkpoint, through this backend's loop."""
    src = records.read_record(source)
    if src.meta.get("resumed_from") is not None:
        raise SpecError(f"--resume-from {source}: a resume record holds no checkpoint; give a full record")
    if src.precision != precision:
        raise SpecError(f"--resume-from {source}: a {src.precision} record; this record is {precision}")
    model_mod = processes.load(backend, "model")
    train_mod = processes.load(backend, "train")
    loop_mod = processes.load(backend, "loop")
    numerics = train_mod.configure(device, precision)
    tensors = {}
    for name, spec in src.specs.items():
        if progress:
            progress(f"{backend} {precision} {compile}: {name} from {src.backend}'s checkpoint")
        prefix = f"{name}/scheduled/checkpoint/"
        checkpoint = {k[len(prefix):]: v for k, v in src.tensors.items() if k.startswith(prefix)}
        before = scheduled_steps(src.cases) * midpoint(src.cases)  # the masks of the steps before the checkpoint
        checkpoint.update({k[len(f"{name}/scheduled/"):]: v for k, v in src.tensors.items()
                           if k.startswith(f"{name}/scheduled/masks/") and int(k.split("/")[3]) < before})
        values = resumed_run(loop_mod, spec, checkpoint, cases=src.cases, data=training_batches(spec, src.cases,
                             data_dir), device=device, precision=precision, compile=compile)
        dtype = DTYPES[precision]
        tensors.update({f"{name}/{k}": np.asarray(v, dtype=dtype) for k, v in values.items()})
    meta = records.record_meta(model_mod, train_mod, backend=backend, device=device, precision=precision,
                               compile=compile, numerics=numerics, cases=src.cases, variants=src.meta["variants"])
    meta["resumed_from"] = {"backend": src.backend, "hyperparameters": src.meta["hyperparameters"],
                            "running_variance": src.meta["running_variance"], "record": str(source),
                            "float64_limits": src.meta.get("float64_limits", {})}
    return records.write_record(out, tensors, meta)


def one_line(error: BaseException) -> str:
    """An exception as one line: its message's first line (framework errors append C++ frames)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _arguments(argv: list[str] | None):
    """The worker's flags, checked together (argparse's one-line errors, exit status 2)."""
    p = argparse.ArgumentParser(prog="python -m conformance.record", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True)
    p.add_argument("--variant", nargs="+", help="variant names or .json specs (or --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the quick tier's case instead: conformance.cases.PROBE with PROBE_CASES")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--precision", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--compile", default="eager", choices=("eager", "compiled"))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume-from", type=Path,
                   help="a record (another backend's) whose midpoint checkpoint this backend continues")
    p.add_argument("--devices", type=int, default=1,
                   help="replicas of the data-parallel case (conformance.distributed); 1: the full record")
    p.add_argument("--sync-batch-norm", action="store_true",
                   help="with --devices: the framework's synchronised batch norm instead of its default")
    args = p.parse_args(argv)
    if sum(map(bool, (args.quick, args.variant, args.resume_from))) != 1:
        p.error("give --variant, --quick or --resume-from, one of the three")
    if not 1 <= args.devices <= records.MAX_DEVICES or (args.devices > 1 and args.resume_from):
        p.error(f"--devices: expected 1 to {records.MAX_DEVICES} (without --resume-from), got {args.devices}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: written; 2: input that cannot work (a spec, the data, the output path, no GPU);
    3: the framework is not installed here, or cannot do what is asked here (torch's SyncBatchNorm on a
    CPU); 1: the backend failed; 128 + N: stopped by signal N.
    Every failure ends with one line on stderr, the line `nin record` shows (NIN_TRACEBACK=1 adds
    the traceback of an unexpected error). The record is written atomically: never half a file."""
    args = _arguments(argv)
    variants, cases = ([PROBE], PROBE_CASES) if args.quick else (args.variant, Cases())
    if args.quick and args.devices > 1 and not args.sync_batch_norm:  # PROBE's batch norm is the synchronised case
        variants = [DATA_PARALLEL_PROBE]
    progress = lambda m: print(f"  recording {m}", file=sys.stderr, flush=True)  # noqa: E731
    with processes.sigterm_unwinds():
        try:
            missing = processes.missing_here(args.backend)
            if missing:
                print(f"{', '.join(missing)} not installed for {sys.executable}", file=sys.stderr)
                return 3
            check_writable(args.out, "--out")
            if args.devices > 1:
                out = distributed.make_record(args.backend, variants, devices=args.devices,
                                              sync_batch_norm=args.sync_batch_norm, device=args.device,
                                              precision=args.precision, out=args.out, cases=cases,
                                              progress=progress)
            elif args.resume_from:
                out = make_resumed_record(args.backend, args.resume_from, device=args.device,
                                          precision=args.precision, compile=args.compile, out=args.out,
                                          progress=progress)
            else:
                out = make_record(args.backend, variants, device=args.device, precision=args.precision,
                                  compile=args.compile, out=args.out, cases=cases, progress=progress)
        except KeyboardInterrupt as e:
            print("interrupted: no record written", file=sys.stderr)
            return processes.interrupted_status(e)
        except (SpecError, DataError, OutputError, BackendError, DeviceError, records.RecordError) as e:
            print(one_line(e), file=sys.stderr)
            return 2
        except NotImplementedError as e:  # what the framework cannot do here (torch's SyncBatchNorm on a CPU)
            print(f"not available here: {one_line(e)}", file=sys.stderr)
            return 3
        except Exception as e:  # one line for `nin record` to show; the traceback on request
            if os.environ.get("NIN_TRACEBACK"):
                traceback.print_exc()
            print(f"{type(e).__name__}: {one_line(e)}", file=sys.stderr)
            return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
