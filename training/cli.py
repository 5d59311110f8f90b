"""The `nin` subcommands of the training driver.

    nin train     one run: a backend, a variant, a recipe; metrics, checkpoints, --resume
    nin sweep     many runs with one recipe (backends x variants x seeds), resumable; then the report
    nin report    the summary per (variant, backend) and the backends' agreement (TOST) of runs
    nin plot      runs' curves overlaid, one colour per backend (or per variant)
    nin lr-find   the learning-rate range test, per backend and variant, plotted

Every run happens in the backend's own interpreter (`python -m training.worker`, started through
harness.processes); nothing here imports a framework.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

from common import backends, tables
from common import spec as specs
from common.calc import CostError
from common.fsio import OutputError, atomic_write_text, check_writable, exclusive
from harness import flags, processes

from . import recipe as recipes
from . import report as reports
from . import runs
from .recipe import Settings, SettingsError
from .runs import RunError

ROOT = backends.ROOT
EXIT_DIVERGED = 1


def _one_line(command):
    """Bad input (a setting, a run directory, a metrics file, a checkpoint): one line, exit status 2."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except (RunError, SettingsError, CostError, OutputError) as e:
            print(f"nin {args.command}: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    return run


def _command_line() -> str:
    return "nin " + shlex.join(sys.argv[1:]) if sys.argv else "nin"


# --- settings from flags ----------------------------------------------------------------------
def _settings(args, backend: str, *, variant: str | None = None, seed: int | None = None) -> Settings:
    overrides = {k: getattr(args, k) for k in recipes.TUNABLE}
    return recipes.from_recipe(
        args.recipe, backend, variant=variant or args.variant, resize=args.resize, train_limit=args.train_limit,
        test_limit=args.test_limit, seed=args.seed if seed is None else seed, device=args.device,
        precision=args.precision, compile=args.compile, max_loss=args.max_loss, eval_every=args.eval_every,
        **overrides)


def _explicit(args) -> dict:
    """The settings flags the user typed (argparse defaults are None for every one of them)."""
    names = recipes.TUNABLE + ("variant", "resize", "train_limit", "test_limit", "seed", "device", "precision",
                               "compile", "max_loss", "eval_every")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _variant_arg(name: str) -> str:
    """A named variant, or a JSON spec file (made absolute: the worker runs in the repository)."""
    if name.endswith(".json"):
        try:
            specs.get(name)
        except specs.SpecError as e:  # argparse would print only "invalid value" for a ValueError
            raise argparse.ArgumentTypeError(" ".join(str(e).split())) from None
        return str(Path(name).resolve())
    if name not in specs.VARIANTS:
        raise argparse.ArgumentTypeError(f"expected one of {sorted(specs.VARIANTS)} or a .json spec file, "
                                         f"got {name!r}")
    return name


def failed(code: int, result: dict) -> bool:
    """Whether a worker's run failed: any exit but 0, save a divergence (EXIT_DIVERGED with its result saying so,
    a finished run whose loss ran away; a crash exits 1 too)."""
    return code != 0 and not (code == EXIT_DIVERGED and result.get("status") == "diverged")


def run_worker(mode: str, s: Settings, out: Path, *, extra: list[str] = (), quiet: bool = False,
               timeout: float | None = None, command: str | None = None) -> tuple[int, dict]:
    """Run training.worker in the backend's interpreter; its progress bar and messages reach stderr.
    `command`: what the run's header keeps as the command that started it (default: this one's)."""
    cmd = processes.worker_command(s.backend, "training.worker", [
        mode, "--settings", json.dumps(s.to_dict()), "--out", str(Path(out).resolve()), "--command",
        command or _command_line(), *(["--quiet"] if quiet else []), *extra])
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=processes.environment_for(s.backend), stdout=subprocess.PIPE,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, {"status": "error", "reason": f"timed out after {timeout:g} s"}
    except OSError as e:
        return 3, {"status": "skipped", "reason": f"cannot start {cmd[0]}: {e.strerror or e}"}
    result = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    return proc.returncode, result


# --- nin train --------------------------------------------------------------------------------
def _epoch_rows(epochs: list[dict]) -> tuple[list, list]:
    header = ["epoch", "lr", "train loss", "train acc", "test loss", "test acc", "img/s", "seconds"]
    rows = [[e["epoch"], f"{e['lr']:.4g}", f"{e['train_loss']:.4f}", f"{e['train_accuracy']:.4f}",
             f"{e['test_loss']:.4f}", f"{e['test_accuracy']:.4f}", f"{e['images_per_second']:,.1f}",
             f"{e['wall_seconds']:.1f}"] for e in epochs]
    return header, rows


@_one_line
def cmd_train(args) -> int:
    out = Path(args.out or Path("runs") / f"{args.backend}-{Path(args.variant or 'd2l').stem}-seed{args.seed or 0}")
    nodes = _nodes(args)
    if args.resume:
        s = _resumed(args, out)
        if s is None:
            return _show_run(out, args.json)
    else:
        s = _settings(args, args.backend)
        if runs.existing(out / runs.METRICS, "metrics file") or runs.existing(out / runs.CHECKPOINT, "checkpoint"):
            raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if not args.node_rank:
            check_writable(out / runs.METRICS, "--out")
    recipes.check_devices(s, args.devices, s.train_limit or 60_000, nodes=args.nodes)
    processes.check_memory(recipes.memory_bytes(s), device=s.device, what=_what(s))
    extra = ["--devices", str(args.devices), *nodes, *(["--resume"] if args.resume else [])]
    # a second `nin train` into this run is refused meanwhile; only node 0 writes, so only it holds the lock
    with exclusive(out / runs.METRICS, "--out") if not args.node_rank else contextlib.nullcontext():
        code, result = run_worker("train", s, out, extra=extra, quiet=args.quiet, timeout=args.timeout)
    if code == 3:
        print(f"nin train: {s.backend} is not installed ({result.get('reason', 'see above')})", file=sys.stderr)
        return 3
    if code < 0:  # killed: by the kernel's out-of-memory killer, most likely
        print(f"nin train: {s.backend}: the worker was killed by signal {-code} "
              f"({'SIGKILL: out of memory?' if code == -9 else 'not by nin'}); no epoch after the last "
              "checkpoint was kept", file=sys.stderr)
        return 1
    if code == 0 and args.node_rank:  # node 0 wrote the run
        said = f"node {args.node_rank} of {args.nodes} has trained its replicas; node 0 wrote the run to its --out"
        print(json.dumps({"status": "done", "node_rank": args.node_rank, "nodes": args.nodes, "message": said})
              if args.json else f"nin train: {said}", file=sys.stdout if args.json else sys.stderr)
        return 0
    if failed(code, result) or not (out / runs.METRICS).exists():
        said = code == 2 or (code == 1 and result.get("status") in ("error", "diverged"))  # by the worker, in one line
        if result.get("reason") and not said:
            print(f"nin train: {s.backend} failed: {result['reason']}", file=sys.stderr)
        return code or 1
    _show_run(out, args.json)
    return code


def _nodes(args) -> list[str]:
    """The worker's flags for a run on several machines ([] on one), once --nodes, --node-rank and --rendezvous
    agree."""
    if args.nodes == 1:
        if args.node_rank or args.rendezvous:
            raise SettingsError(f"{'--node-rank' if args.node_rank else '--rendezvous'}: a run on one machine "
                                "takes neither --node-rank nor --rendezvous (pass --nodes M for M machines)")
        return []
    if args.node_rank >= args.nodes:
        raise SettingsError(f"--node-rank {args.node_rank}: expected 0 to {args.nodes - 1} for --nodes {args.nodes}")
    if not args.rendezvous:
        raise SettingsError(f"--nodes {args.nodes}: --rendezvous HOST:PORT is required (where node 0 listens)")
    return ["--nodes", str(args.nodes), "--node-rank", str(args.node_rank), "--rendezvous", args.rendezvous]


def _what(s: Settings) -> str:
    """The flags that size a run, for a message about its memory."""
    return f"--variant {s.variant} at --resize {s.resize} and --batch-size {s.batch_size} ({s.epochs} epochs)"


def _resumed(args, out: Path) -> Settings | None:
    """The stored settings of the run in `out` (runs.stored_settings: its checkpoint and metrics agree),
    when the flags typed agree with them; None when the run is complete already."""
    s = runs.stored_settings(out)
    differ = [f"--{k.replace('_', '-')} {v} (the run has {getattr(s, k)})" for k, v in _explicit(args).items()
              if k != "variant" and getattr(s, k) != v]
    if args.variant and _variant_arg(args.variant) != s.variant:
        differ.append(f"--variant {args.variant} (the run has {s.variant})")
    if s.backend != args.backend:
        differ.append(f"--backend {args.backend} (the run has {s.backend})")
    if differ:
        raise RunError(f"{out}: --resume continues the run with its own settings; these differ: " + "; ".join(differ))
    done = runs.read_metrics(out)[1] if runs.existing(out / runs.METRICS, "metrics file") else []
    if len(done) == s.epochs and runs.existing(out / runs.CHECKPOINT, "checkpoint"):
        print(f"nin train: {out} is complete ({s.epochs} epochs)", file=sys.stderr)
        return None
    return s


def _show_run(out: Path, as_json: bool) -> int:
    header, epochs, others = runs.read_metrics(out)
    if as_json:
        print(json.dumps({"run": str(out), "settings": header["settings"], "epochs": epochs, "events": others},
                         indent=2))
        return 0
    s = header["settings"]
    print(f"{s['backend']} {s['variant']} on {header['device']} ({header['device_name']}): {s['recipe']} recipe, "
          f"{s['optimizer']} lr {s['lr']:g} {s['schedule']}, batch {s['batch_size']}, {s['resize']}x{s['resize']}, "
          f"{header.get('train_images', '?')} training images, seed {s['seed']}")
    print("\n".join(tables.text(*_epoch_rows(epochs), right=tuple(range(8)))))
    for o in others:
        if o["type"] == "diverged":
            print(f"diverged: {o['message']}")
    print(f"metrics: {out / runs.METRICS}; checkpoint: {out / runs.CHECKPOINT}")
    return 0


# --- nin sweep / report / plot -------------------------------------------------------------------
def _all_backends(args) -> None:
    """`--backend all`: every registered backend, in the registry's order (Keras on JAX and PyTorch too)."""
    if "all" in args.backend:
        args.backend = list(backends.BACKENDS)


def _sweep_command(args) -> str:
    """The command every run of the sweep keeps in its header: as typed, with the equivalence margin
    made explicit when it was the default, so that the margin is fixed with the runs, before any
    result (training.report.preset_margin reads it back)."""
    command = _command_line()
    if reports.margin_in(command) != args.margin:
        command += f" --margin {args.margin!r}"
    return command


@_one_line
def cmd_sweep(args) -> int:
    out = Path(args.out)
    check_writable(out / "report.md", "--out")
    _all_backends(args)
    seeds = args.seed_list if args.seed_list else list(range(args.seeds))
    variants = args.variant_list or [args.variant or "d2l"]
    plan = []
    for seed in seeds:  # seed outermost: an interrupted sweep has whole seeds of every backend
        for variant in variants:
            for backend in args.backend:
                s = _settings(args, backend, variant=variant, seed=seed)
                plan.append((s, out / Path(variant).stem / backend / f"seed{seed}"))
    worst = max((s for s, _ in plan), key=recipes.memory_bytes)
    processes.check_memory(recipes.memory_bytes(worst), device=worst.device, what=_what(worst))
    with exclusive(out / "report.md", "--out"):  # a second `nin sweep` into this folder is refused meanwhile
        _check_margin(out, args.margin)
        return _sweep(args, out, plan, variants)


def _check_margin(out: Path, margin: float) -> None:
    """Every run already in OUT was started with this equivalence margin (in its header's command): the
    margin is fixed when a comparison's first run starts, and a resumed or extended sweep keeps it."""
    for metrics in sorted(out.rglob(runs.METRICS)) if out.is_dir() else []:
        fixed = reports.margin_in(runs.read_metrics(metrics.parent)[0].get("command", ""))
        if fixed != margin:
            raise RunError(f"{metrics.parent}: its run was started with " + (
                f"the equivalence margin fixed at +/-{fixed:g} pp, not --margin {margin:g}; a sweep keeps the "
                "margin it started with" if fixed is not None else
                "no equivalence margin fixed (it predates nin sweep --margin); use another --out"))


def _sweep(args, out: Path, plan: list, variants: list[str]) -> int:
    """Run (or resume, or skip when done) every run of the plan, then write and print the report."""
    from tqdm import tqdm

    failures = []
    bar = tqdm(plan, desc="sweep", unit="run", file=sys.stderr, dynamic_ncols=True, disable=args.json)
    for s, run_dir in bar:
        bar.set_postfix_str(f"{Path(s.variant).stem} {s.backend} seed {s.seed}")
        resume = runs.existing(run_dir / runs.METRICS, "metrics file")
        if resume:
            stored = runs.stored_settings(run_dir)
            if stored != s:
                raise RunError(f"{run_dir}: holds a run with other settings; use another --out")
            _, done, others = runs.read_metrics(run_dir)
            if len(done) == s.epochs:
                continue
            if any(o["type"] == "diverged" for o in others) and not args.retry_diverged:
                continue  # deterministic: it would diverge again
        code, result = run_worker("train", s, run_dir, extra=["--resume"] if resume else [], quiet=True,
                                  timeout=args.timeout, command=_sweep_command(args))
        if failed(code, result):
            failures.append(f"{run_dir}: {result.get('reason', f'exit status {code}')}")
            tqdm.write(f"  failed: {failures[-1]}", file=sys.stderr)
    bar.close()
    all_runs = reports.load_runs([out])
    margin = reports.resolve_margin(all_runs, args.margin)
    _write_report(all_runs, out, margin=margin, title=args.title or f"Sweep {out.name}",
                  color_by="variant" if len(variants) > 1 and len(args.backend) == 1 else "backend", failures=failures)
    print(json.dumps(reports.to_json(all_runs, margin), indent=2) if args.json else reports.text(all_runs, margin))
    for f in failures:
        print(f"nin sweep: {f}", file=sys.stderr)
    return 1 if failures else 0


def _write_report(all_runs, out: Path, *, margin: dict, title: str, color_by: str, failures: list = ()) -> None:
    from . import plots

    listed = ["", "## Runs that failed (not in the tables above)", ""] + [f"- {f}" for f in failures]
    atomic_write_text(out / "report.md", reports.markdown(all_runs, margin, title=title, command=_command_line())
                      + ("\n".join(listed) if failures else "") + "\n![curves](curves.png)\n")
    atomic_write_text(out / "report.json", json.dumps(reports.to_json(all_runs, margin), indent=2) + "\n")
    plots.plot_runs(all_runs, out / "curves.png", color_by=color_by, title=title)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'curves.png'}", file=sys.stderr)


