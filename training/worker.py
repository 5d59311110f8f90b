"""The worker side of `nin train` and `nin lr-find`: runs in the backend's own interpreter.

    python -m training.worker train --settings '{"backend": NAME, ...}' --out runs/NAME-d2l [--resume]
    python -m training.worker lr-find --settings '{...}' --out runs/lrfind-NAME --min-lr 1e-4 --max-lr 10 --steps 100

It imports the backend by the registry's name (harness.processes.load: nin_<x>/loop.py, the
framework's own training loop) and owns everything framework-free: the data and its order per
(seed, epoch), the learning-rate table, the progress bar, the metrics, the checkpoints, and the
divergence check. Progress goes to stderr; the last line of stdout is one JSON object (the result).

Exit status: 0 finished; 1 the run diverged (its last good checkpoint is kept) or crashed; 2 bad input
(a one-line message); 3 the backend's framework is not installed here; 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from common import data, weights
from common.data import DataError
from common.fsio import OutputError, atomic_write_text
from common.weights import WeightsError
from harness import processes

from . import recipe as recipes
from . import runs
from .recipe import Settings, SettingsError
from .replicas import Replicas, leave, spread
from .runs import RunError


class DivergedError(RuntimeError):
    """The loss became NaN / infinite or exceeded --max-loss; raised from the progress callback."""


class Stop(Exception):  # noqa: N818 (a signal to the loop, not an error)
    """The LR range test has seen enough: the loss left its minimum far behind."""


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, file=sys.stderr,
                dynamic_ncols=True, disable=quiet, mininterval=0.5)


def load_data(s: Settings, data_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 train and test images (N, 28, 28) and labels: the first --train-limit / --test-limit of each."""
    x, y = data.load("train", data_dir)
    tx, ty = data.load("test", data_dir)
    if s.train_limit:
        x, y = x[:s.train_limit], y[:s.train_limit]
    if s.test_limit:
        tx, ty = tx[:s.test_limit], ty[:s.test_limit]
    return np.array(x), y.astype(np.int32), np.array(tx), ty.astype(np.int32)  # writable copies


class Tally:
    """The running sums of one epoch, fed by the backend after every batch; checks for divergence."""

    def __init__(self, s: Settings, *, epoch: int, bar, lrs: np.ndarray, step0: int):
        self.s, self.epoch, self.bar, self.lrs, self.step0 = s, epoch, bar, lrs, step0
        self.images, self.loss_sum, self.correct, self.steps, self.losses = 0, 0.0, 0, 0, []
        self.start = time.perf_counter()

    def __call__(self, n: int, loss: float, correct: int) -> None:
        step = self.step0 + self.steps
        self.steps += 1
        self.losses.append(loss)
        if not math.isfinite(loss) or loss > self.s.max_loss:
            lr = self.lrs[min(step, len(self.lrs) - 1)]
            raise DivergedError(f"loss {loss:.4g} at epoch {self.epoch + 1}, step {self.steps} (global step "
                                f"{step + 1}, lr {lr:.4g})"
                                + ("" if not math.isfinite(loss) else f", above --max-loss {self.s.max_loss:g}"))
        self.images += n
        self.loss_sum += loss * n
        self.correct += correct
        self.bar.update(n)
        if self.steps % 5 == 0 or self.images == self.bar.total:
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"loss {self.loss_sum / self.images:.4f} acc {self.correct / self.images:.3f} "
                                     f"{rate:,.0f} img/s", refresh=False)


def _header(s: Settings, *, train, device_name: str, numerics: dict, command: str, sizes: dict) -> dict:
    framework = processes.load(s.backend, "model").FRAMEWORK
    return {"type": "header", "format": runs.METRICS_FORMAT, "backend": s.backend, "framework": framework,
            "variant": s.variant, "device": s.device, "device_name": device_name,
            "versions": {k: str(v) for k, v in train.versions().items()},
            "numerics": {k: str(v) for k, v in numerics.items()}, "settings": s.to_dict(), **sizes,
            "python": platform.python_version(), "host": platform.node(), "platform": platform.platform(),
            "created": _now(), "command": command}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _kill_at(step: int | None, done: int) -> None:
    """--kill-at-step (tests): SIGKILL this process mid-epoch, as a crash or `kill -9` would."""
    if step is not None and done >= step:
        os.kill(os.getpid(), signal.SIGKILL)


