"""One prepared run on a CUDA machine: conformance records and throughput of every backend there, under a time budget.

    python -m benchmarks.gpu_session run --out OUT [--budget 480] [--wheelhouse .whl]   on the GPU machine
    python -m benchmarks.gpu_session run --dry-run --out runs/gpu-dry-run              here: CPU, a tiny network
    python -m benchmarks.gpu_session plan [--dry-run]                                 the steps, nothing run
    python -m benchmarks.gpu_session collect OUT      here: the results into records/ and benchmarks/results/

Made for a machine lent for minutes (docs/gpu.md): every step is a subprocess with its own time limit
(this driver imports no framework), a step that fails or times out is recorded and the run goes on,
and every result is written under OUT as it arrives, so that a run stopped from outside still leaves
what it measured. In priority order:

  setup        nvidia-smi; the offline bundle (harness.wheelhouse install: keras and what it needs, into
               a folder on PYTHONPATH, only what the interpreter lacks); NIN_DATA_DIR and NIN_CACHE_DIR;
               whether `nin train` exists
  probe        each backend's versions, device and the APIs the suite relies on (benchmarks.probe),
               with PyTorch's measured bf16 matmul rate: the roof the throughput is judged against
  background   on the CPU, niced: the float64 reference and the error model of every variant and
               precision (`nin error-model`), and fp32 CPU records of torch and jax (the GPU records'
               CPU counterparts, made here with the same versions)
  conformance  GPU records, one lane per backend in parallel: fp32 (TF32 off, deterministic), then fast
               (TF32), eager, for d2l, paper and d2l-bn; then `nin compare` of every record made, GPU and
               CPU, against the float64 reference and each other: matrix-gpu.md and .json
  bench        `nin bench --device gpu`, one backend and setting group at a time, most wanted first
               (training, bf16, compiled, batch 256, with --verify for torch and jax), then the rest of
               train / infer x bf16 / fp32 x compiled / eager x 256 / 64 / 512 while the budget lasts;
               merged into bench-gpu.json, .md and .png
  train        `nin train`, when that command exists, with --train-args or a time limit it offers
  report       summary.md, session.json, session.log, results.tar.gz

OUT receives at most six files: summary.md, session.json, session.log, matrix-gpu.md, bench-gpu.md and
results.tar.gz (every log, probe, matrix and benchmark result; the records themselves, tens of MB each,
stay in the work folder). --dry-run does all of it on the CPU with a network of two small blocks, so
that the logic is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from common import backends, tables
from common.fsio import atomic_write_bytes, atomic_write_text

from . import report, runner

ROOT = backends.ROOT
BACKENDS = ("torch", "jax", "keras-jax", "keras-torch")  # what a CUDA machine with PyTorch and JAX runs
VARIANTS = ("d2l", "paper", "d2l-bn")
PRECISIONS = ("fp32", "fast")
CPU_RECORD_BACKENDS = ("torch", "jax")
VERIFY_BACKENDS = ("torch", "jax")  # benchmarks.verify_timing has an independent loop for these
# (mode, precision, compile, batch sizes), most wanted first: the roof is training, bf16, batch 256
BENCH_GROUPS = (
    ("train", "bf16", "compiled", (256,)),
    ("train", "bf16", "eager", (256,)),
    ("train", "fp32", "compiled", (256,)),
    ("train", "fp32", "eager", (256,)),
    ("train", "fp32", "plain", (256,)),  # the chapter's own code, the yardstick (when the runner has it)
    ("infer", "bf16", "compiled", (256,)),
    ("infer", "bf16", "eager", (256,)),
    ("infer", "fp32", "compiled", (256,)),
    ("infer", "fp32", "eager", (256,)),
    ("train", "bf16", "compiled", (64, 512)),
    ("infer", "bf16", "compiled", (64, 512)),
    ("train", "bf16", "eager", (64, 512)),
    ("train", "fp32", "compiled", (64, 512)),
    ("infer", "bf16", "eager", (64, 512)),
    ("infer", "fp32", "compiled", (64, 512)),
    ("train", "fp32", "eager", (64, 512)),
    ("infer", "fp32", "eager", (64, 512)),
)
# seconds per configuration (process start, compilation, warm-up and timing) on an H100, first guesses:
# a group is skipped when its estimate does not fit, and each measurement replaces its guess
BENCH_ESTIMATE = {("torch", "eager"): 15, ("torch", "compiled"): 60, ("jax", "eager"): 25, ("jax", "compiled"): 20,
                  ("keras-jax", "eager"): 30, ("keras-jax", "compiled"): 25, ("keras-torch", "eager"): 25,
                  ("keras-torch", "compiled"): 80}
TIME_LIMIT_FLAGS = ("--time-limit", "--max-seconds", "--max-time", "--budget", "--seconds", "--timeout")
# A step's processes form a group of their own, so that a time-out stops the workers a step starts too;
# the group stays in this session, so whoever ends this driver's session ends them as well.
GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
PACKED = (".json", ".jsonl", ".md", ".log", ".txt", ".csv", ".png")  # what results.tar.gz takes of the work folder
OUT_FILES = ("summary.md", "session.json", "session.log", "matrix-gpu.md", "bench-gpu.md", "results.tar.gz")
TINY_SPEC = {  # the dry run's network: both block kinds, pooling, dropout; a reference in a second
    "name": "tiny", "input_shape": [1, 12, 12], "num_classes": 10, "init": "xavier_uniform",
    "layers": [{"type": "nin_block", "out_channels": 6, "kernel_size": 3, "stride": 1, "padding": 1, "mlp": [6]},
               {"type": "max_pool", "kernel_size": 3, "stride": 2, "padding": 0},
               {"type": "dropout", "rate": 0.5},
               {"type": "nin_block", "out_channels": 10, "kernel_size": 3, "stride": 1, "padding": 1, "mlp": [10]},
               {"type": "global_avg_pool"}, {"type": "flatten"}]}


@dataclass
class Config:
    out: Path
    work: Path
    budget: float = 480.0  # seconds of work, setup to report
    device: str = "gpu"
    backends: tuple[str, ...] = BACKENDS
    variants: tuple[str, ...] = VARIANTS
    precisions: tuple[str, ...] = PRECISIONS
    bench_variant: str = "d2l"
    bench_groups: tuple = BENCH_GROUPS
    warmup: int = 5
    windows: int = 5
    steps: int = 10
    cpu_records: bool = True
    wheelhouse: Path = ROOT / ".whl"
    python: str = sys.executable
    train_args: str | None = None
    train_seconds: float = 0.0  # kept for `nin train` at the end; 0: it runs only if the benchmarks leave time
    record_timeout: float = 240.0
    conformance_seconds: float = 180.0  # the GPU records' share; what has not started by then is skipped
    reserve: float = 20.0  # kept for the report at the end
    background_workers: int = 8
    dry_run: bool = False
    skip: tuple[str, ...] = ()
    bench_numbers: tuple[int, ...] | None = None  # the groups' numbers in the full list, when a subset runs


def dry_run_config(out: Path, work: Path, **kw) -> Config:
    """The whole run on the CPU, small enough for a test: a tiny network, batch 2, one window of steps."""
    tiny = str(work / "tiny.json")
    defaults = dict(budget=300.0, device="cpu", variants=(tiny,), bench_variant=tiny,
                    bench_groups=(("train", "fp32", "eager", (2,)), ("infer", "bf16", "eager", (2,))),
                    warmup=1, windows=2, steps=1, cpu_records=False, record_timeout=120.0,
                    conformance_seconds=120.0, reserve=10.0, background_workers=2, dry_run=True, train_seconds=45.0,
                    train_args=f"--backend torch --variant {tiny} --epochs 1 --train-limit 64 --test-limit 64 "
                               f"--device cpu --quiet --out {work / 'train'}")
    defaults.update(kw)
    return Config(out=out, work=work, **defaults)


@dataclass(eq=False)  # steps are compared by identity
class Step:
    name: str
    phase: str  # setup, probe, reference, cpu-record, record, compare, bench, train
    cmd: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    background: bool = False  # CPU work beside the GPU's: niced
    ok_codes: tuple[int, ...] = (0,)
    estimate: float = 0.0
    meta: dict = field(default_factory=dict)
    status: str = "planned"  # planned, running, ok, failed, timeout, skipped
    rc: int | None = None
    seconds: float | None = None
    started: str | None = None
    reason: str = ""
    log: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["command"] = shlex.join(d.pop("cmd"))
        return d


def _nin(cfg: Config, *args: str) -> list[str]:
    return [cfg.python, "-m", "nin.cli", *args]


def record_path(cfg: Config, backend: str, device: str, precision: str) -> Path:
    return cfg.work / "records" / f"{backend}-{device}-{precision}-eager.safetensors"


def _cpu_env(threads: int = 2) -> dict[str, str]:
    """A CPU-only process that leaves the GPU and most cores alone."""
    n = str(threads)
    return {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"}


def probe_steps(cfg: Config) -> list[Step]:
    return [Step(f"probe {b}", "probe", [cfg.python, "-m", "benchmarks.probe", "--backend", b, "--device", cfg.device],
                 timeout=180, env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, meta={"backend": b})
            for b in cfg.backends]


def background_steps(cfg: Config, backends_: list[str]) -> list[Step]:
    """The reference and error model of every variant and precision, then the CPU records: CPU work."""
    steps = [Step(f"error model {Path(v).stem} {p}", "reference",
                  _nin(cfg, "error-model", "--variant", v, "--precision", p), timeout=cfg.budget,
                  env=_cpu_env(), background=True, meta={"variant": v, "precision": p})
             for v in cfg.variants for p in cfg.precisions]
    if cfg.cpu_records and cfg.device == "gpu":
        for b in (b for b in CPU_RECORD_BACKENDS if b in backends_):
            out = record_path(cfg, b, "cpu", "fp32")
            steps.append(Step(f"record {b} cpu fp32", "cpu-record",
                              _nin(cfg, "record", "--backend", b, "--device", "cpu", "--precision", "fp32",
                                   "--variant", *cfg.variants, "--out", str(out), "--timeout", str(int(cfg.budget))),
                              timeout=cfg.budget, env=_cpu_env(), background=True, meta={"record": str(out)}))
    return steps


def record_lanes(cfg: Config, backends_: list[str]) -> dict[str, list[Step]]:
    """One lane of records per backend, run in parallel (the GPU has room for all of them)."""
    lanes = {}
    for b in backends_:
        lane = []
        for p in cfg.precisions:
            out = record_path(cfg, b, cfg.device, p)
            lane.append(Step(f"record {b} {cfg.device} {p}", "record",
                             _nin(cfg, "record", "--backend", b, "--device", cfg.device, "--precision", p,
                                  "--variant", *cfg.variants, "--out", str(out),
                                  "--timeout", str(int(cfg.record_timeout))),
                             timeout=cfg.record_timeout + 15, env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
                             meta={"record": str(out), "backend": b, "precision": p}))
        lanes[b] = lane
    return lanes


def compare_step(cfg: Config, records: list[str]) -> Step:
    return Step("compare", "compare", _nin(cfg, "compare", *records, "--report", str(cfg.work / "matrix-gpu.md"),
                                           "--json-out", str(cfg.work / "matrix-gpu.json")),
                timeout=cfg.budget, env=_cpu_env(4), ok_codes=(0, 1), meta={"records": records})


def bench_steps(cfg: Config, backends_: list[str]) -> list[Step]:
    """One step per (setting group, backend), groups in priority order, backends in turn within each."""
    steps = []
    for j, (mode, precision, compile, sizes) in enumerate(cfg.bench_groups):
        i = cfg.bench_numbers[j] if cfg.bench_numbers else j
        for b in backends_:
            offered = backends.get(b).compile_modes + (("plain",) if "plain" in runner.COMPILE_MODES else ())
            if compile not in offered:
                continue
            verify = i == 0 and b in VERIFY_BACKENDS
            name = f"{i:02d}-{b}-{mode}-{precision}-{compile}-{'-'.join(map(str, sizes))}"
            out = cfg.work / "bench" / f"{name}.json"
            cmd = _nin(cfg, "bench", "--backend", b, "--variant", cfg.bench_variant, "--mode", mode, "--precision",
                       precision, "--compile", compile, "--batch-size", *map(str, sizes), "--device", cfg.device,
                       "--warmup", str(cfg.warmup), "--windows", str(cfg.windows), "--steps", str(cfg.steps),
                       "--out", str(out))
            if verify:
                cmd.append("--verify")
            steps.append(Step(f"bench {name}", "bench", cmd, timeout=cfg.budget, ok_codes=(0, 1),
                              meta={"backend": b, "compile": compile, "configs": len(sizes), "verify": verify,
                                    "result": str(out)}))
    return steps


def train_step(cfg: Config, help_text: str | None, seconds: float) -> Step | None:
    """`nin train` for `seconds`: with --train-args, else the tuned recipe with the options its --help offers
    (a time limit among them when it has one; the step's own limit stops it otherwise). None: no such command."""
    if help_text is None:
        return None
    if cfg.train_args:
        args = shlex.split(cfg.train_args)
    else:
        wanted = (("--backend", "torch"), ("--variant", "d2l"), ("--recipe", "tuned"), ("--device", cfg.device),
                  ("--precision", "fast"), ("--out", str(cfg.work / "train")))
        args = [a for opt, value in wanted if re.search(rf"{opt}\b", help_text) for a in (opt, value)]
        args += [opt for opt in ("--quiet",) if re.search(rf"{opt}\b", help_text)]
        flag = next((f for f in TIME_LIMIT_FLAGS if re.search(rf"{f}\b", help_text)), None)
        if flag:
            args += [flag, str(int(seconds))]
    return Step("train", "train", _nin(cfg, "train", *args), timeout=seconds + (30 if not cfg.train_args else 0),
                ok_codes=(0, 1), meta={"seconds": seconds})


def plan(cfg: Config) -> dict:
    """Every step the run would take, before the probes narrow the backends down (for `plan` and the tests)."""
    return {"probe": probe_steps(cfg), "background": background_steps(cfg, list(cfg.backends)),
            "records": record_lanes(cfg, list(cfg.backends)), "bench": bench_steps(cfg, list(cfg.backends))}


# --- running ---------------------------------------------------------------------------------
class Session:
    """Runs steps as subprocess groups under one deadline and publishes what it has after each."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.deadline = self.t0 + cfg.budget
        self.created = datetime.now().astimezone().isoformat(timespec="seconds")
        self.steps: list[Step] = []
        self.probes: dict[str, dict] = {}
        self.facts: dict = {"created": self.created, "budget_s": cfg.budget, "device": cfg.device,
                            "dry_run": cfg.dry_run, "python": cfg.python, "notes": []}
        self.env = dict(os.environ)
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.lines: list[str] = []
        for d in (cfg.out, cfg.work / "logs", cfg.work / "records", cfg.work / "bench", cfg.work / "probes"):
            d.mkdir(parents=True, exist_ok=True)

    # time
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        """One line to stderr and to session.log (rewritten whole, atomically, at each publish)."""
        line = f"[{self.elapsed():7.1f} s] {message}"
        with self.lock:
            print(line, file=sys.stderr, flush=True)
            self.lines.append(line)

    def note(self, text: str) -> None:
        with self.lock:
            self.facts["notes"].append(text)
        self.log(f"note: {text}")

    # one step
    def add(self, steps: list[Step]) -> list[Step]:
        """Register steps ahead of running them: the report then names those the budget did not reach."""
        with self.lock:
            for step in steps:
                if not any(x is step for x in self.steps):
                    self.steps.append(step)
        return steps

    def run_step(self, step: Step, *, until: float | None = None) -> Step:
        """Run `step` within its own limit, the budget (less the reserve) and `until` (a monotonic time)."""
        self.add([step])
        if step.status == "skipped":
            self.publish()
            return step
        limit = min(step.timeout, self.remaining() - self.cfg.reserve,
                    (until - time.monotonic()) if until else float("inf"))
        if self.stopping or limit < 5:
            step.status = "skipped"
            step.reason = "the session was stopping" if self.stopping else f"budget: {max(limit, 0):.0f} s left for it"
            self.log(f"skip {step.name}: {step.reason}")
            self.publish()
            return step
        if step.estimate and step.estimate > limit:
            step.status, step.reason = "skipped", f"budget: needs about {step.estimate:.0f} s, {limit:.0f} s left"
            self.log(f"skip {step.name}: {step.reason}")
            self.publish()
            return step
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", step.name).strip("-")
        step.log = f"logs/{slug}.log"
        cmd = (["nice", "-n", "10"] if step.background and shutil.which("nice") else []) + step.cmd
        env = {**self.env, **step.env}
        step.status, step.started = "running", datetime.now().astimezone().isoformat(timespec="seconds")
        self.log(f"start {step.name} (limit {limit:.0f} s): {shlex.join(step.cmd)}")
        start = time.monotonic()
        with open(self.cfg.work / step.log, "w") as logf:
            try:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, **GROUP)
            except OSError as e:
                step.status, step.reason, step.seconds = "failed", f"cannot start: {e}", 0.0
                self.publish()
                return step
            with self.lock:
                self.procs[step.name] = proc
            try:
                step.rc = proc.wait(timeout=max(limit, 0))
                step.status = "ok" if step.rc in step.ok_codes else "failed"
            except subprocess.TimeoutExpired:
                self._kill(proc)
                step.status, step.reason = "timeout", f"stopped after {limit:.0f} s"
            finally:
                with self.lock:
                    self.procs.pop(step.name, None)
        step.seconds = round(time.monotonic() - start, 1)
        crash = next((ln for ln in self.tail(step, 5).splitlines() if ln.startswith("nin: internal error")), None)
        if crash:  # `nin` exits 1 for failed checks and for its own bugs alike: the log tells them apart
            step.status, step.reason = "failed", crash
        if step.status == "failed" and not step.reason:
            step.reason = f"exit status {step.rc}: {self.tail(step, 1)}"
        if self.stopping and step.status != "ok":
            step.status, step.reason = "timeout", "stopped with the session (its budget ended, or a signal)"
        self.log(f"{step.status} {step.name} in {step.seconds} s" + (f": {step.reason}" if step.reason else ""))
        self.publish()
        return step

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """The step's whole process group: `nin record` and `nin bench` start workers of their own."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        """At the end: every step still running is stopped (its process group, by its id), all at once:
        SIGTERM, five seconds, then SIGKILL for what is left."""
        self.stopping = True
        with self.lock:
            running = list(self.procs.values())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in running:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
            end = time.monotonic() + 5
            while time.monotonic() < end and any(proc.poll() is None for proc in running):
                time.sleep(0.1)

    def tail(self, step: Step, lines: int = 20) -> str:
        try:
            text = (self.cfg.work / step.log).read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.strip().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def last_json(self, step: Step) -> dict | None:
        try:
            text = (self.cfg.work / step.log).read_text(errors="replace")
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
        return None

    # publishing
    def publish(self) -> None:
        """session.json, summary.md and results.tar.gz under OUT, from what is known now."""
        with self.lock:
            doc = {**self.facts, "elapsed_s": round(self.elapsed(), 1), "probes": self.probes,
                   "steps": [s.to_dict() for s in self.steps]}
            try:
                atomic_write_text(self.cfg.out / "session.json", json.dumps(doc, indent=2, default=str) + "\n")
                atomic_write_text(self.cfg.out / "session.log", "\n".join(self.lines) + "\n")
                atomic_write_text(self.cfg.out / "summary.md", summary(doc, self.cfg))
                self._pack()
            except OSError as e:
                print(f"gpu_session: cannot write under {self.cfg.out}: {e}", file=sys.stderr)

    def _pack(self) -> None:
        """Everything small of the work folder: logs, probes, matrices, benchmark results (not the records)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(self.cfg.work.rglob("*")):
                rel = path.relative_to(self.cfg.work)
                if not path.is_file() or rel.parts[0] in ("records", "cache", "site") or path.name.startswith("."):
                    continue
                if path.suffix not in PACKED or path.stat().st_size > 4 * 2 ** 20:
                    continue  # checkpoints, weights: large, and not results
                if rel.parts[0] == "bench" and path.suffix != ".json":
                    continue  # each step's table and plot: the merged ones say it all
                tar.add(path, arcname=str(rel))
        atomic_write_bytes(self.cfg.out / "results.tar.gz", buf.getvalue())


# --- the run -----------------------------------------------------------------------------------
def _setup(s: Session) -> str | None:
    """nvidia-smi, the offline bundle, the data and cache folders; returns `nin train --help` or None."""
    cfg = s.cfg
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit,compute_cap"
    smi = (Step("nvidia-smi", "setup", ["sh", "-c", f"nvidia-smi {query} --format=csv,noheader; nvidia-smi"],
                timeout=30) if shutil.which("nvidia-smi") else None)
    if smi:
        s.run_step(smi)
        s.facts["nvidia_smi"] = s.tail(smi, 40)
        s.facts["gpu"] = next(iter(s.tail(smi, 100).splitlines()), "")
    elif cfg.device == "gpu":
        s.note("nvidia-smi is not on PATH")
    s.facts["uname"] = " ".join(os.uname())
    if "install" not in cfg.skip and any(Path(cfg.wheelhouse).glob("*.whl")):
        site = cfg.work / "site"
        step = s.run_step(Step("install the offline bundle", "setup",
                               [cfg.python, "-m", "harness.wheelhouse", "install", "--dest", str(cfg.wheelhouse),
                                "--target", str(site)], timeout=180))
        if step.status == "ok":
            s.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), s.env.get("PYTHONPATH")]))
    elif "install" not in cfg.skip:
        s.note(f"no wheels in {cfg.wheelhouse}: nothing installed (keras must be there already for the Keras backends)")
    data = Path(cfg.wheelhouse) / "fashion-mnist"
    if data.is_dir():
        s.env["NIN_DATA_DIR"] = str(data.resolve())
    cache = cfg.work / "cache"
    carried = Path(cfg.wheelhouse) / "cache" / "error-model"
    if carried.is_dir():  # spreads measured elsewhere: the error model then costs nothing here
        for f in carried.glob("*.json"):
            atomic_write_bytes(cache / "error-model" / f.name, f.read_bytes())
    s.env["NIN_CACHE_DIR"] = str(cache.resolve())
    s.env["PYTHONUNBUFFERED"] = "1"
    for b in cfg.backends:  # one interpreter for all: the machine's own, holding PyTorch and JAX
        s.env.setdefault(f"NIN_PYTHON_{b.upper().replace('-', '_')}", cfg.python)
    s.facts["environment"] = {k: s.env[k] for k in ("NIN_DATA_DIR", "NIN_CACHE_DIR", "PYTHONPATH") if k in s.env}
    if "train" in cfg.skip:
        return None
    helper = s.run_step(Step("nin train --help", "setup", _nin(cfg, "train", "--help"), timeout=60,
                             ok_codes=(0, 2)))
    if helper.rc != 0:
        helper.status, helper.reason = "skipped", "no `nin train` command in this checkout"
        s.note("`nin train` is not there yet: the training recipe is skipped")
        return None
    return (cfg.work / helper.log).read_text(errors="replace")