@_one_line
def cmd_report(args) -> int:
    all_runs = reports.load_runs(args.runs)
    margin = reports.resolve_margin(all_runs, args.margin)
    if args.out:
        out = Path(args.out)
        check_writable(out / "report.md", "--out")
        _write_report(all_runs, out, margin=margin, title=args.title or "Training runs", color_by=args.color_by)
    if args.power_out:
        _write_power(all_runs, Path(args.power_out), margin["value"])
    print(json.dumps(reports.to_json(all_runs, margin), indent=2) if args.json else reports.text(all_runs, margin))
    return 0


def _write_power(all_runs, out: Path, margin: float) -> None:
    """OUT/power.json and OUT/power.md: the power calculation from these runs, with what it was computed
    from (each run's metrics file and its sha256) and where and when (common.provenance)."""
    import hashlib

    from common import provenance

    for name in ("power.md", "power.json"):
        check_writable(out / name, "--power-out")
    if len({r.settings.backend for r in all_runs}) < 2:
        raise RunError("--power-out: the power calculation needs runs of at least two backends (their differences)")
    plan = reports.power_plan(all_runs, margin)
    sources = []
    for r in sorted(all_runs, key=lambda r: (r.settings.variant, r.settings.backend, r.settings.seed)):
        metrics = r.path / runs.METRICS
        where = metrics.resolve()
        sources.append({"path": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where),
                        "backend": r.settings.backend, "variant": r.settings.variant, "seed": r.settings.seed,
                        "accuracy": f"{100 * r.epochs[-1]['test_accuracy']:.2f}%" if r.complete else "unfinished",
                        "sha256": hashlib.sha256(metrics.read_bytes()).hexdigest()})
    prov = {**provenance.collect(), "command": _command_line()}
    hosts = sorted({f"{r.header.get('host', '?')} ({r.header['device']}, {r.header['device_name']})" for r in all_runs})
    lines = provenance.lines(prov)[:-1] + [f"The runs' machine (host): {', '.join(hosts)}; the runs' own commands and "
                                           "versions are in their metrics headers"]
    atomic_write_text(out / "power.json", json.dumps({**plan, "sources": sources, "provenance": prov}, indent=2) + "\n")
    atomic_write_text(out / "power.md", reports.power_markdown(plan, sources=sources, provenance=lines))
    print(f"wrote {out / 'power.md'}, {out / 'power.json'}", file=sys.stderr)


