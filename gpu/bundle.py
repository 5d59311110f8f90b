"""`make gpu-bundle`: everything a CUDA machine without network needs for the GPU session, in `.whl/`.

    python -m gpu.bundle build   [--dest .whl] [--no-download]    here, with PyPI
    python -m gpu.bundle install [--dest .whl] [--target DIR]     there, without network
    python -m gpu.bundle size    [--dest .whl]

`build` puts together, in order:
  wheels         requirements/offline-gpu.txt at requirements/main.txt's versions, CPython 3.12,
                 manylinux x86_64 (gpu.wheels): Keras and what it needs beside PyTorch and JAX
  fashion-mnist  the four files, verified (common.data)
  spreads        the error model's `fast` spreads of the session's variants, in conformance/error_model.json
                 (the committed store, keyed by each case's hash): measured here once, with float64
                 arithmetic and seeded draws, so that no error model runs on the device. A variant
                 already stored costs nothing; one cached on this machine is stored from the cache
  train/         the unfinished GPU training runs collected here (results/training/gpu/d2l/<backend>/
                 seed0: metrics and checkpoint), so that the next session resumes them, as many as fit
and fails when the bundle is over 60 MiB, or the bundle and the checkout together over the 64 MiB
that travel to the device machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import backends, data
from common.fsio import atomic_write_bytes

from . import plan, wheels

ROOT = backends.ROOT
DEST = ROOT / ".whl"
DATA_DIR = "fashion-mnist"
TRAIN_DIR = "train"
RUNS = ROOT / "results" / "training" / "gpu" / "d2l"  # where `python -m gpu collect` puts the GPU runs
MIB = 2 ** 20
BUNDLE_LIMIT = 60 * MIB
TRAVEL_LIMIT = 64 * MIB  # the device tool's limit on what travels: the checkout and the carried paths
RUN_FILES = ("metrics.jsonl", "checkpoint.safetensors")  # training.runs.METRICS, CHECKPOINT


def copy_data(dest: Path, source: Path | None = None) -> Path:
    """Fashion-MNIST's four files into dest/fashion-mnist, downloaded first where this machine lacks them,
    then verified there (common.data: the sha256 of each file's content)."""
    source = Path(source) if source else data.default_dir()
    if data.missing_files(source):
        for split in ("train", "test"):
            data.load(split, source)  # downloads what is missing, verified
    target = Path(dest) / DATA_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in data.FILES:
        for candidate in (source / f"{name}.gz", source / name):
            if candidate.is_file():
                atomic_write_bytes(target / candidate.name, candidate.read_bytes())
                break
    for split in ("train", "test"):
        data.load(split, target, download=False)
    return target


# --- the error model's spreads --------------------------------------------------------------------
def missing_spreads(variants: list[str], precision: str = "fast") -> list[str]:
    """The variants whose spreads in `precision` conformance/error_model.json does not hold."""
    from common import spec as specs
    from conformance import errormodel
    from conformance.cases import Cases

    return [v for v in variants if not errormodel.is_stored(specs.get(v), Cases(), precision)]


def measure_spreads(variant: str, precision: str = "fast") -> float:
    """Spreads of one variant (this machine's cache, else measured: minutes of CPU for a d2l variant),
    stored in conformance/error_model.json; returns the seconds it took."""
    from common import spec as specs
    from conformance import errormodel
    from conformance.cases import Cases

    start = time.perf_counter()
    spec, cases = specs.get(variant), Cases()
    errormodel.store(errormodel.entries(spec, cases, precision))
    return time.perf_counter() - start


def ensure_spreads(variants: list[str], precision: str = "fast", *, jobs: int = 0, log=print) -> dict[str, float]:
    """Store the spreads the session's compare needs and the store lacks; variant -> seconds taken."""
    missing = missing_spreads(variants, precision)
    for v in sorted(set(variants) - set(missing)):
        log(f"spreads {v} {precision}: in conformance/error_model.json already")
    if not missing:
        return {}
    jobs = jobs or min(len(missing), os.cpu_count() or 1)
    log(f"spreads {precision} of {', '.join(missing)}: measuring, {jobs} at a time (minutes of CPU per d2l variant)")
    with ProcessPoolExecutor(jobs) as pool:
        seconds = dict(zip(missing, pool.map(measure_spreads, missing, [precision] * len(missing))))
    for v, s in seconds.items():
        log(f"spreads {v} {precision}: stored in conformance/error_model.json after {s:.0f} s")
    return seconds


# --- runs to resume, and sizes --------------------------------------------------------------------------
def unfinished(run: Path) -> bool:
    """A run with a checkpoint whose epochs are not all done (and that did not diverge: it would again)."""
    from training import runs

    try:
        header, epochs, others = runs.read_metrics(run)
    except runs.RunError:
        return False
    diverged = any(o.get("type") == "diverged" for o in others)
    return (run / runs.CHECKPOINT).is_file() and len(epochs) < header["settings"]["epochs"] and not diverged


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def checkout_bytes(root: Path = ROOT) -> int:
    """Tracked and untracked-but-not-ignored files: what a copy of the checkout carries (0 without git)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    files = {root / f for f in out.stdout.decode().split("\0") if f} if out.returncode == 0 else set()
    return sum(p.stat().st_size for p in files if p.is_file())


def add_runs(dest: Path, runs_root: Path = RUNS, *, checkout: int = 0, log=print) -> list[str]:
    """Copy the unfinished runs (torch first) into dest/train/<backend> while the bundle stays within its
    limits; those left out are named. Returns the backends added."""
    shutil.rmtree(Path(dest) / TRAIN_DIR, ignore_errors=True)
    added = []
    for backend in plan.OWN:
        run = Path(runs_root) / backend / "seed0"
        if not unfinished(run):
            continue
        size = sum((run / f).stat().st_size for f in RUN_FILES)
        total = tree_bytes(dest) + size
        if total > BUNDLE_LIMIT or total + checkout > TRAVEL_LIMIT:
            log(f"train/{backend}: left out ({size / MIB:.1f} MiB would make the bundle {total / MIB:.1f} MiB); "
                "the next session resumes the others first")
            continue
        for f in RUN_FILES:
            atomic_write_bytes(Path(dest) / TRAIN_DIR / backend / f, (run / f).read_bytes())
        added.append(backend)
        log(f"train/{backend}: {run} to resume ({size / MIB:.1f} MiB)")
    return added


def size_report(dest: Path) -> str:
    dest = Path(dest)
    part = lambda sub: tree_bytes(dest / sub) if (dest / sub).is_dir() else 0  # noqa: E731
    bundle = tree_bytes(dest) if dest.is_dir() else 0
    wheel_bytes = sum(w.path.stat().st_size for w in wheels.wheels(dest)) if dest.is_dir() else 0
    checkout = checkout_bytes()
    return (f"{dest}: {bundle / MIB:.1f} MiB (wheels {wheel_bytes / MIB:.1f} MiB, Fashion-MNIST "
            f"{part(DATA_DIR) / MIB:.1f} MiB, runs to resume {part(TRAIN_DIR) / MIB:.1f} MiB); checkout "
            f"{checkout / MIB:.1f} MiB; together {(bundle + checkout) / MIB:.1f} MiB of the 64 MiB that travel")


def check_size(dest: Path) -> None:
    """WheelhouseError when the bundle is over 60 MiB or, with the checkout, over 64 MiB."""
    bundle, checkout = tree_bytes(dest), checkout_bytes()
    if bundle > BUNDLE_LIMIT:
        raise wheels.WheelhouseError(f"{dest}: {bundle / MIB:.1f} MiB, over the bundle's 60 MiB limit")
    if bundle + checkout > TRAVEL_LIMIT:
        raise wheels.WheelhouseError(f"{dest} and the checkout: {(bundle + checkout) / MIB:.1f} MiB, over the "
                                     "64 MiB that travel to the device machine")


def build(dest: Path = DEST, *, variants=plan.VARIANTS, download: bool = True, log=print) -> dict:
    """The whole bundle; returns what each part took (seconds) and the spreads measured."""
    took = {}
    start = time.perf_counter()
    if download:
        log(f"wheels: {len(wheels.download(dest))} in {dest}")
    took["wheels"] = time.perf_counter() - start
    log(f"Fashion-MNIST: {copy_data(dest)}")
    start = time.perf_counter()
    took["spreads_measured"] = ensure_spreads(list(variants), "fast", log=log)
    took["spreads"] = time.perf_counter() - start
    took["runs"] = add_runs(dest, checkout=checkout_bytes(), log=log)
    log(size_report(dest))
    check_size(dest)
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="wheels, Fashion-MNIST, the fast spreads, runs to resume (needs PyPI)")
    b.add_argument("--no-download", action="store_true", help="keep the wheels already there (no PyPI)")
    i = sub.add_parser("install", help="install the wheels this interpreter lacks, without network")
    i.add_argument("--python", default=sys.executable, help="the interpreter to install for (default: this one)")
    i.add_argument("--target", type=Path, help="install into this folder (put it on PYTHONPATH) instead of the "
                                               "interpreter's environment")
    s = sub.add_parser("size", help="the size of the bundle and of the checkout")
    for q in (b, i, s):
        q.add_argument("--dest", type=Path, default=DEST, help=f"the bundle's folder (default {DEST.name}/)")
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            build(args.dest, download=not args.no_download)
        elif args.command == "install":
            print(json.dumps(wheels.install(args.dest, python=args.python, target=args.target), indent=2))
        else:
            print(size_report(args.dest))
    except (wheels.WheelhouseError, data.DataError, OSError) as e:
        print(f"gpu bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
