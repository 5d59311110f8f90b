"""The step runner: each step a process group of its own, under its own limit and one deadline.

A step that fails or times out is recorded and the session goes on; one that cannot fit in the time
left is skipped with the reason; after every step the report under OUT is rewritten (gpu.report), so
that a session stopped from outside still leaves what it measured. The clock and the way a step is
executed can be injected: the tests drive the whole order with a fake clock and no process at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from . import report
from .plan import ROOT, Config, Step

# A step's processes form a group of their own, so that a time-out stops the workers a step starts too;
# the group stays in this session, so whoever ends this driver's session ends them as well.
GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
MINIMUM = 5  # seconds: a step with less time than this left is not started


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class Session:
    """Runs steps under one deadline and publishes what it has after each.

    clock: monotonic seconds (time.monotonic); execute(step, limit) -> exit status, or None when the
    step ran past `limit` (default: the step's command as a subprocess group, its output in its log)."""

    def __init__(self, cfg: Config, *, clock=time.monotonic, execute=None):
        self.cfg, self.clock = cfg, clock
        self.execute = execute or self._subprocess
        self.t0 = clock()
        self.deadline = self.t0 + cfg.budget
        self.steps: list[Step] = []
        self.facts: dict = {"created": now(), "budget_s": cfg.budget, "device": cfg.device, "dry_run": cfg.dry_run,
                            "python": cfg.python, "notes": [], "probes": {}, "headline": {}, "left_out": {},
                            "train": {}}
        self.env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # steps share the GPU
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.lines: list[str] = []
        for d in (cfg.out, cfg.work / "logs", cfg.work / "records", cfg.work / "bench", cfg.work / "probes"):
            d.mkdir(parents=True, exist_ok=True)

    # time and messages
    def elapsed(self) -> float:
        return self.clock() - self.t0

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def log(self, message: str) -> None:
        """One progress line to stderr and to session.log."""
        line = f"[{self.elapsed():6.0f} s] {message}"
        with self.lock:
            print(line, file=sys.stderr, flush=True)
            self.lines.append(line)

    def note(self, text: str) -> None:
        with self.lock:
            self.facts["notes"].append(text)
        self.log(f"note: {text}")

    # steps
    def add(self, steps: list[Step]) -> list[Step]:
        """Register steps ahead of running them: the report then names those the budget did not reach."""
        with self.lock:
            for step in steps:
                if not any(x is step for x in self.steps):
                    self.steps.append(step)
        return steps

    def skip(self, step: Step, reason: str) -> Step:
        self.add([step])
        step.status, step.reason = "skipped", reason
        self.log(f"skip {step.name}: {reason}")
        self.publish()
        return step

    def run_step(self, step: Step, *, until: float | None = None, share: str = "") -> Step:
        """Run `step` within its own limit, the deadline less the reserve, and `until` (clock time: the end
        of the phase's share, named by `share`); skipped when its estimate does not fit."""
        self.add([step])
        if step.status == "skipped":
            return step
        end = min(self.deadline - self.cfg.reserve, until if until is not None else float("inf"))
        limit = min(step.timeout, end - self.clock())
        if self.stopping:
            return self.skip(step, "the session was stopping")
        if limit < max(MINIMUM, step.estimate):
            need = f"needs about {step.estimate:.0f} s, " if step.estimate else ""
            return self.skip(step, f"budget: {need}{max(limit, 0):.0f} s left{share}")
        step.log = "logs/" + re.sub(r"[^A-Za-z0-9._-]+", "-", step.name).strip("-") + ".log"
        step.status, step.started = "running", now()
        self.log(f"start {step.name} (limit {limit:.0f} s): {shlex.join(step.cmd)}")
        start = self.clock()
        step.rc = self.execute(step, limit)
        step.seconds = round(self.clock() - start, 1)
        self._judge(step, limit)
        self.log(f"{step.status} {step.name} in {step.seconds:.0f} s" + (f": {step.reason}" if step.reason else ""))
        self.publish()
        return step

    def _judge(self, step: Step, limit: float) -> None:
        if step.rc is None:
            step.status, step.reason = "timeout", f"stopped after {limit:.0f} s"
        else:
            step.status = "ok" if step.rc in step.ok_codes else "failed"
        crash = next((ln for ln in self.tail(step, 5).splitlines() if ln.startswith("nin: internal error")), None)
        if crash:  # `nin` exits 1 for failed checks and for its own bugs alike: the log tells them apart
            step.status, step.reason = "failed", crash
        if step.status == "failed" and not step.reason:
            step.reason = f"exit status {step.rc}: {self.tail(step, 1)}"
        if self.stopping and step.status != "ok":
            step.status, step.reason = "timeout", "stopped with the session (its budget ended, or a signal)"

    def _subprocess(self, step: Step, limit: float) -> int | None:
        cmd = (["nice", "-n", "10"] if step.background and shutil.which("nice") else []) + step.cmd
        with open(self.cfg.work / step.log, "w") as logf:
            try:
                proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **step.env}, stdout=logf,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **GROUP)
            except OSError as e:
                step.reason = f"cannot start: {e}"
                return 127
            with self.lock:
                self.procs[step.name] = proc
            try:
                return proc.wait(timeout=max(limit, 0))
            except subprocess.TimeoutExpired:
                self._kill([proc])
                return None
            finally:
                with self.lock:
                    self.procs.pop(step.name, None)

    @staticmethod
    def _kill(procs: list[subprocess.Popen]) -> None:
        """Each step's whole process group, by its id: SIGTERM, five seconds, then SIGKILL for what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
            end = time.monotonic() + 5
            while time.monotonic() < end and any(proc.poll() is None for proc in procs):
                time.sleep(0.1)

    def stop_all(self) -> None:
        """At the end, or on a signal: every step still running is stopped."""
        self.stopping = True
        with self.lock:
            running = list(self.procs.values())
        self._kill(running)

    # running several at once
    def map(self, fn, items: list) -> list:
        """fn over items, at once in threads (one after another in serial mode); waits for all."""
        if self.cfg.serial or len(items) < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(fn, items))

    def submit(self, fn) -> Future:
        """fn in the background (at once, in serial mode)."""
        if self.cfg.serial:
            future: Future = Future()
            future.set_result(fn())
            return future
        pool = ThreadPoolExecutor(1)
        future = pool.submit(fn)
        pool.shutdown(wait=False)
        return future

    # what a step left
    def tail(self, step: Step, lines: int = 20) -> str:
        try:
            text = (self.cfg.work / step.log).read_text(errors="replace") if step.log else ""
        except OSError:
            return ""
        return "\n".join([ln for ln in text.strip().splitlines() if ln.strip()][-lines:])

    def last_json(self, step: Step) -> dict | None:
        """The last line of the step's output that is a JSON object (a probe's or a worker's result)."""
        for line in reversed(self.tail(step, 200).splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    return json.loads(line)
                return None
        return None

    def publish(self) -> None:
        """The report under OUT, from what is known now (an unwritable OUT is said, once per publish)."""
        with self.lock:
            try:
                report.publish(self)
            except OSError as e:
                print(f"gpu session: cannot write under {self.cfg.out}: {e}", file=sys.stderr)

    def document(self) -> dict:
        """session.json: the facts and every step."""
        with self.lock:
            return {**self.facts, "elapsed_s": round(self.elapsed(), 1), "steps": [s.to_dict() for s in self.steps]}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