@_one_line
def cmd_plot(args) -> int:
    from . import plots

    all_runs = reports.load_runs(args.runs)
    if args.out:
        out = Path(args.out)
    elif len(all_runs) == 1:
        out = all_runs[0].path / "curves.png"
    else:  # `nin plot runs/*`: beside the runs, in the folder that holds them all
        out = Path(os.path.commonpath([str(r.path.resolve()) for r in all_runs])) / "curves.png"
    if out.suffix.lower() != ".png":
        raise SettingsError(f"--out {out}: the plot is written as PNG; give a file name ending in .png")
    check_writable(out, "--out")
    print(plots.plot_runs(all_runs, out, color_by=args.color_by, title=args.title or ""))
    return 0


# --- nin lr-find --------------------------------------------------------------------------------
def analyse_range_test(result: dict, beta: float = 0.9) -> dict:
    """Smoothed losses (bias-corrected moving average), the rate of the minimum, the suggested rate and
    the rate where the loss diverges, as the range test's literature reads the curve (Smith 2017;
    fastai's lr_find):

    - suggested (`suggested_lr`): the steepest descent of the smoothed loss against log lr before its
      minimum (`steepest_lr`), the slope taken over +/- 5% of the steps, and the first 10% of the steps
      left out (the moving average is still settling there; fastai's skip_start); none when the loss
      never fell 0.1 below ln 10 (a flat curve's steepest point is noise);
    - divergence (`blowup_lr`): the first rate after the minimum where the smoothed loss is past
      min(4 x its minimum (fastai's stop), max(where it started, minimum + 0.25)), i.e. worse than
      not training at all, or not finite; a flat curve's noise is not a divergence."""
    lrs, losses = result["lrs"], result["losses"]
    smooth, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        smooth.append(avg / (1 - beta ** i))
    finite = [i for i, v in enumerate(smooth) if math.isfinite(v)]
    out = {**result, "smoothed": smooth, "min_lr": None, "steepest_lr": None, "suggested_lr": None, "blowup_lr": None}
    if not finite:
        return out
    best = min(finite, key=lambda i: smooth[i])
    out["min_lr"], out["min_loss"] = lrs[best], smooth[best]
    skip, half = len(smooth) // 10, max(1, len(smooth) // 20)
    slopes = {i: (smooth[i + half] - smooth[i - half]) / (math.log(lrs[i + half]) - math.log(lrs[i - half]))
              for i in range(max(half, skip), best) if i + half < len(smooth) and lrs[i + half] > lrs[i - half]}
    if slopes:
        out["steepest_lr"] = lrs[min(slopes, key=slopes.get)]
    start = smooth[finite[0]]
    limit = out["blowup_limit"] = min(4 * smooth[best], max(start, smooth[best] + 0.25))
    out["blowup_lr"] = next((lrs[i] for i in range(best, len(smooth))
                             if not math.isfinite(smooth[i]) or smooth[i] > limit), None)
    uniform = [abs(v - math.log(10)) < 1e-5 for v in losses]
    streak = next((i for i in range(len(uniform)) if all(uniform[i:]) and len(uniform) - i >= 30), None)
    out["dies_at_step"] = None if streak is None else streak + 1
    out["leaves_plateau_at_step"] = next((i + 1 for i, v in enumerate(smooth) if v < math.log(10) - 0.1), None)
    # what the plot marks and the table shows: no suggestion from a curve that never came down
    out["suggested_lr"] = out["steepest_lr"] if out["leaves_plateau_at_step"] else None
    return out


