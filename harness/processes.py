"""Each backend runs in its own process, with its own interpreter and environment.

The drivers (conformance, benchmarks, training) never import a framework themselves: they start
`python -m <driver module> ...` with the backend's interpreter (`python_for`) and environment
(`environment_for`), and that process imports the backend's package by the registry's name
(`load`). The worker prints one JSON object as the last line of its stdout; `call` reads it back.

Interruptions: Python's default SIGTERM handler ends a process without unwinding it, so that no
`finally` runs and a temporary file being written stays behind. Every entry point (the `nin`
command and each worker) runs inside `sigterm_unwinds()`, which turns SIGTERM and SIGHUP into
`Interrupted` (a KeyboardInterrupt: `except Exception` does not swallow it), and `run` asks a
worker to stop with SIGTERM, and waits for it to clean up, before it would kill it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from common import backends, calc

ROOT = backends.ROOT


GRACE_S = 10.0  # how long a worker asked to stop may take to clean up before it is killed
_LIVE: set[subprocess.Popen] = set()  # the children `run` is waiting for, in any thread (see stop_all)
_LIVE_LOCK = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Interrupted instead of ending the process at once;
    the previous handlers come back afterwards. Outside the main thread it does nothing."""
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        previous = {s: signal.signal(s, _raise_interrupted) for s in sigs}
    except ValueError:  # not the main thread: signals are delivered to the main thread anyway
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def interrupted_status(error: KeyboardInterrupt) -> int:
    """The exit status after an interruption: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return error.exit_status if isinstance(error, Interrupted) else 128 + signal.SIGINT


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """Ask children to stop, all at once (SIGTERM: each unwinds and removes its temporary files), then
    kill any still running after `grace` seconds."""
    for proc in procs:
        with contextlib.suppress(OSError):
            if proc.poll() is None:
                proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()


def run(cmd: list[str], *, env: dict[str, str], timeout: float | None = None, capture: bool = True,
        grace: float = GRACE_S) -> subprocess.CompletedProcess:
    """subprocess.run from the repository root, except that a timeout or an interruption of this
    process first asks the child to stop with SIGTERM and kills it only after `grace` seconds.
    A timeout returns exit status 124 with "timed out after N s" as the last line of stderr;
    an interruption stops the child and is raised again. OSError (no such interpreter) is raised."""
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True) as proc:
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop([proc], grace)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(cmd, 124, out or "", (err or "") + f"\ntimed out after {timeout:g} s")
        except BaseException:
            _stop([proc], grace)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out or "", err or "")


def stop_all(grace: float = GRACE_S) -> None:
    """Stop every child that `run` is waiting for, in any thread: what an interrupted parallel sweep
    does before it unwinds (the interruption reaches the main thread only); the threads' `run` calls
    then return."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    _stop(procs, grace)


def python_for(name: str) -> str:
    """The interpreter that runs a backend: $NIN_PYTHON_<NAME>, else the repository's venv for it,
    else this interpreter."""
    override = os.environ.get(f"NIN_PYTHON_{name.upper().replace('-', '_')}")
    if override:
        return override
    candidate = ROOT / backends.get(name).venv / "bin" / "python"
    return str(candidate) if candidate.is_file() else sys.executable


def environment_for(name: str) -> dict[str, str]:
    """This process's environment, plus the repository on the path, the backend's own variables and
    XLA's persistent compilation cache (below), unless the user set those variables."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(dict(backends.get(name).env))
    for key, value in xla_cache_environment().items():
        env.setdefault(key, value)
    return env


def xla_cache_environment() -> dict[str, str]:
    """JAX's persistent compilation cache, in the suite's cache folder, for every program: JAX (Flax and
    Keras on JAX) compiles each operation it runs eagerly, and every jitted step, before running it
    (0.07 s per operation on a CPU, several seconds per step), and keeps only programs that took over
    a second to compile unless told otherwise. Cached, a second run loads them instead (measured: the
    Flax record of paper and d2l-bn, 64 s cold, 23 s warm). The cached programs are the compiled ones:
    numerics do not change. Other frameworks ignore these variables."""
    from common.fsio import cache_dir

    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir() / "xla"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


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
        proc = run(cmd, env=environment_for(name), timeout=timeout)
    except OSError as e:
        return {"status": "skipped", "reason": f"cannot start {cmd[0]}: {e.strerror or e}"}
    if proc.returncode == 124 and proc.stderr.endswith(f"timed out after {timeout:g} s"):
        return {"status": "error", "reason": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = proc.stderr.strip()[-2000:]
    if proc.returncode == -signal.SIGKILL:  # not by us: on a CPU, the kernel's out-of-memory killer
        return {"status": "oom", "reason": "killed by SIGKILL (the kernel's out-of-memory killer, most likely); "
                                           f"stderr ends: {tail}"}
    if proc.returncode < 0:
        return {"status": "error", "reason": f"killed by signal {-proc.returncode}; stderr ends: {tail}"}
    return {"status": "error", "reason": f"exit status {proc.returncode} and no result; stderr ends: {tail}"}


def print_result(result: dict) -> None:
    """The worker side of `call`: one JSON line, last on stdout."""
    print(json.dumps(result), flush=True)


# --- the machine: how much memory a worker may count on -------------------------------------------
def gpus() -> list[dict]:
    """The GPUs nvidia-smi lists ({"name", "driver", "memory_bytes"} each), without importing a
    framework; none when nvidia-smi is absent or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.stdout.strip().splitlines() if out.returncode == 0 else []:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            name, driver, mib = fields
            try:
                found.append({"name": name, "driver": driver, "memory_bytes": int(float(mib)) * 2 ** 20})
            except ValueError:  # "[N/A]": a GPU that does not say
                found.append({"name": name, "driver": driver, "memory_bytes": None})
    return found


def memory_limit(device: str) -> tuple[int, str]:
    """(bytes, what they are) that a worker on `device` may count on (common.calc.memory_limit): for
    "gpu", the first GPU's memory when nvidia-smi tells it."""
    if device == "gpu":
        listed = gpus()
        if listed and listed[0]["memory_bytes"]:
            return calc.memory_limit((listed[0]["memory_bytes"], f"of the GPU ({listed[0]['name']})"))
    return calc.memory_limit()


def check_memory(need: int, *, what: str, device: str) -> None:
    """CostError, before any worker starts, when `need` is more than a worker on `device` may count on."""
    calc.check_memory(need, what=what, limit=memory_limit(device))
