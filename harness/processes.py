"""Each backend runs in its own process, with its own interpreter and environment.

The drivers (conformance, benchmarks, training) never import a framework themselves: they start
`python -m <driver module> ...` with the backend's interpreter (`python_for`) and environment
(`environment_for`), and that process imports the backend's package by the registry's name
(`load`). The worker prints one JSON object as the last line of its stdout; `call` reads it back.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

from common import backends

ROOT = backends.ROOT


def python_for(name: str) -> str:
    """The interpreter that runs a backend: $NIN_PYTHON_<NAME>, else the repository's venv for it,
    else this interpreter."""
    override = os.environ.get(f"NIN_PYTHON_{name.upper().replace('-', '_')}")
    if override:
        return override
    candidate = ROOT / backends.get(name).venv / "bin" / "python"
    return str(candidate) if candidate.is_file() else sys.executable


def environment_for(name: str) -> dict[str, str]:
    """This process's environment, plus the repository on the path and the backend's own variables."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(dict(backends.get(name).env))
    return env


def missing_here(name: str) -> list[str]:
    """The modules this interpreter lacks to run the backend (found without importing them)."""
    return [m for m in backends.get(name).requires if importlib.util.find_spec(m) is None]


def load(name: str, module: str):
    """Import nin_<name>.<module> into this process (a worker's, started by python_for / environment_for)."""
    b = backends.get(name)
    for key, value in b.env:
        if os.environ.get(key, value) != value:
            raise RuntimeError(f"backend {name} needs {key}={value}, but this process has {key}={os.environ[key]}")
        os.environ[key] = value
    return importlib.import_module(f"{b.package}.{module}")


def worker_command(name: str, module: str, args: list[str]) -> list[str]:
    return [python_for(name), "-m", module, *args]


def call(name: str, module: str, args: list[str], timeout: float | None = None) -> dict:
    """Run `python -m module args...` as the backend's worker and return its JSON object.
    Never raises: a crash, a timeout or a missing interpreter becomes {"status": "error" | "skipped"}."""
    cmd = worker_command(name, module, args)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=environment_for(name), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:g} s"}
    except OSError as e:
        return {"status": "skipped", "reason": f"cannot start {cmd[0]}: {e.strerror or e}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = proc.stderr.strip()[-2000:]
    if proc.returncode < 0:
        return {"status": "error", "reason": f"killed by signal {-proc.returncode}; stderr ends: {tail}"}
    return {"status": "error", "reason": f"exit status {proc.returncode} and no result; stderr ends: {tail}"}


def print_result(result: dict) -> None:
    """The worker side of `call`: one JSON line, last on stdout."""
    print(json.dumps(result), flush=True)