@_one_line
def cmd_lr_find(args) -> int:
    out = Path(args.out)
    check_writable(out / "lr_find.md", "--out")
    _all_backends(args)
    if not 0 < args.min_lr <= args.max_lr:
        raise SettingsError(f"--min-lr {args.min_lr:g} and --max-lr {args.max_lr:g}: expected 0 < min <= max")
    variants = args.variant_list or [args.variant or "d2l"]
    ranges = [(r, r) for r in args.rates] if args.rates else [(args.min_lr, args.max_lr)]
    seeds = args.seed_list or [args.seed or 0]
    plan = [(b, v, r, seed) for r in ranges for v in variants for seed in seeds for b in args.backend]
    tests = [_settings(args, b, variant=v, seed=seed) for b, v, _, seed in plan]
    worst = max(tests, key=lambda s: recipes.memory_bytes(s, range_test_steps=args.steps))
    processes.check_memory(recipes.memory_bytes(worst, range_test_steps=args.steps), device=worst.device,
                           what=f"--variant {worst.variant} at --resize {worst.resize}, --batch-size "
                                f"{worst.batch_size} and --steps {args.steps}")
    with exclusive(out / "lr_find.md", "--out"):  # a second `nin lr-find` into this folder is refused meanwhile
        return _lr_find(args, out, plan)


