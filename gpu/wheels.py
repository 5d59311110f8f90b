"""The bundle's wheels: fetched here for CPython 3.12 on manylinux x86_64, installed there without network.

`download` fetches the wheels of requirements/offline-gpu.txt, each at requirements/main.txt's
version (`pip download --only-binary=:all: --no-deps`: nothing is built and no dependency is
guessed; the list names every one). `install` runs on the offline machine: it asks the interpreter
which of the bundle's distributions it lacks and installs only those, from the files, with `pip
install --no-index --no-deps`, into the environment itself, or with a target into a folder to put
on PYTHONPATH (nothing of the machine's own is shadowed, since only missing distributions go there).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import backends

ROOT = backends.ROOT
REQUIREMENTS = ROOT / "requirements" / "offline-gpu.txt"
PINS = ROOT / "requirements" / "main.txt"
PYTHON_VERSION = "3.12"  # the lent machine's python3
# pip matches a manylinux tag exactly: name every one a wheel of these packages may carry
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


class WheelhouseError(RuntimeError):
    """A requirement without a pin, a download or install that failed, a bundle too large; the message says which."""


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
    """The wheels in a folder; two versions of one distribution are refused (pip would stop on them)."""
    found = [parse_wheel(p) for p in sorted(Path(dest).glob("*.whl"))]
    names = [w.name for w in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise WheelhouseError(f"{dest}: more than one wheel of {', '.join(twice)}; keep one version of each")
    return found


def download(dest: Path, python: str = sys.executable) -> list[Wheel]:
    """Fetch the pinned wheels into dest, first removing the wheels of former pins (two versions of one
    distribution would stop the install there)."""
    Path(dest).mkdir(parents=True, exist_ok=True)
    reqs = pinned(read_names(), read_pins())
    wanted = {f"{normalize(r.split('==')[0])}=={r.split('==')[1]}" for r in reqs}
    for w in wheels(dest):
        if f"{w.name}=={w.version}" not in wanted:
            w.path.unlink()
    proc = subprocess.run(download_command(reqs, dest, python))
    if proc.returncode != 0:
        raise WheelhouseError(f"pip download failed (exit {proc.returncode}); is PyPI reachable?")
    return wheels(dest)


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


def install(dest: Path, *, python: str = sys.executable, target: Path | None = None, run=subprocess.run) -> dict:
    """Install the bundle's wheels that `python` lacks; returns what was found, kept and installed."""
    bundle = wheels(dest)
    if not bundle:
        raise WheelhouseError(f"{dest}: no wheel there; run `make gpu-bundle` where PyPI is reachable")
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
