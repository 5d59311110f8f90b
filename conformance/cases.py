"""The conformance cases: seeded inputs every backend computes, and what a perfect backend would get.

Nothing in a record is needed to rebuild a case but its `Cases` (seeds and sizes):
* logits / shapes: common.weights.random_weights(spec, weights_seed) (random biases and batch-norm
  statistics too), `batch` random images from input_seed, evaluation mode.
* loss / gradients: the same weights and images, random labels, training mode, dropout off.
* trajectory / final weights: common.weights.init(spec, init_seed), the first steps * train_batch
  Fashion-MNIST training images in file order, `steps` steps of plain SGD at lr (the chapter's
  optimizer), dropout off.
* running statistics: batch norm's running mean and variance after the plain SGD run (momentum
  convention, and the variance's bias: PyTorch keeps the unbiased one, the others the biased one).
* momentum trajectory / final weights: the same start, `momentum_steps` steps of SGD with momentum
  and coupled weight decay (the paper's optimizer, and every framework's other SGD formulation).
* scheduled trajectory / evaluation / final weights / running statistics: the training loop's own
  code (each backend's loop.py: make_trainer, train_epoch, evaluate, export_state, load_state) on
  `scheduled_images` uint8 Fashion-MNIST images resized on the device, in the driver's per-epoch
  order, a warm-up + cosine learning-rate table, momentum and coupled weight decay, the last partial
  batch, an evaluation after every epoch (batch norm's running statistics), and a checkpoint after
  every epoch resumed in a fresh trainer: what `nin train` runs. Dropout is on where replays_dropout
  (the small networks: the quick tier's PROBE): each backend hands over the masks its own dropout
  layers drew (loop.dropout_masks) and the reference replays them, so the trajectory is checked
  exactly; elsewhere dropout is off.
* dropout: for each dropout rate p of the spec, a probe network (dropout alone) on a batch of ones,
  in training and in evaluation mode: a fraction p zeroed and the rest scaled by 1 / (1 - p) in
  training, the identity in evaluation (a statistical check: frameworks draw their own masks).
The float64 NumPy reference of a case is computed once and cached on disk by a hash of the spec,
the cases and REFERENCE_VERSION.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from common import calc, data, reference, schedule, weights
from common.fsio import atomic_path, cache_dir
from common.spec import Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock, walk

REFERENCE_VERSION = 7  # bump when common.reference or the cases change what they compute: the cache key


@dataclass(frozen=True)
class Cases:
    weights_seed: int = 11
    init_seed: int = 0
    input_seed: int = 5
    batch: int = 4  # images for logits and gradients (> 1: batch norm needs a batch)
    steps: int = 8  # plain SGD steps (docs/conformance.md: why 8)
    train_batch: int = 4  # small: the float64 reference and its perturbed copies train too
    lr: float = 0.05  # the chapter's rate
    momentum_steps: int = 3  # the second step is the first to use the momentum buffer
    momentum: float = 0.9
    weight_decay: float = 1e-3
    scheduled_images: int = 10  # the scheduled run: uint8 images, batches of 4, 4 and the partial 2
    scheduled_batch: int = 4
    scheduled_epochs: int = 2  # a checkpoint after each, resumed in a fresh trainer: the middle of the run
    scheduled_warmup: int = 2  # steps of linear warm-up, then cosine to 0 (common.schedule)
    test_images: int = 6  # evaluated after each epoch, in batches of scheduled_batch (4 and a partial 2)

    @classmethod
    def from_dict(cls, d: dict, source: str = "cases") -> Cases:
        """Cases from a record's metadata, every field checked; bounded, so a record cannot ask for days of work."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected an object, got {type(d).__name__}")
        fields = {f: v for f, v in asdict(cls()).items()}
        unknown = sorted(set(d) - set(fields))
        missing = sorted(set(fields) - set(d))
        if unknown or missing:
            raise ValueError(f"{source}: fields differ from {sorted(fields)}: unknown {unknown}, missing {missing}")
        limits = {"batch": (1, 64), "steps": (1, 100), "train_batch": (1, 64), "momentum_steps": (1, 100),
                  "scheduled_images": (1, 256), "scheduled_batch": (1, 64), "scheduled_epochs": (1, 8),
                  "scheduled_warmup": (0, 2048), "test_images": (1, 256)}
        for name, default in fields.items():
            v = d[name]
            if isinstance(default, int):
                low, high = limits.get(name, (0, 2**31))
                if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                    raise ValueError(f"{source}.{name}: expected an integer from {low} to {high}, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not 0 <= v <= 10:
                raise ValueError(f"{source}.{name}: expected a number in [0, 10], got {v!r}")
        return cls(**d)


# The reduced case of the quick tier (`nin conformance --quick`) and of the planted bugs
# (tests/mutations.py: every planted bug is judged on it, so the quick tier catches every one the
# full matrix catches). It exercises every check in seconds: two NiN blocks with 3x3 kernels (a
# flipped or transposed 1x1 kernel is invisible), stride 2 with padding (Keras's 'same' pads one
# side), a padded max pool whose ceil mode would add a row, a dropout rate whose complement differs
# (0.75: keep_prob for rate is 0.25; 0.5 would hide it), batch norm in one block. Its constants are
# exact in float32 (lr 1/16, momentum 7/8, weight decay 2^-10, batch-norm momentum 7/8, epsilon
# 2^-16), so that MXNet's float32 batch-norm momentum equals the exact one.
PROBE = NetSpec(
    "mutation-probe", (3, 20, 20), 10, (
        NiNBlock(8, kernel_size=3, stride=2, padding=1, mlp=(8,)),  # 20 -> 10
        MaxPool(3, 2, 1),  # 10 -> 5; ceil mode: 6
        Dropout(0.75),
        NiNBlock(10, kernel_size=3, stride=1, padding=1, mlp=(10,), batch_norm=True),  # 5 -> 5
        GlobalAvgPool(), Flatten()),
    bn_momentum=0.875, bn_eps=2.0 ** -16)
PROBE_CASES = Cases(steps=4, momentum_steps=3, lr=0.0625, momentum=0.875, weight_decay=2.0 ** -10)
# The quick tier's data-parallel case without batch norm: on one device or N, the same computation
# (PROBE's batch norm is the synchronised case; PyTorch's SyncBatchNorm needs GPUs).
DATA_PARALLEL_PROBE = dataclasses.replace(PROBE, name="data-parallel-probe", layers=tuple(
    dataclasses.replace(layer, batch_norm=False) if isinstance(layer, NiNBlock) else layer for layer in PROBE.layers))

DROPOUT_PROBE = (16, 1024)  # batch, units: 16384 draws put the dropped fraction within 0.02 of p at 5 sigma


def dropout_rates(spec) -> list[float]:
    """The distinct non-zero dropout rates of a spec, in increasing order."""
    return sorted({layer.rate for layer in spec.layers if isinstance(layer, Dropout) and layer.rate > 0})


def dropout_probe(rate: float) -> NetSpec:
    """Dropout alone, on DROPOUT_PROBE[1] channels of 1x1: what the dropout check runs in each backend."""
    units = DROPOUT_PROBE[1]
    return NetSpec(f"dropout-probe-{rate:g}", (units, 1, 1), units, (Dropout(rate), GlobalAvgPool(), Flatten()))


HYPERPARAMETERS = ("exact", "float32")  # how a backend's kernels may take the hyperparameters (as_kernels_see)


def as_kernels_see(spec, cases: Cases, hyperparameters: str) -> tuple[NetSpec, Cases]:
    """The spec and cases with the hyperparameters a backend's kernels really use: "exact", or
    "float32" (MXNet's BatchNorm kernel takes the running statistics' momentum as a 32-bit float; in
    float64 mode the difference is a million times the bound). Optimizer settings are exact in every
    backend: each one's SGD is written in its framework's arithmetic (nin_mxnet's SuiteSGD in NDArray
    operations with double scalars, not MXNet's float32-argument sgd_mom_update kernel)."""
    if hyperparameters == "exact":
        return spec, cases
    if hyperparameters not in HYPERPARAMETERS:
        raise ValueError(f"hyperparameters must be one of {HYPERPARAMETERS}, got {hyperparameters!r}")
    return dataclasses.replace(spec, bn_momentum=float(np.float32(spec.bn_momentum))), cases


def inputs(spec, cases: Cases) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 NCHW, labels int32) of the logits and gradient cases."""
    rng = np.random.default_rng(cases.input_seed)
    images = rng.random((cases.batch,) + spec.input_shape, dtype=np.float32)
    labels = rng.integers(0, spec.num_classes, size=cases.batch).astype(np.int32)
    return images, labels


@dataclass(frozen=True)
class TrainingData:
    """What the training cases train on: float batches of the constant-rate runs; uint8 images of the scheduled one."""
    batches: list  # (float32 NCHW images, int32 labels), the first ones in file order
    images: np.ndarray  # uint8 (scheduled_images, 28, 28), the first training images in file order
    labels: np.ndarray
    test_images: np.ndarray  # uint8 (test_images, 28, 28), the first test images
    test_labels: np.ndarray


def training_batches(spec, cases: Cases, data_dir=None) -> TrainingData:
    """The Fashion-MNIST data of every training case (the momentum run uses the first batches)."""
    batches = data.fixed_batches(spec, max(cases.steps, cases.momentum_steps), cases.train_batch, data_dir)
    x, y = data.load("train", data_dir)
    tx, ty = data.load("test", data_dir)
    n, m = cases.scheduled_images, cases.test_images
    return TrainingData(batches, x[:n].copy(), y[:n].astype(np.int32), tx[:m].copy(), ty[:m].astype(np.int32))


def constant_rate_runs(cases: Cases) -> tuple[tuple[str, int, dict], ...]:
    """The constant-rate training cases, as (key prefix, steps, SGD settings): plain SGD, then momentum
    with weight decay. The reference, every record and the data-parallel case run exactly these."""
    return (("", cases.steps, {"momentum": 0.0, "weight_decay": 0.0}),
            ("momentum/", cases.momentum_steps, {"momentum": cases.momentum, "weight_decay": cases.weight_decay}))


def scheduled_lrs(cases: Cases) -> np.ndarray:
    """The scheduled run's rate of every step: warm-up, then cosine to 0, peaking at cases.lr."""
    total = cases.scheduled_epochs * scheduled_steps(cases)
    return schedule.lr_table(cases.lr, total=total, warmup=cases.scheduled_warmup, schedule="cosine")