def _lr_find(args, out: Path, plan: list) -> int:
    """Run (or, with --keep, reuse) every range test of the plan, then plot, tabulate and write them."""
    from tqdm import tqdm

    results, failed, codes = [], [], []
    for backend, variant, (low, high), seed in tqdm(plan, desc="lr-find", unit="test", file=sys.stderr,
                                                     disable=len(plan) == 1):
        s = _settings(args, backend, variant=variant, seed=seed)
        name = f"{backend}-{Path(variant).stem}" + (f"-lr{low:g}" if args.rates else "") + \
            (f"-seed{seed}" if args.seed_list else "")
        run_dir = out / name
        if args.keep and runs.existing(run_dir / "lr_find.json", "range test"):
            results.append(analyse_range_test(runs.read_lr_find(run_dir / "lr_find.json")))
            continue
        code, result = run_worker("lr-find", s, run_dir, quiet=args.quiet, timeout=args.timeout, extra=[
            "--min-lr", repr(low), "--max-lr", repr(high), "--steps", str(args.steps)])
        if code != 0:
            failed.append(f"{name}: {result.get('reason', f'exit status {code}')}")
            codes.append(code)
            continue
        results.append(analyse_range_test(runs.read_lr_find(run_dir / "lr_find.json")))
    if not results:
        for f in failed:
            print(f"nin lr-find: {f}", file=sys.stderr)
        return codes[0] if len(plan) == 1 and codes[0] in (2, 3, 124) else 1  # one test: its worker's status
    png = _lr_find_report(args, out, results)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k not in ("losses", "lrs", "smoothed")} for r in results],
                         indent=2))
    else:
        print("\n".join(tables.text(*_lr_find_table(args, results))))
        print(f"wrote {out / 'lr_find.md'} and {png}")
    for f in failed:
        print(f"nin lr-find: {f}", file=sys.stderr)
    return 1 if failed else 0