def _resume(s: Settings, out: Path, command: str, replicas: Replicas = Replicas()) -> tuple:
    """(records, epoch, step, other events, header, weights, optimizer state) of the run in `out`, which
    must have been made with `s` (its checkpoint and its metrics agreeing: runs.stored_settings). A
    checkpoint that is there but cannot be used is an error, never a silent restart from epoch 0."""
    stored = runs.stored_settings(out)
    if stored != s:
        differ = [f"{k} {v!r} (asked {getattr(s, k)!r})" for k, v in stored.to_dict().items() if getattr(s, k) != v]
        raise RunError(f"{out}: the run was made with {', '.join(differ)}; "
                       "--resume continues a run with its own settings")
    header, others = None, []
    if runs.existing(out / runs.METRICS, "metrics file"):
        header, _, others = runs.read_metrics(out / runs.METRICS)
    init, optimizer_state = None, {}
    if runs.existing(out / runs.CHECKPOINT, "checkpoint"):
        init, optimizer_state, meta = runs.read_checkpoint(out / runs.CHECKPOINT)
        records, epoch0, step0 = list(meta["records"]), meta["epoch"], meta["step"]
    else:  # stopped before its first epoch ended: start again from the canonical init
        records, epoch0, step0 = [], 0, 0
    others = others + [{"type": "resume", "epoch": epoch0, "step": step0, "devices": replicas.total,
                        **({"nodes": replicas.nodes} if replicas.nodes > 1 else {}), "created": _now(),
                        "command": command}]
    return records, epoch0, step0, others, header, init, optimizer_state


