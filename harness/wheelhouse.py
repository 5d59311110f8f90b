"""The offline bundle: wheels and Fashion-MNIST for a CUDA machine that has PyTorch and JAX but no network.

    python -m harness.wheelhouse download [--dest .whl]          here, with PyPI (`make wheelhouse`)
    python -m harness.wheelhouse install  [--dest .whl] [--target DIR]   there, without network
    python -m harness.wheelhouse size     [--dest .whl]

`download` fetches the wheels of requirements/offline-gpu.txt, each at main.txt's version, for
CPython 3.12 on manylinux x86_64 (`pip download --only-binary=:all: --no-deps`: nothing is built and
no dependency is guessed; the list names every one), copies Fashion-MNIST into DEST/fashion-mnist
(verified, as common.data verifies it) and, with --cache, the error model's cached spreads of this
machine (DEST/cache/error-model: measuring them costs minutes of CPU there). `install` runs on the
offline machine: it asks the interpreter which of the bundle's distributions it lacks and installs
only those, from the files, with `pip install --no-index --no-deps` - into the environment itself, or
with --target into a folder to put on PYTHONPATH (nothing of the machine's own is shadowed, since
only missing distributions go there). `size` prints what would travel: the bundle and the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import backends, data
from common.fsio import atomic_write_bytes

ROOT = backends.ROOT
REQUIREMENTS = ROOT / "requirements" / "offline-gpu.txt"
PINS = ROOT / "requirements" / "main.txt"
DEST = ROOT / ".whl"
PYTHON_VERSION = "3.12"
# pip matches a manylinux tag exactly: name every one a wheel of these packages may carry
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
DATA_DIR = "fashion-mnist"
CACHE_DIR = "cache"


class WheelhouseError(RuntimeError):
    """A requirement without a pin, a download or install that failed; the message says which."""


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares it: absl-py, absl_py and Absl.Py are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path = REQUIREMENTS) -> list[str]:
    """The distribution names of a requirements file (comments and blank lines skipped)."""
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def read_pins(path: Path = PINS) -> dict[str, str]:
    """normalized name -> version, from `name==version` lines (extras and markers are not used there)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[normalize(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def pinned(names: list[str], pins: dict[str, str]) -> list[str]:
    """`name==version` for each name, the version from the pins; a name without one is an error."""
    missing = [n for n in names if normalize(n) not in pins]
    if missing:
        raise WheelhouseError(f"{', '.join(missing)}: not pinned in {PINS.relative_to(ROOT)}; "
                              f"add an exact version there (the bundle holds what the suite is tested with)")
    return [f"{n}=={pins[normalize(n)]}" for n in names]


def download_command(requirements: list[str], dest: Path, python: str = sys.executable) -> list[str]:
    """pip download of exactly these wheels for CPython 3.12 on manylinux x86_64."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", *platforms, "--dest", str(dest), *requirements]


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # normalized
    version: str


def parse_wheel(path: Path) -> Wheel:
    """name and version from a wheel's file name (PEP 427: name-version[-build]-python-abi-platform.whl)."""
    parts = path.name[:-len(".whl")].split("-") if path.name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise WheelhouseError(f"{path}: not a wheel file name (name-version-python-abi-platform.whl)")
    return Wheel(path, normalize(parts[0]), parts[1])


def wheels(dest: Path) -> list[Wheel]:
    found = [parse_wheel(p) for p in sorted(Path(dest).glob("*.whl"))]
    names = [w.name for w in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # pip would stop the whole install on two versions of one distribution
        raise WheelhouseError(f"{dest}: more than one wheel of {', '.join(twice)}; keep one version of each")
    return found


_INSTALLED = """\
import importlib.metadata as m, json, re
print(json.dumps({re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower(): d.version for d in m.distributions()
                  if d.metadata["Name"]}))
"""


def installed(python: str = sys.executable, extra_path: Path | None = None) -> dict[str, str]:
    """normalized name -> version of every distribution `python` sees (and `extra_path`, a --target folder)."""
    env = None
    if extra_path is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(extra_path),
                                                                          os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([python, "-c", _INSTALLED], capture_output=True, text=True, env=env, timeout=120)
    if out.returncode != 0:
        raise WheelhouseError(f"{python} cannot list its distributions: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def to_install(bundle: list[Wheel], have: dict[str, str]) -> list[Wheel]:
    """The bundle's wheels whose distribution the interpreter lacks (any version it has is kept)."""
    return [w for w in bundle if w.name not in have]


def install_command(chosen: list[Wheel], *, python: str = sys.executable, target: Path | None = None) -> list[str]:
    where = ["--target", str(target)] if target else []
    return [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--disable-pip-version-check", *where, *[str(w.path) for w in chosen]]


def install(dest: Path = DEST, *, python: str = sys.executable, target: Path | None = None,
            run=subprocess.run) -> dict:
    """Install the bundle's wheels that `python` lacks; returns what was found, kept and installed."""
    bundle = wheels(dest)
    if not bundle:
        raise WheelhouseError(f"{dest}: no wheel there; run `make wheelhouse` where PyPI is reachable")
    have = installed(python, target)
    chosen = to_install(bundle, have)
    report = {"python": python, "target": str(target) if target else None,
              "kept": {w.name: have[w.name] for w in bundle if w.name in have},
              "installed": {w.name: w.version for w in chosen}}
    if chosen:
        proc = run(install_command(chosen, python=python, target=target), capture_output=True, text=True)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip install from {dest} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return report


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


def copy_cache(dest: Path, variants: list[str], cache: Path) -> list[Path]:
    """The error model's cached spreads of these variants (small JSON files) into dest/cache/error-model."""
    source = Path(cache) / "error-model"
    out = Path(dest) / CACHE_DIR / "error-model"
    copied = []
    for path in sorted(source.glob("*.json")) if source.is_dir() else []:
        if any(path.name.startswith(f"{v}-") for v in variants):
            copied.append(atomic_write_bytes(out / path.name, path.read_bytes()))
    return copied


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def checkout_bytes(root: Path = ROOT) -> int | None:
    """Tracked and untracked-but-not-ignored files: what a copy of the checkout carries (None without git)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    files = {root / f for f in out.stdout.decode().split("\0") if f}
    return sum(p.stat().st_size for p in files if p.is_file())


def size_report(dest: Path) -> str:
    mib = 2 ** 20
    bundle = tree_bytes(dest) if Path(dest).is_dir() else 0
    checkout = checkout_bytes()
    parts = {"wheels": sum(w.path.stat().st_size for w in wheels(dest)) if Path(dest).is_dir() else 0,
             "data": tree_bytes(Path(dest) / DATA_DIR) if (Path(dest) / DATA_DIR).is_dir() else 0}
    lines = [f"{dest}: {bundle / mib:.1f} MiB (wheels {parts['wheels'] / mib:.1f} MiB, Fashion-MNIST "
             f"{parts['data'] / mib:.1f} MiB)"]
    if checkout is not None:
        lines.append(f"checkout (tracked and untracked, not ignored): {checkout / mib:.1f} MiB; "
                     f"together {(bundle + checkout) / mib:.1f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.wheelhouse", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the wheels and Fashion-MNIST into DEST (needs PyPI)")
    d.add_argument("--no-data", action="store_true", help="wheels only")
    d.add_argument("--cache", nargs="*", metavar="VARIANT",
                   help="also copy this machine's cached error-model spreads of these variants (default: d2l paper "
                        "d2l-bn when the flag is given alone)")
    i = sub.add_parser("install", help="install the wheels this interpreter lacks, without network")
    i.add_argument("--python", default=sys.executable, help="the interpreter to install for (default: this one)")
    i.add_argument("--target", type=Path, help="install into this folder (put it on PYTHONPATH) instead of the "
                                               "interpreter's environment")
    sub.add_parser("size", help="the size of the bundle and of the checkout")
    for q in (d, i, sub.choices["size"]):
        q.add_argument("--dest", type=Path, default=DEST, help=f"the bundle's folder (default {DEST.name}/)")
    args = p.parse_args(argv)
    try:
        if args.command == "download":
            args.dest.mkdir(parents=True, exist_ok=True)
            reqs = pinned(read_names(), read_pins())
            stale = [w.path for w in wheels(args.dest) if f"{w.name}=={w.version}" not in
                     {f"{normalize(r.split('==')[0])}=={r.split('==')[1]}" for r in reqs}]
            for path in stale:  # an older pin's wheel would make two versions of one distribution
                path.unlink()
            proc = subprocess.run(download_command(reqs, args.dest))
            if proc.returncode != 0:
                raise WheelhouseError(f"pip download failed (exit {proc.returncode}); is PyPI reachable?")
            if not args.no_data:
                print(f"Fashion-MNIST -> {copy_data(args.dest)}")
            if args.cache is not None:
                from common.cases import cache_dir
                copied = copy_cache(args.dest, args.cache or ["d2l", "paper", "d2l-bn"], cache_dir())
                print(f"error-model cache: {len(copied)} file(s) -> {args.dest / CACHE_DIR / 'error-model'}")
            print(size_report(args.dest))
        elif args.command == "install":
            report = install(args.dest, python=args.python, target=args.target)
            print(json.dumps(report, indent=2))
            if args.target and report["installed"]:
                print(f"now: export PYTHONPATH={args.target.resolve()}${{PYTHONPATH:+:$PYTHONPATH}}", file=sys.stderr)
        else:
            print(size_report(args.dest))
    except (WheelhouseError, data.DataError, OSError) as e:
        print(f"wheelhouse: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