def _lr_find_table(args, results: list[dict]) -> tuple[list, list]:
    """(header, rows) of the range tests, or of the plateau probe's held rates (--rates)."""
    if args.rates:  # the plateau probe: one rate held per run
        header = ["backend", "variant", "optimizer", "batch", "lr", "seed", "steps", "below ln10-0.1 at step",
                  "dead from step", "final loss (smoothed)", "stopped"]
        rows = [[r["backend"], Path(r["variant"]).stem, _optimizer(r["settings"]), r["settings"]["batch_size"],
                 _g(r["lrs"][0]), r["settings"]["seed"], len(r["losses"]), r["leaves_plateau_at_step"] or "-",
                 r["dies_at_step"] or "-", f"{r['smoothed'][-1]:.4f}", r["stopped"]] for r in results]
    else:
        header = ["backend", "variant", "optimizer", "batch", "steps", "suggested lr", "min loss", "at lr",
                  "takes off at", "below ln10-0.1 at step", "dead from step", "stopped"]
        rows = [[r["backend"], Path(r["variant"]).stem, _optimizer(r["settings"]), r["settings"]["batch_size"],
                 len(r["losses"]), _g(r["suggested_lr"]), _g(r.get("min_loss")), _g(r["min_lr"]), _g(r["blowup_lr"]),
                 r["leaves_plateau_at_step"] or "-", r["dies_at_step"] or "-", r["stopped"]] for r in results]
    return header, rows


def _lr_find_report(args, out: Path, results: list[dict]) -> Path:
    """OUT/lr_find.png and OUT/lr_find.md: the curves, the table, the settings, the device, the command."""
    from . import plots

    header, rows = _lr_find_table(args, results)
    png = plots.plot_lr_find(results, out / "lr_find.png", title=args.title or "LR range test")
    s0 = results[0]["settings"]
    md = [f"# {args.title or 'LR range test'}", "", *tables.markdown(header, rows), "",
          f"![lr-find]({png.name})", "",
          (f"Up to {args.steps} steps at each rate held constant (the plateau probe)" if args.rates else
           f"{args.steps} steps from lr {args.min_lr:g} to {args.max_lr:g} (geometric)" if args.min_lr < args.max_lr
           else f"{args.steps} steps at lr {args.min_lr:g}")
          + ", one batch each; stopped when the smoothed loss exceeds 4x its minimum or when 30 batches in a row "
          "have loss ln 10 (to 1e-5: the network predicts uniformly; with the chapter's final ReLU it is dead). "
          + ("" if args.rates else "Suggested lr (the dot in the plot): the steepest descent of the "
             "smoothed loss against log lr before its minimum, the first 10% of the steps left out; takes off at (the "
             "dotted line): the first rate after the minimum where the smoothed loss passes min(4x its minimum, "
             "max(its start, minimum + 0.25)); no rate is suggested when the loss never fell 0.1 below ln 10. ")
          + "Settings: " + ", ".join(f"`{k}={v}`" for k, v in s0.items()
                                                                if k not in ("backend", "variant")) + ".",
          "", f"Device: {results[0]['device']} ({results[0]['device_name']}); versions: "
          + "; ".join(f"{r['backend']}: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v != "None")
                      for r in {r["backend"]: r for r in results}.values()) + ".",
          "", "Command:", "", "```", _command_line(), "```", ""]
    atomic_write_text(out / "lr_find.md", "\n".join(md))
    return png


def _optimizer(s: dict) -> str:
    return f"momentum {s['momentum']:g}" if s["optimizer"] == "momentum" else "sgd"


def _g(x) -> str:
    return "-" if x is None else f"{x:.3g}"


# --- the parser ---------------------------------------------------------------------------------
def _flag(field: str):
    """The argparse type of a Settings field's flag: its range (recipe.NUMBERS / INTEGERS), checked
    when the command line is parsed, with the flag's name in the one-line error."""
    if field in recipes.INTEGERS:
        return flags.count(*recipes.INTEGERS[field])
    low, high, low_open = recipes.NUMBERS[field]
    return flags.number(low, high, low_open=low_open)