def train(s: Settings, out: Path, *, resume: bool, command: str, quiet: bool = False, kill_at_step=None,
          data_dir=None, replicas: Replicas = Replicas()) -> dict:
    """Run (or, with `resume`, continue) the run `s` in `out`: metrics and a checkpoint after every
    epoch; DivergedError when the loss leaves the finite or --max-loss, RunError for a run directory
    that cannot be used. A new run writes nothing until its first epoch ends or it diverges. Its
    checkpoints are canonical: a run on N devices resumes on any other number, and the other way round."""
    out = Path(out)
    metrics_path, checkpoint_path = out / runs.METRICS, out / runs.CHECKPOINT
    if resume:
        records, epoch0, step0, others, header, init, optimizer_state = _resume(s, out, command, replicas)
    else:
        if runs.existing(metrics_path, "metrics file") or runs.existing(checkpoint_path, "checkpoint"):
            raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        records, epoch0, step0, others, header = [], 0, 0, [], None
    spec = recipes.network(s)
    if not epoch0:
        init, optimizer_state = weights.init(spec, s.seed), {}
    if epoch0 == s.epochs:
        return {"status": "done", "epochs": epoch0, "records": records, "out": str(out)}

    train_mod = processes.load(s.backend, "train")
    loop = processes.load(s.backend, "loop")
    numerics = train_mod.configure(s.device, s.precision)
    x, y, tx, ty = load_data(s, data_dir)
    steps = recipes.steps_per_epoch(len(x), s.batch_size)
    lrs = recipes.lr_table(s, steps)
    recipes.check_devices(s, replicas.devices, len(x), nodes=replicas.nodes)
    try:
        trainer = loop.make_trainer(spec, lrs, momentum=s.momentum_used, weight_decay=s.weight_decay,
                                    device=s.device, compile=s.compile, devices=replicas.devices,
                                    nodes=replicas.nodes)
    except (ValueError, NotImplementedError) as e:  # the engine cannot run these replicas here: say why
        if replicas.total == 1:
            raise
        raise SettingsError(f"--{'nodes' if replicas.nodes > 1 else 'devices'} "
                            f"{replicas.nodes if replicas.nodes > 1 else replicas.devices}: {e}") from None
    quiet = quiet or not replicas.primary
    try:
        loop.load_state(trainer, init, optimizer_state, step0)
    except (ValueError, WeightsError) as e:
        raise RunError(f"{checkpoint_path}: {e}") from None
    if header is None:
        header = _header(s, train=train_mod, device_name=train_mod.device_name(s.device), numerics=numerics,
                         command=command, sizes={"train_images": len(x), "test_images": len(tx),
                                                 "steps_per_epoch": steps, "devices": replicas.total,
                                                 **({"nodes": replicas.nodes} if replicas.nodes > 1 else {}),
                                                 **({"engine": replicas.engine} if replicas.engine else {})})
    if not replicas.primary:  # a replica of a data-parallel run: trains its shards, writes nothing
        header = None
    if resume and header:  # the resume event now; a new run's metrics wait for its first epoch (or its divergence), so
        runs.write_metrics(out, [header, *records, *others])  # that a run failing before one leaves nothing

    for epoch in range(epoch0, s.epochs):
        order = data.epoch_order(len(x), seed=s.seed, epoch=epoch)
        wall = time.perf_counter()
        bar = _bar(len(x), f"{s.backend} {s.variant} epoch {epoch + 1}/{s.epochs}", quiet)
        tally = Tally(s, epoch=epoch, bar=bar, lrs=lrs, step0=epoch * steps)
        callback = tally if kill_at_step is None else _killing(tally, kill_at_step, epoch * steps)
        try:
            loop.train_epoch(trainer, x[order], y[order], batch_size=s.batch_size,
                             dropout_seed=recipes.dropout_seed(s.seed, epoch), progress=callback)
        except DivergedError as e:
            bar.close()
            others.append({"type": "diverged", "epoch": epoch + 1, "step": epoch * steps + tally.steps,
                           "loss": tally.losses[-1], "created": _now(), "message": str(e)})
            if header:
                runs.write_metrics(out, [header, *records, *others])
            kept = (f"kept the last good checkpoint {checkpoint_path} (after epoch {epoch})" if epoch
                    else "no epoch finished, so there is no checkpoint")
            raise DivergedError(f"{s.backend} {s.variant} diverged: {e}; stopped, {kept}") from None
        train_seconds = time.perf_counter() - tally.start
        # every replica evaluates and exports, the primary's results are kept: where the replicas are one program
        # (a JAX Mesh across machines), each process takes part in every computation on the replicated state
        if (epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs:
            bar.set_description_str(f"{s.backend} {s.variant} epoch {epoch + 1}/{s.epochs} (evaluating)")
            result = loop.evaluate(trainer, tx, ty, batch_size=s.batch_size)
        else:  # --eval-every: not tested this epoch
            result = {"loss": math.nan, "accuracy": math.nan, "zero_logits": math.nan, "skipped": True}
        bar.close()
        w, opt, step = loop.export_state(trainer)
        if header is None:  # not the primary replica: it holds the same model, and writes nothing
            continue
        bad = [k for k, v in w.items() if not np.all(np.isfinite(v))]
        if bad or not (math.isfinite(result["loss"]) or result.get("skipped")):
            others.append({"type": "diverged", "epoch": epoch + 1, "step": step, "loss": result["loss"],
                           "created": _now(), "message": f"non-finite weights {bad[:3]} or test loss"})
            runs.write_metrics(out, [header, *records, *others])
            raise DivergedError(f"{s.backend} {s.variant} diverged in epoch {epoch + 1}: non-finite weights {bad[:3]} "
                           f"or test loss {result['loss']}; kept the last good checkpoint")
        record = {"type": "epoch", "epoch": epoch + 1, "step": step, "lr": float(lrs[step - 1]),
                  "train_loss": tally.loss_sum / tally.images, "train_accuracy": tally.correct / tally.images,
                  "test_loss": result["loss"], "test_accuracy": result["accuracy"],
                  "test_zero_logits": result["zero_logits"], "images_per_second": tally.images / train_seconds,
                  "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - wall}
        records.append(record)
        runs.write_checkpoint(out, weights=w, optimizer=opt, meta={
            "backend": s.backend, "settings": s.to_dict(), "epoch": epoch + 1, "step": step,
            "rng": {"seed": s.seed, "next_epoch": epoch + 1,
                    "note": "data order and dropout restart from (seed, epoch) every epoch"},
            "records": records})
        runs.write_metrics(out, [header, *records, *others])
        if not quiet:
            print(f"{s.backend} {s.variant} epoch {epoch + 1}/{s.epochs}: loss {record['train_loss']:.4f}, "
                  f"train acc {record['train_accuracy']:.4f}, test loss {record['test_loss']:.4f}, "
                  f"test acc {record['test_accuracy']:.4f}, {record['images_per_second']:,.0f} img/s, "
                  f"{record['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    return {"status": "done", "epochs": s.epochs, "records": records, "out": str(out)}


def _killing(tally: Tally, kill_at_step: int, first_step: int):
    def callback(n, loss, correct):
        tally(n, loss, correct)
        _kill_at(kill_at_step, first_step + tally.steps)
    return callback


DEAD_RUN = 30  # batches in a row at ln(classes): the final ReLU outputs zero for every image, for good


def lr_find(s: Settings, out: Path, *, min_lr: float, max_lr: float, steps: int, command: str,
            quiet: bool = False, data_dir=None) -> dict:
    """The LR range test: from the canonical init, one step per rate, geometric from min_lr to max_lr
    (min_lr == max_lr: one rate held, the plateau probe); stops when the smoothed loss exceeds 4x its
    minimum, turns NaN, or the network dies (DEAD_RUN batches in a row whose loss is ln(classes) to
    1e-5: every logit equal). Writes OUT/lr_find.json with every batch's loss."""
    spec = recipes.network(s)
    train_mod = processes.load(s.backend, "train")
    loop = processes.load(s.backend, "loop")
    numerics = train_mod.configure(s.device, s.precision)
    x, y, _, _ = load_data(s, data_dir)
    lrs = recipes.range_test_table(min_lr, max_lr, steps)
    images_needed = steps * s.batch_size
    order = np.concatenate([data.epoch_order(len(x), seed=s.seed, epoch=e)
                            for e in range(-(-images_needed // len(x)))])[:images_needed]
    trainer = loop.make_trainer(spec, lrs, momentum=s.momentum_used, weight_decay=s.weight_decay, device=s.device,
                                compile=s.compile)
    loop.load_state(trainer, weights.init(spec, s.seed), {}, 0)
    losses: list[float] = []
    uniform = math.log(spec.num_classes)
    smooth, best, beta, dead = 0.0, math.inf, 0.9, 0
    bar = _bar(images_needed, f"{s.backend} {s.variant} lr-find", quiet)

    def progress(n, loss, correct):
        nonlocal smooth, best, dead
        losses.append(loss)
        dead = dead + 1 if abs(loss - uniform) < 1e-5 else 0
        bar.update(n)
        smooth = beta * smooth + (1 - beta) * loss
        value = smooth / (1 - beta ** len(losses))
        best = min(best, value)
        bar.set_postfix_str(f"lr {lrs[len(losses) - 1]:.3g} loss {value:.4f}", refresh=False)
        if not math.isfinite(loss) or (len(losses) > 10 and value > 4 * best) or dead >= DEAD_RUN:
            raise Stop

    try:
        loop.train_epoch(trainer, x[order], y[order], batch_size=s.batch_size,
                         dropout_seed=recipes.dropout_seed(s.seed, 0), progress=progress)
        stopped = "the last rate"
    except Stop:
        stopped = ("the loss became NaN" if not math.isfinite(losses[-1]) else
                   f"dead: {DEAD_RUN} batches in a row at ln {spec.num_classes}" if dead >= DEAD_RUN else
                   "the loss exceeded 4x its smoothed minimum")
    bar.close()
    result = {"format": "nin-lr-find/1", "backend": s.backend, "variant": s.variant, "settings": s.to_dict(),
              "device": s.device, "device_name": train_mod.device_name(s.device),
              "versions": {k: str(v) for k, v in train_mod.versions().items()},
              "numerics": {k: str(v) for k, v in numerics.items()}, "min_lr": min_lr, "max_lr": max_lr,
              "steps": steps, "lrs": [float(v) for v in lrs[:len(losses)]], "losses": losses, "stopped": stopped,
              "created": _now(), "command": command}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "lr_find.json", json.dumps(result, allow_nan=True) + "\n")
    return {"status": "done", "out": str(Path(out) / "lr_find.json"), "steps_run": len(losses), "stopped": stopped}


def failure_line(error: BaseException) -> str:
    """An exception as one line: its type and first line, and the first later line naming an error where the
    first only says where it was raised (Keras: "Exception encountered when calling Sequential.call().")."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    named = next((line for line in lines[1:] if re.match(r"\w+(Error|Exception): ", line)), None)
    first = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"{first} {named}" if named and lines[0].startswith("Exception encountered") else first


def _failed(settings: Settings, out: Path, error: Exception) -> int:
    """A framework's failure inside a run: one line (NIN_TRACEBACK=1 adds the traceback), the result saying
    "error" (not "diverged", which exits 1 too), exit status 1."""
    if os.environ.get("NIN_TRACEBACK"):
        traceback.print_exc()
    reason = f"{settings.backend} failed: {failure_line(error)}"
    print(f"nin train: {reason}; the last checkpoint in {out} is kept", file=sys.stderr)
    processes.print_result({"status": "error", "reason": reason})
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("train", "lr-find"))
    p.add_argument("--settings", required=True, help="the run's Settings as JSON")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--command", default=" ".join(sys.argv))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--max-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--devices", type=int, default=1, help="data-parallel replicas on the backend's engine")
    p.add_argument("--nodes", type=int, default=1, help="machines, --devices replicas on each")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's place among them")
    p.add_argument("--rendezvous", default="", help="HOST:PORT where node 0 listens")
    p.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)  # tests: SIGKILL itself mid-epoch
    args = p.parse_args(argv)
    try:
        settings = runs.settings_from(json.loads(args.settings), "--settings")
    except json.JSONDecodeError as e:
        print(f"nin train: --settings: not valid JSON ({e})", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"nin train: {e}", file=sys.stderr)
        return 2
    missing = processes.missing_here(settings.backend)
    if missing:
        print(f"nin train: {', '.join(missing)} not installed for {sys.executable}", file=sys.stderr)
        return 3
    try:
        replicas = spread(settings, devices=args.devices, nodes=args.nodes, node_rank=args.node_rank,
                          rendezvous=args.rendezvous, argv=argv if argv is not None else sys.argv[1:])
        if isinstance(replicas, int):  # the launcher ran the replicas, each a process of its own
            return replicas
        if args.mode == "train":
            result = train(settings, args.out, resume=args.resume, command=args.command, quiet=args.quiet,
                           kill_at_step=args.kill_at_step, replicas=replicas)
        else:
            result = lr_find(settings, args.out, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                             command=args.command, quiet=args.quiet)
    except DivergedError as e:
        print(f"nin train: {e}", file=sys.stderr)
        processes.print_result({"status": "diverged", "reason": str(e)})
        return 1
    except (RunError, SettingsError, DataError, OutputError, WeightsError) as e:
        print(f"nin train: {e}", file=sys.stderr)
        processes.print_result({"status": "error", "reason": str(e)})
        return 2
    except KeyboardInterrupt:
        print(f"nin train: interrupted; the last checkpoint in {args.out} is kept (--resume continues it)",
              file=sys.stderr)
        return 130
    except Exception as e:  # the framework failed
        return _failed(settings, args.out, e)
    if replicas.primary:
        processes.print_result(result)
    return 0


if __name__ == "__main__":
    status = main()
    if any(arg.startswith("--devices") for arg in sys.argv):
        leave(status)
    sys.exit(status)