def scheduled_steps(cases: Cases) -> int:
    """Steps per epoch of the scheduled run (the last batch may be partial)."""
    return -(-cases.scheduled_images // cases.scheduled_batch)


def midpoint(cases: Cases) -> int:
    """The epochs before the checkpoint that the cross-framework resume case starts from."""
    return max(1, cases.scheduled_epochs // 2)


def resumed_view(values: dict, cases: Cases) -> dict:
    """The scheduled case's quantities after the midpoint checkpoint, as "resumed/..." keys: what a
    run resumed from that checkpoint (by any backend) must reproduce. Works on references, spreads
    and records alike (a spread's trajectory is per step, like the trajectory)."""
    out = {}
    for key, value in values.items():
        if not key.startswith("scheduled/") or key.startswith("scheduled/checkpoint/"):
            continue
        name = "resumed/" + key[len("scheduled/"):]
        if key == "scheduled/trajectory":
            value = np.asarray(value)[midpoint(cases) * scheduled_steps(cases):]
        elif key.startswith("scheduled/eval"):
            value = np.asarray(value)[midpoint(cases):]
        out[name] = value
    return out


def scheduled_order(cases: Cases, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: the driver's (common.data.epoch_order), seeded by init_seed."""
    return data.epoch_order(cases.scheduled_images, seed=cases.init_seed, epoch=epoch)


def replays_dropout(spec) -> bool:
    """Whether the scheduled case of `spec` runs with dropout on, each step's masks those the backend drew and
    the reference replays (masks_of). Its error model depends on the masks, so it is measured for each record
    when the record is compared (SCHEDULED_MEMBERS perturbed copies): for the small networks, whose copies take
    seconds. A 224 x 224 variant's take minutes per record; their scheduled case runs with dropout off, and their
    dropout is checked by the statistical check (docs/conformance.md, "Dropout")."""
    return bool(dropout_rates(spec)) and calc.summary(spec).total_macs <= REPLAY_MACS


REPLAY_MACS = 10 ** 6  # multiply-adds per image up to which the scheduled case replays dropout (PROBE: 0.05 M)


def dropout_shapes(spec, cases: Cases) -> list[list[tuple[int, ...]]]:
    """The input shape (N, C, H, W) of every dropout layer (rate 0 too) in each batch of a scheduled epoch:
    what loop.dropout_masks draws."""
    inputs_ = [op.in_shape for op in walk(spec) if op.kind == "dropout"]
    sizes = [min(cases.scheduled_batch, cases.scheduled_images - start)
             for start in range(0, cases.scheduled_images, cases.scheduled_batch)]
    return [[(n, *shape) for shape in inputs_] for n in sizes]


def mask_shapes(spec, cases: Cases) -> dict[str, tuple[int, ...]]:
    """The keep masks a record of `spec` holds for the scheduled run, "masks/<step>/<layer>" -> (N, C, H, W), every
    step of both epochs and every dropout layer of non-zero rate; {} where dropout is off (replays_dropout)."""
    if not replays_dropout(spec):
        return {}
    kept = [rate > 0 for rate in (layer.rate for layer in spec.layers if isinstance(layer, Dropout))]
    batches = dropout_shapes(spec, cases) * cases.scheduled_epochs
    return {f"masks/{t}/{j}": shape for t, batch in enumerate(batches)
            for j, shape in enumerate(s for s, keep in zip(batch, kept) if keep)}


def masks_of(values: dict, spec, prefix: str = "scheduled") -> list[list[np.ndarray]]:
    """The keep masks of every step of a scheduled run from a record's values ("<prefix>/masks/<step>/<layer>",
    the dropout layers of non-zero rate): what the reference replays. KeyError names the first one missing."""
    layers = sum(1 for layer in spec.layers if isinstance(layer, Dropout) and layer.rate > 0)
    steps = sorted({int(k.split("/")[2]) for k in values if k.startswith(f"{prefix}/masks/")})
    if not steps:
        raise KeyError(f"{prefix}/masks/0/0")
    return [[np.asarray(values[f"{prefix}/masks/{t}/{j}"]) for j in range(layers)] for t in range(steps[-1] + 1)]


def scheduled(spec, cases: Cases, d: TrainingData, *, rounding: reference.Rounding | None = None,
              masks: list | None = None) -> dict[str, np.ndarray]:
    """The scheduled case in float64: per epoch, the driver's order, SGD over the table's rates,
    then an evaluation with the running statistics (biased and, as "_unbiased", PyTorch's variance).
    masks: every step's keep masks (masks_of), replayed with dropout on; None: dropout off."""
    init = weights.init(spec, cases.init_seed)
    spec = spec if masks is not None else spec.with_dropout(0.0)
    rows, cols = data.input_matrices(spec)
    resize = lambda images: reference.resize(images, rows, cols, spec.input_shape[0], rounding=rounding)  # noqa: E731
    lrs, velocity, losses, evals = scheduled_lrs(cases), {}, [], []
    w = {k: np.array(v, dtype=np.float64) for k, v in init.items()}
    running = {k: v.copy() for k, v in w.items() if k.endswith((".running_mean", ".running_var"))}
    running.update({k + "_unbiased": v.copy() for k, v in running.items() if k.endswith(".running_var")})
    tx = resize(d.test_images)
    for epoch in range(cases.scheduled_epochs):
        order = scheduled_order(cases, epoch)
        for start in range(0, cases.scheduled_images, cases.scheduled_batch):
            idx = order[start:start + cases.scheduled_batch]
            loss, grads = reference.loss_and_grads(spec, w, resize(d.images[idx]), d.labels[idx], rounding=rounding,
                                                   running=running, masks=None if masks is None else masks[len(losses)])
            reference.sgd_step(w, grads, velocity, lr=float(lrs[len(losses)]), momentum=cases.momentum,
                               weight_decay=cases.weight_decay, rounding=rounding)
            losses.append(loss)
        for suffix in ("", "_unbiased"):
            seen = {**w, **{k: running[k + suffix] if k.endswith(".running_var") else v for k, v in running.items()
                            if not k.endswith("_unbiased")}}
            evals.append((suffix, reference.evaluate(spec, seen, tx, d.test_labels, batch_size=cases.scheduled_batch,
                                                     rounding=rounding)))
    out = {"scheduled/trajectory": np.array(losses),
           "scheduled/eval": np.array([v for s, v in evals if not s]),
           "scheduled/eval_unbiased": np.array([v for s, v in evals if s])}
    out.update({f"scheduled/final/{k}": v for k, v in w.items() if calc.is_trainable(k)})
    out.update({f"scheduled/running/{k}": v for k, v in running.items()})
    return out


def compute(spec, cases: Cases, training: TrainingData, *, rounding: reference.Rounding | None = None
            ) -> dict[str, np.ndarray]:
    """Every quantity a record holds for one variant, computed by the float64 reference (with
    `rounding`: a perturbed copy, see conformance.errormodel). Keys as in a record, without the variant."""
    w = weights.random_weights(spec, cases.weights_seed)
    images, labels = inputs(spec, cases)
    out = {"logits": reference.forward(spec, w, images, rounding=rounding)}
    loss, grads = reference.loss_and_grads(spec.with_dropout(0.0), w, images, labels, rounding=rounding)
    out["loss"] = np.array([loss])
    out.update({f"grad/{k}": v for k, v in grads.items()})
    init = weights.init(spec, cases.init_seed)
    for prefix, steps, sgd in constant_rate_runs(cases):
        losses, final = reference.train_trajectory(spec, init, training.batches[:steps], lr=cases.lr,
                                                   rounding=rounding, **sgd)
        out[f"{prefix}trajectory"] = losses
        out.update({f"{prefix}final/{k}": v for k, v in final.items() if calc.is_trainable(k)})
        if not prefix:
            out.update({f"running/{k}": v for k, v in final.items() if not calc.is_trainable(k)})
    out.update(scheduled(spec, cases, training, rounding=rounding))
    out.update({f"dropout/{i}/rate": np.array([p]) for i, p in enumerate(dropout_rates(spec))})
    return out


def case_key(spec, cases: Cases, *extra) -> str:
    """The hash that names a case's cached results: the spec, the cases and the reference's version."""
    identity = [spec.to_json(), asdict(cases), sorted(calc.param_shapes(spec).items()), REFERENCE_VERSION, *extra]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def reference_results(spec, cases: Cases, data_dir=None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """What a perfect backend would record, in float64; cached on disk by case_key."""
    cache = cache_dir() / "reference" / f"{spec.name}-{case_key(spec, cases)}.npz"
    if use_cache and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return dict(z)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is recomputed
    out = compute(spec, cases, training_batches(spec, cases, data_dir))
    if use_cache:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **out)
    return out