def _recipe_args(p, *, many: bool) -> None:
    names = sorted(backends.BACKENDS)
    if many:
        p.add_argument("--backend", nargs="+", action=flags.Distinct, required=True, choices=[*names, "all"],
                       metavar="NAME", help=f"backends ({', '.join(names)}), or all of them")
        p.add_argument("--variant", type=_variant_arg, help="one network (default d2l)")
        p.add_argument("--variant-list", nargs="+", action=flags.Distinct, type=_variant_arg, metavar="VARIANT",
                       help="several networks, each with the same recipe and seeds")
    else:
        p.add_argument("--backend", required=True, choices=names, metavar="NAME", help=", ".join(names))
        p.add_argument("--variant", type=_variant_arg,
                       help=f"a named network ({', '.join(specs.VARIANTS)}) or a .json spec (default d2l)")
    g = p.add_argument_group("recipe (every flag overrides the --recipe's value)")
    g.add_argument("--recipe", default="tuned", choices=sorted(recipes.RECIPES),
                   help="chapter: SGD lr 0.1, 5 epochs; book: SGD lr 0.05, 10 epochs; tuned (default): "
                        + ", ".join(f"{k} {v}" for k, v in recipes.RECIPES["tuned"].items()))
    g.add_argument("--optimizer", choices=recipes.OPTIMIZERS, help="sgd or momentum (heavy ball, --momentum)")
    g.add_argument("--lr", type=_flag("lr"), help="the peak learning rate")
    g.add_argument("--momentum", type=_flag("momentum"), help="momentum of --optimizer momentum (default 0.9)")
    g.add_argument("--schedule", choices=recipes.SCHEDULES, help="after the warm-up: constant, cosine or linear to 0")
    g.add_argument("--warmup", type=_flag("warmup"), help="epochs of linear warm-up from 0 to --lr")
    g.add_argument("--weight-decay", type=_flag("weight_decay"), help="coupled L2 (g += wd * w)")
    g.add_argument("--batch-size", type=_flag("batch_size"), help="images per training step")
    g.add_argument("--epochs", type=_flag("epochs"), help="passes over the training images")
    d = p.add_argument_group("data and device")
    d.add_argument("--resize", type=_flag("resize"), help="input size, 28 -> N bilinear on the device (default 224)")
    d.add_argument("--train-limit", type=_flag("train_limit"),
                   help="train on the first N training images (default all 60,000)")
    d.add_argument("--test-limit", type=_flag("test_limit"),
                   help="test on the first N test images (default all 10,000)")
    if not many:
        d.add_argument("--seed", type=_flag("seed"), help="canonical init, data order and dropout (default 0)")
    d.add_argument("--device", choices=recipes.DEVICES, help="cpu (default) or gpu")
    d.add_argument("--precision", choices=recipes.PRECISIONS,
                   help="fp32 (default: no TF32, deterministic kernels) or fast (TF32, autotuning)")
    d.add_argument("--compile", choices=recipes.COMPILES,
                   help="compiled (default: torch.compile, hybridize, jit_compile, jax.jit) or eager")
    d.add_argument("--max-loss", type=_flag("max_loss"),
                   help="a batch loss above this stops the run as diverged (default 100)")
    d.add_argument("--eval-every", type=_flag("eval_every"), help="test every N epochs and after the last (default 1)")
    p.add_argument("--timeout", type=flags.seconds, help="seconds allowed per run (below a week)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")


def _defaults_from_settings(p) -> None:
    """Settings' own defaults fill what the flags and the recipe leave open."""
    defaults = Settings.__dataclass_fields__
    p.set_defaults(**{k: None for k in defaults if k not in ("backend", "recipe")})


def add_commands(sub) -> None:
    """Add this driver's subcommands to the `nin` parser's subparsers (nin/cli.py calls it)."""
    _add_train_and_sweep(sub)
    _add_report_plot_and_lr_find(sub)