XLA_STRICT = "--xla_gpu_deterministic_ops=true"  # what nin_jax and nin_tf add to XLA_FLAGS for fp32 on a GPU


def _probe(s: Session) -> list[str]:
    """The backends that can run here, from their probes."""
    steps = probe_steps(s.cfg)
    flags = None
    if s.cfg.device == "gpu" and any("jax" in b for b in s.cfg.backends):  # XLA aborts on a flag it does not know
        flags = Step("probe XLA's determinism flag", "probe", [s.cfg.python, "-c", "import jax; print(jax.devices())"],
                     timeout=120, env={"XLA_FLAGS": XLA_STRICT, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    with ThreadPoolExecutor(len(steps) + 1) as pool:
        list(pool.map(s.run_step, steps + ([flags] if flags else [])))
    if flags and flags.status != "ok":
        s.note(f"this jaxlib refuses XLA_FLAGS={XLA_STRICT}: strict (fp32) GPU records of jax and keras-jax fail; "
               f"{s.tail(flags, 1)}")
    runnable = []
    for step in steps:
        b = step.meta["backend"]
        result = s.last_json(step) or {"status": "error", "reason": step.reason or s.tail(step, 3)}
        atomic_write_text(s.cfg.work / "probes" / f"{b}.json", json.dumps(result, indent=2) + "\n")
        with s.lock:
            s.probes[b] = result
        if result.get("status") == "ok" and "device_error" not in result:
            runnable.append(b)
        else:
            s.note(f"{b} is left out: {result.get('reason') or result.get('device_error')}")
        for problem in result.get("problems") or []:
            s.note(f"{b}: {problem}")
    s.publish()
    return runnable


def _records(s: Session, runnable: list[str]) -> None:
    lanes = record_lanes(s.cfg, runnable)
    for lane_steps in lanes.values():
        s.add(lane_steps)
    until = time.monotonic() + s.cfg.conformance_seconds

    def lane(steps: list[Step]) -> None:
        for step in steps:
            s.run_step(step, until=until)

    with ThreadPoolExecutor(len(lanes) or 1) as pool:
        list(pool.map(lane, lanes.values()))


def _made_records(s: Session) -> list[str]:
    return [st.meta["record"] for st in s.steps if st.phase in ("record", "cpu-record") and st.status == "ok"
            and Path(st.meta["record"]).is_file()]


def _bench(s: Session, runnable: list[str], *, before: float, maybe_compare) -> None:
    estimates = dict(BENCH_ESTIMATE)
    for step in s.add(bench_steps(s.cfg, runnable)):
        maybe_compare()
        key = (step.meta["backend"], step.meta["compile"])
        step.estimate = estimates.get(key, 30) * step.meta["configs"] * (2 if step.meta["verify"] else 1)
        if s.cfg.dry_run:
            step.estimate = 0
        per_config = max(60.0, min(600.0, before - time.monotonic()))
        step.cmd += ["--timeout", str(int(per_config))]
        s.run_step(step, until=before)
        if step.status == "ok" and step.seconds:
            estimates[key] = step.seconds / step.meta["configs"] / (2 if step.meta["verify"] else 1)


def _clear(work: Path) -> None:
    """A former run's results in the work folder would be merged into this one's: remove them (the cache of
    references and error models stays: it is the same for every run of the same code)."""
    for pattern in ("records/*.safetensors", "bench/*", "logs/*", "probes/*", "matrix-gpu.*", "bench-gpu.*",
                    "train/**/*"):
        for path in work.glob(pattern):
            if path.is_file():
                path.unlink()


def run(cfg: Config) -> int:
    _clear(cfg.work)
    s = Session(cfg)
    if cfg.dry_run:
        atomic_write_text(cfg.work / "tiny.json", json.dumps(TINY_SPEC, indent=2) + "\n")
    s.log(f"gpu session: device {cfg.device}, budget {cfg.budget:.0f} s, out {cfg.out}, work {cfg.work}")
    s.publish()
    background = ThreadPoolExecutor(cfg.background_workers)
    compare: dict = {}

    def terminated(signum, frame):  # `timeout` or a user's kill: stop the steps, write the report
        s.stop_all()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    try:
        help_text = _setup(s)
        runnable = _probe(s)
        s.facts["backends"] = runnable
        if not runnable:
            s.note("no backend can run here: nothing more to do")
            return 1
        bg = [background.submit(s.run_step, step) for step in s.add(background_steps(cfg, runnable))
              if "conformance" not in cfg.skip]
        if "conformance" not in cfg.skip:
            _records(s, runnable)
        train_reserve = cfg.train_seconds + 30 if help_text is not None and cfg.train_seconds > 0 else 0

        def maybe_compare(final: bool = False) -> None:
            """Start `nin compare` once the error model is measured (and the CPU records are made, unless
            time is short): in the background, beside the benchmarks."""
            if compare or "conformance" in cfg.skip:
                return
            refs = [st for st in s.steps if st.phase == "reference"]
            cpu = [st for st in s.steps if st.phase == "cpu-record"]
            refs_done = all(st.status not in ("planned", "running") for st in refs) and len(refs) > 0
            cpu_done = all(st.status not in ("planned", "running") for st in cpu)
            late = s.remaining() < cfg.reserve + 90
            if not (final or (refs_done and (cpu_done or late))):
                return
            records = _made_records(s)
            if not records:
                s.note("no record was made: nothing to compare")
                compare["step"] = None
                return
            step = compare_step(cfg, records)
            compare["step"] = step
            compare["future"] = background.submit(s.run_step, step)

        if "bench" not in cfg.skip:
            _bench(s, runnable, before=s.deadline - cfg.reserve - train_reserve, maybe_compare=maybe_compare)
        maybe_compare()
        spare = s.remaining() - cfg.reserve - (0 if compare else 90)  # a compare still to come needs its time
        train = train_step(cfg, help_text, max(cfg.train_seconds, spare - 30))
        if train and spare > 60:
            s.run_step(train)
        elif train:
            train.status, train.reason = "skipped", "budget: the benchmarks used the time (see --train-seconds)"
            s.add([train])
        while not compare and s.remaining() > cfg.reserve + 5 and "conformance" not in cfg.skip:
            maybe_compare(final=s.remaining() < cfg.reserve + 120)
            time.sleep(1)
        if compare.get("future"):
            wait([compare["future"]], timeout=max(s.remaining() - cfg.reserve + 10, 1))
        if not all(f.done() for f in bg):
            s.note("background work still running at the end of the budget is stopped")
    except KeyboardInterrupt as e:
        s.note(f"stopped from outside ({e or 'interrupt'}): the report holds what was done")
        return 130
    except Exception as e:  # the report must still be written
        s.note(f"the session itself failed: {type(e).__name__}: {e}")
        raise
    finally:
        s.stop_all()
        background.shutdown(wait=True, cancel_futures=True)
        _finish(s)
    failed = [st for st in s.steps if st.status in ("failed", "timeout")]
    return 1 if failed else 0


# --- the report ---------------------------------------------------------------------------------
def merge_bench(paths: list[Path]) -> dict | None:
    """One result document from several `nin bench` files of one device (results in order)."""
    docs = []
    for p in paths:
        try:
            docs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    if not docs:
        return None
    first = docs[0]
    doc = {**first, "command": "python -m benchmarks.gpu_session run (one `nin bench` per group, in 'commands')",
           "commands": [d["command"] for d in docs], "results": [r for d in docs for r in d["results"]],
           "load_average": {"before": first["load_average"]["before"], "after": docs[-1]["load_average"]["after"]}}
    versions = {}
    for d in docs:
        versions.update(d.get("versions") or {})
    doc["versions"] = versions
    settings = dict(first["settings"])
    for key in ("backends", "modes", "precisions", "compile"):
        settings[key] = list(dict.fromkeys(v for d in docs for v in d["settings"][key]))
    settings["batch_sizes"] = sorted({n for d in docs for n in d["settings"]["batch_sizes"]})
    settings["verify"] = any(d["settings"]["verify"] for d in docs)
    doc["settings"] = settings
    return doc


def _matrix_line(work: Path) -> tuple[str | None, list[str]]:
    """The matrix's closing line and its failures, from matrix-gpu.md."""
    try:
        text = (work / "matrix-gpu.md").read_text()
    except OSError:
        return None, []
    line = next((ln for ln in text.splitlines() if re.match(r"^\d+ passed, \d+ failed", ln)), None)
    return line, [ln.strip() for ln in text.splitlines() if ln.strip().startswith("FAIL ")]


def bench_rows(doc: dict, peak_tflops: float | None) -> list[list[str]]:
    rows = []
    for r in doc["results"]:
        u = r.get("utilization") or {}
        ok = r["status"] == "ok"
        measured = (f"{u['achieved_tflops'] / peak_tflops:.1%}" if ok and peak_tflops and u.get("achieved_tflops")
                    and r["precision"] == "bf16" else "–")
        check = r.get("verify") or {}
        rows.append([r["backend"], r["mode"], str(r["batch_size"]), r["precision"], r["compile"],
                     f"{r['images_per_second']:.1f}" if ok else r["status"],
                     f"{u['achieved_tflops']:.1f}" if ok and u.get("achieved_tflops") else "–",
                     f"{u['mfu']:.1%}" if ok and u.get("mfu") is not None else "–", measured,
                     f"{check['ratio']:.2f}" if check.get("ratio") else check.get("status", "–")])
    return rows


def summary(doc: dict, cfg: Config) -> str:
    """summary.md: what ran, what it found, and what did not run."""
    lines = [f"# GPU session{' (dry run on the CPU)' if doc.get('dry_run') else ''}: {doc['created']}", "",
             f"- device: {cfg.device}; budget {doc['budget_s']:.0f} s; elapsed {doc['elapsed_s']:.0f} s; "
             f"python {doc['python']}"]
    smi = doc.get("nvidia_smi")
    if smi:
        gpu = next((ln.strip(" |") for ln in smi.splitlines() if re.search(r"H100|H200|A100|NVIDIA", ln)
                    and "Driver" not in ln and "SMI" not in ln), None)
        lines.append(f"- GPU: {gpu or 'see nvidia-smi in results.tar.gz'}")
    peak = (doc.get("probes", {}).get("torch", {}).get("measured") or {}).get("bf16_matmul_tflops")
    if peak:
        lines.append(f"- measured bf16 peak (PyTorch, 8192^3 matmul, CUDA events): {peak:.0f} TFLOP/s")
    lines += ["", "## Backends", ""]
    rows = []
    for b, p in doc.get("probes", {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items() if k != "numpy")
        rows.append([b, p.get("status", "?"), p.get("device_name") or p.get("device_error") or p.get("reason", ""),
                     versions])
    lines += tables.markdown(["backend", "probe", "device", "versions"], rows) if rows else ["(no probe yet)"]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    matrix, fails = _matrix_line(cfg.work)
    lines += ["", "## Conformance", "", f"- matrix: {matrix or 'not made (see the steps)'}"]
    lines += [f"  - {f}" for f in fails[:30]]
    compared = next((st for st in doc["steps"] if st["name"] == "compare"), None)
    if compared and compared["status"] != "ok":
        lines.append(f"- the compare step: {compared['status']}: {compared['reason']}")
    if matrix and not (cfg.work / "matrix-gpu.json").is_file():
        lines.append("- matrix-gpu.json was not written (see the compare step's log)")
    bench = cfg.work / "bench-gpu.json"
    if bench.is_file():
        try:
            bdoc = json.loads(bench.read_text())
            lines += ["", "## Throughput", ""]
            lines += tables.markdown(["backend", "mode", "batch", "precision", "compile", "images/s", "TFLOP/s",
                                      "of datasheet peak", "of measured bf16 peak", "timing check (harness/loop)"],
                                     bench_rows(bdoc, peak))
        except (OSError, json.JSONDecodeError, KeyError):
            lines.append("(bench-gpu.json could not be read)")
    lines += ["", "## Steps", ""]
    lines += tables.markdown(["step", "status", "seconds", "note"],
                             [[st["name"], st["status"], "" if st["seconds"] is None else f"{st['seconds']:.0f}",
                               st["reason"][:160].replace("|", "/").replace("\n", " ")] for st in doc["steps"]])
    skipped = [st["name"] for st in doc["steps"] if st["status"] == "skipped"]
    if skipped:
        lines += ["", f"Not run ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def _finish(s: Session) -> None:
    cfg = s.cfg
    benches = sorted((cfg.work / "bench").glob("*.json"))
    doc = merge_bench(benches)
    if doc:
        try:
            report.write(doc, cfg.work / "bench-gpu.json")
            atomic_write_bytes(cfg.out / "bench-gpu.md", (cfg.work / "bench-gpu.md").read_bytes())
        except (OSError, KeyError, ValueError) as e:
            s.note(f"the merged benchmark report failed: {type(e).__name__}: {e}")
    if (cfg.work / "matrix-gpu.md").is_file():
        atomic_write_bytes(cfg.out / "matrix-gpu.md", (cfg.work / "matrix-gpu.md").read_bytes())
    with s.lock:
        for st in s.steps:
            if st.status in ("planned", "running"):
                st.status, st.reason = "skipped", st.reason or "not reached within the budget"

    s.log(f"done in {s.elapsed():.0f} s; results under {cfg.out}")
    s.publish()


# --- collect (here, after the run) --------------------------------------------------------------------
def collect(out: Path) -> list[Path]:
    """Unpack a run's results.tar.gz and put the matrix into records/ and the benchmark into benchmarks/results/."""
    archive = Path(out) / "results.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: no results.tar.gz there")
    placed = []
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes | None:
            f = tar.extractfile(members[name]) if name in members else None
            return f.read() if f else None

        for name, dest in (("matrix-gpu.md", ROOT / "records" / "matrix-gpu.md"),
                           ("matrix-gpu.json", ROOT / "records" / "matrix-gpu.json")):
            payload = read(name)
            if payload:
                placed.append(atomic_write_bytes(dest, payload))
        payload = read("bench-gpu.json")
        if payload:
            doc = json.loads(payload)
            stamp = datetime.fromisoformat(doc["created"]).strftime("%Y%m%d-%H%M%S")
            name = re.sub(r"[^a-z0-9]+", "-", (doc["device"].get("name") or doc["device"]["kind"]).lower()).strip("-")
            placed += report.write(doc, ROOT / "benchmarks" / "results" / f"{name}-{stamp}.json")
    summary_md = Path(out) / "summary.md"
    if summary_md.is_file():
        placed.append(atomic_write_bytes(ROOT / "records" / "gpu-session.md", summary_md.read_bytes()))
    return placed


# --- command line -----------------------------------------------------------------------------
def _config(args) -> Config:
    out = Path(args.out).resolve()
    work = Path(args.work or (ROOT / "runs" / ("gpu-dry-run-work" if args.dry_run else "gpu-session-work"))).resolve()
    kw = {k: v for k, v in {
        "budget": args.budget, "wheelhouse": Path(args.wheelhouse).resolve(), "python": args.python,
        "train_args": args.train_args, "skip": tuple(args.skip or ()), "train_seconds": args.train_seconds,
        "backends": tuple(args.backends) if args.backends else None,
        "variants": tuple(args.variants) if args.variants else None,
        "precisions": tuple(args.precisions) if args.precisions else None}.items() if v is not None}
    cfg = dry_run_config(out, work, **kw) if args.dry_run else Config(out=out, work=work, **kw)
    if args.bench_groups is not None:
        bad = [i for i in args.bench_groups if not 0 <= i < len(cfg.bench_groups)]
        if bad:
            raise SystemExit(f"--bench-groups: {bad[0]} is not a group number (0 to {len(cfg.bench_groups) - 1}; "
                             "`plan` lists them as the steps' first two digits)")
        cfg.bench_groups = tuple(cfg.bench_groups[i] for i in args.bench_groups)
        cfg.bench_numbers = tuple(args.bench_groups)
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "plan"):
        q = sub.add_parser(name, help="run the session" if name == "run" else "print its steps, run nothing")
        q.add_argument("--out", default=str(ROOT / "runs" / "gpu-session"), help="where the results go (the six files)")
        q.add_argument("--work", help="where records, logs and caches go (default runs/gpu-session-work)")
        q.add_argument("--budget", type=float, help="seconds of work, setup to report (default 480; dry run 300)")
        q.add_argument("--dry-run", action="store_true", help="on the CPU, with a tiny network: tests the logic")
        q.add_argument("--backends", nargs="+", choices=sorted(backends.BACKENDS), metavar="NAME",
                       help=f"default: {' '.join(BACKENDS)}")
        q.add_argument("--variants", nargs="+", metavar="VARIANT", help=f"conformance variants (default: "
                                                                         f"{' '.join(VARIANTS)})")
        q.add_argument("--precisions", nargs="+", choices=("fp32", "fast", "fp64"),
                       help="conformance precisions (default: fp32 fast)")
        q.add_argument("--wheelhouse", default=str(ROOT / ".whl"), help="the offline bundle (default .whl/)")
        q.add_argument("--python", default=sys.executable, help="the interpreter of every backend (default: this one)")
        q.add_argument("--train-args", help="arguments for `nin train`, as one string")
        q.add_argument("--train-seconds", type=float, help="seconds kept for `nin train` at the end (default 0: it "
                                                            "runs only if the benchmarks leave time)")
        q.add_argument("--bench-groups", type=int, nargs="+", metavar="N",
                       help="only these setting groups of the benchmarks, by number (`plan` shows them as each bench "
                            "step's first two digits; default: all, most wanted first)")
        q.add_argument("--skip", nargs="+", choices=("install", "conformance", "bench", "train"), default=[])
    c = sub.add_parser("collect", help="put a finished run's results into records/ and benchmarks/results/")
    c.add_argument("out", help="the run's output folder (holding results.tar.gz)")
    args = p.parse_args(argv)
    if args.command == "collect":
        try:
            for path in collect(Path(args.out)):
                print(path)
        except (OSError, KeyError, ValueError, tarfile.TarError) as e:
            print(f"gpu_session collect: {e}", file=sys.stderr)
            return 2
        return 0
    cfg = _config(args)
    if args.command == "plan":
        steps = plan(cfg)
        for phase, items in steps.items():
            flat = [st for lane in items.values() for st in lane] if isinstance(items, dict) else items
            print(f"{phase}:")
            for st in flat:
                print(f"  {st.name}: {shlex.join(st.cmd)}")
        return 0
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