def _add_train_and_sweep(sub) -> None:
    t = sub.add_parser("train", help="train one backend on Fashion-MNIST: metrics, checkpoints, --resume")
    _recipe_args(t, many=False)
    _defaults_from_settings(t)
    t.add_argument("--out", metavar="DIR", type=flags.path,
                   help="the run directory (default runs/<backend>-<variant>-seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--devices", type=flags.count(1, recipes.MAX_DEVICES), default=1, metavar="N",
                   help="data-parallel on N devices with the framework's own engine (default 1); --batch-size is "
                        "the global batch, split evenly, so the recipe is unchanged; a checkpoint resumes on any N "
                        "(docs/distributed.md)")
    t.add_argument("--nodes", type=flags.count(1, recipes.MAX_DEVICES), default=1, metavar="M",
                   help="machines, each running this same command with its own --node-rank: N devices on each, "
                        "M x N replicas in all (default 1)")
    t.add_argument("--node-rank", type=flags.count(0, recipes.MAX_DEVICES - 1), default=0, metavar="R",
                   help="this machine's place among the --nodes, 0 to M-1; node 0 writes the run (default 0)")
    t.add_argument("--rendezvous", type=flags.address, metavar="HOST:PORT",
                   help="where node 0 listens and the others meet it (required with --nodes above 1)")
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("sweep", help="train backends x variants x seeds with one recipe (resumable), then report")
    _recipe_args(w, many=True)
    _defaults_from_settings(w)
    w.add_argument("--seeds", type=flags.count(1, 1000), default=5, help="seeds 0..N-1 (default 5; 1 to 1000)")
    w.add_argument("--seed-list", type=_flag("seed"), nargs="+", action=flags.Distinct, metavar="SEED",
                   help="these seeds instead")
    w.add_argument("--out", required=True, metavar="DIR", type=flags.path,
                   help="DIR/<variant>/<backend>/seed<k>, report.md, curves.png")
    w.add_argument("--margin", type=flags.number(0, 100), default=reports.DEFAULT_MARGIN,
                   help="the equivalence margin in percentage points of final test accuracy (default 0.5), fixed "
                        "here, before the runs: every run's header keeps it and `nin report` reads it from there")
    w.add_argument("--title", help="the report's title")
    w.add_argument("--retry-diverged", action="store_true", help="run diverged runs again (they are deterministic)")
    w.set_defaults(func=cmd_sweep)

def _add_report_plot_and_lr_find(sub) -> None:
    r = sub.add_parser("report", help="summary and backend agreement (TOST) of training runs")
    r.add_argument("runs", nargs="+", type=flags.path, help="run directories, or folders holding them")
    r.add_argument("--margin", type=flags.number(0, 100),
                   help="equivalence margin in pp for runs that fixed none before they started (default 0.5; "
                        "the report says it was chosen after the runs); runs of `nin sweep` carry their own")
    r.add_argument("--power-out", metavar="DIR", type=flags.path,
                   help="also write DIR/power.md and power.json: the seeds the agreement test needs for every "
                        "registered backend, from these runs' seed-to-seed spread, with its provenance")
    r.add_argument("--out", metavar="DIR", type=flags.path, help="also write DIR/report.md, report.json and curves.png")
    r.add_argument("--color-by", choices=("backend", "variant"), default="backend",
                   help="one colour per backend (default) or per variant in the curves")
    r.add_argument("--title", help="the report's and the plot's title")
    r.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    r.set_defaults(func=cmd_report)

    pl = sub.add_parser("plot", help="training curves of runs overlaid, one colour per backend (a PNG)")
    pl.add_argument("runs", nargs="+", type=flags.path, help="run directories, or folders holding them")
    pl.add_argument("--out", metavar="FILE", type=flags.path,
                    help="the PNG (default RUN/curves.png for one run, else curves.png in the folder holding them all)")
    pl.add_argument("--color-by", choices=("backend", "variant"), default="backend",
                    help="one colour per backend (default) or per variant")
    pl.add_argument("--title", help="the plot's title")
    pl.set_defaults(func=cmd_plot)

    f = sub.add_parser("lr-find", help="learning-rate range test (exercise 1), plotted")
    _recipe_args(f, many=True)
    _defaults_from_settings(f)
    f.add_argument("--seed", type=_flag("seed"), help="canonical init and data order (default 0)")
    f.add_argument("--min-lr", type=_flag("lr"), default=1e-4,
                   help="the range test's first rate (default 1e-4)")
    f.add_argument("--max-lr", type=_flag("lr"), default=10.0,
                   help="the range test's last rate, reached geometrically over --steps (default 10)")
    f.add_argument("--steps", type=flags.count(1, 100_000), default=100,
                   help="one step per rate (default 100; at most 100,000)")
    f.add_argument("--rates", type=_flag("lr"), nargs="+", action=flags.Distinct, metavar="LR",
                   help="instead of the range test, hold each of these rates for --steps steps (the plateau probe)")
    f.add_argument("--seed-list", type=_flag("seed"), nargs="+", action=flags.Distinct, metavar="SEED",
                   help="repeat for each of these seeds")
    f.add_argument("--keep", action="store_true", help="reuse results already in --out instead of running again")
    f.add_argument("--out", required=True, metavar="DIR", type=flags.path,
                   help="DIR/<backend>-<variant>/lr_find.json, DIR/lr_find.png")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--title", help="the plot's title")
    f.set_defaults(func=cmd_lr_find)
