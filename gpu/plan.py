"""What the GPU session runs, in the order of value, as data: the configuration and each step's command.

The order (docs/gpu.md, section 4): the headline (training, bf16, compiled, batch 256: one number per
backend, beside the device's measured matmul peak); the conformance records, fp32 and fast, of every
backend, compared there against the float64 reference; the rest of the benchmark grid; training
toward 90 % for the frameworks' own backends (OWN), resumable. Every step is a `nin` command (or a
module of this repository) in a process of its own; nothing here runs anything. The backends are the
registry's (common/backends.py), chosen by the modules they require.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import backends

ROOT = backends.ROOT
# A CUDA machine of the session has PyTorch, JAX, Flax and optax (CUDA builds), and the bundle brings Keras
# (requirements/offline-gpu.txt): a registered backend runs there when it requires nothing else.
MACHINE = ("torch", "jax", "flax", "optax")
BUNDLED = ("keras",)
BACKENDS = tuple(n for n, b in backends.BACKENDS.items() if set(b.requires) <= {*MACHINE, *BUNDLED})
# Those that are their framework's own package, with no Keras between: trained toward 90 % at the end, and
# the headline group timed again in one plain loop (benchmarks.verify_timing)
OWN = tuple(n for n in BACKENDS if set(backends.get(n).requires) <= set(MACHINE))
VARIANTS = ("d2l", "paper", "d2l-bn")  # the conformance variants: their `fast` spreads travel in the store
PRECISIONS = ("fp32", "fast")
PHASES = ("headline", "records", "grid", "train")
HEADLINE = ("train", "bf16", "compiled", 256)  # mode, precision, compile, batch: the roof
# The rest of the grid, most wanted first: (mode, precision, compile, batch sizes, verify). The first
# group times the headline again beside an independent plain loop (the harness's clock checked).
GRID = (
    ("train", "bf16", "compiled", (256,), True),
    ("train", "bf16", "eager", (256,), False),
    ("train", "fp32", "compiled", (256,), False),
    ("train", "fp32", "eager", (256,), False),
    ("infer", "bf16", "compiled", (256,), False),
    ("infer", "fp32", "compiled", (256,), False),
    ("train", "fp32", "plain", (256,), False),  # the chapter's own code, the yardstick
    ("infer", "bf16", "eager", (256,), False),
    ("infer", "fp32", "eager", (256,), False),
    ("train", "bf16", "compiled", (64, 512), False),
    ("infer", "bf16", "compiled", (64, 512), False),
    ("train", "bf16", "eager", (64, 512), False),
    ("train", "fp32", "compiled", (64, 512), False),
    ("infer", "bf16", "eager", (64, 512), False),
    ("infer", "fp32", "compiled", (64, 512), False),
    ("train", "fp32", "eager", (64, 512), False),
    ("infer", "fp32", "eager", (64, 512), False),
)
# Seconds per benchmark configuration on an H100/H200 (process start, compilation, warm-up, timing), by the
# modules a backend requires and the compile mode: first guesses. A step whose estimate does not fit is
# skipped; each measurement replaces its guess (bench_key).
BENCH_ESTIMATE = {(("torch",), "eager"): 15, (("torch",), "compiled"): 60,
                  (("jax", "flax", "optax"), "eager"): 25, (("jax", "flax", "optax"), "compiled"): 20,
                  (("keras", "jax"), "eager"): 30, (("keras", "jax"), "compiled"): 25,
                  (("keras", "torch"), "eager"): 25, (("keras", "torch"), "compiled"): 80}
HEADLINE_LIMIT = 180  # seconds for one backend's headline: a compiler that takes longer must not starve the rest
PEAK_ESTIMATE = 30  # the first probe: import, API checks, three 8192^3 matmul rates (PyTorch's)
RECORD_ESTIMATE = 45  # one record of the three variants on the GPU (process start included)
TRAIN_MINIMUM = 60  # training starts only with at least this much time: one epoch and its start-up
# Training: the tuned recipe (training/recipe.py), each framework on its fast path for a short run, by the
# module it requires: PyTorch eager (no compilation to wait for); the others compiled (Flax op by op crawls).
TRAIN_EAGER = ("torch",)
TINY_SPEC = {  # the dry run's network: both block kinds, pooling, dropout; a reference in a second
    "name": "tiny", "input_shape": [1, 12, 12], "num_classes": 10, "init": "xavier_uniform",
    "layers": [{"type": "nin_block", "out_channels": 6, "kernel_size": 3, "stride": 1, "padding": 1, "mlp": [6]},
               {"type": "max_pool", "kernel_size": 3, "stride": 2, "padding": 0},
               {"type": "dropout", "rate": 0.5},
               {"type": "nin_block", "out_channels": 10, "kernel_size": 3, "stride": 1, "padding": 1, "mlp": [10]},
               {"type": "global_avg_pool"}, {"type": "flatten"}]}


@dataclass
class Config:
    """One session: where it writes, its budget, what it runs. The defaults are the GPU session's."""
    out: Path
    work: Path
    budget: float = 520.0  # seconds of work, setup to report: ends inside a 10-minute command
    device: str = "gpu"
    backends: tuple[str, ...] = BACKENDS
    variants: tuple[str, ...] = VARIANTS
    precisions: tuple[str, ...] = PRECISIONS
    bench_variant: str = "d2l"
    headline: tuple = HEADLINE
    grid: tuple = GRID
    warmup: int = 5
    windows: int = 5
    steps: int = 10
    wheelhouse: Path = ROOT / ".whl"
    python: str = sys.executable
    train_backends: tuple[str, ...] = OWN
    train_variant: str = "d2l"
    train_extra: str = ""  # more `nin train` flags (the dry run's small data)
    train_seconds: float = 150.0  # kept for training at the end: the grid stops before it
    record_timeout: float = 240.0
    reserve: float = 15.0  # kept for the report at the end
    dry_run: bool = False
    phases: tuple[str, ...] = PHASES
    serial: bool = False  # run parallel steps one after another (tests with an injected clock)
    estimates: dict = field(default_factory=lambda: dict(BENCH_ESTIMATE))


def dry_run_config(out: Path, work: Path, **kw) -> Config:
    """The whole order on the CPU, small enough for a test: a tiny network, batch 2, eager, one window."""
    tiny = str(work / "tiny.json")
    defaults = dict(budget=900.0, device="cpu", variants=(tiny,), bench_variant=tiny, train_variant=tiny,
                    headline=("train", "fp32", "eager", 2),
                    grid=(("infer", "bf16", "eager", (2,), True), ("train", "bf16", "eager", (2, 4), False)),
                    warmup=1, windows=2, steps=1, record_timeout=300.0, train_seconds=120.0, reserve=10.0,
                    dry_run=True, estimates={}, train_extra="--epochs 2 --train-limit 64 --test-limit 64 "
                                                            "--resize 12 --batch-size 32")
    defaults.update(kw)
    return Config(out=out, work=work, **defaults)


@dataclass(eq=False)  # steps are compared by identity
class Step:
    """One process of the session, and what became of it."""
    name: str
    phase: str  # setup, peak, headline, probe, reference, record, compare, grid, train
    cmd: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    background: bool = False  # CPU work beside the GPU's: niced
    ok_codes: tuple[int, ...] = (0,)
    estimate: float = 0.0  # seconds it is expected to need: skipped when less is left
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


def nin(cfg: Config, *args: str) -> list[str]:
    return [cfg.python, "-m", "nin.cli", *args]


def cpu_env(threads: int = 2) -> dict[str, str]:
    """A CPU-only process that leaves the GPU and most cores alone."""
    n = str(threads)
    return {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"}


def peak_step(cfg: Config) -> Step:
    """The first backend's probe: versions, the APIs the suite uses, and the device's measured matmul peak."""
    b = peak_backend(cfg)
    return Step(f"peak (probe {b})", "peak", [cfg.python, "-m", "benchmarks.probe", "--backend", b,
                                              "--device", cfg.device],
                timeout=120, estimate=PEAK_ESTIMATE, meta={"backend": b, "result": f"probes/{b}.json"})


def probe_steps(cfg: Config, names: list[str]) -> list[Step]:
    return [Step(f"probe {b}", "probe", [cfg.python, "-m", "benchmarks.probe", "--backend", b, "--device", cfg.device],
                 timeout=120, meta={"backend": b, "result": f"probes/{b}.json"}) for b in names]


def bench_step(cfg: Config, name: str, *, backend: str, group: tuple, phase: str) -> Step:
    """`nin bench` of one backend and setting group (mode, precision, compile, batch sizes, verify)."""
    mode, precision, compile, sizes, verify = group
    out = cfg.work / "bench" / f"{name}.json"
    cmd = nin(cfg, "bench", "--backend", backend, "--variant", cfg.bench_variant, "--mode", mode, "--precision",
              precision, "--compile", compile, "--batch-size", *map(str, sizes), "--device", cfg.device,
              "--warmup", str(cfg.warmup), "--windows", str(cfg.windows), "--steps", str(cfg.steps),
              "--out", str(out)) + (["--verify"] if verify else [])
    key = bench_key(backend, compile)
    estimate = cfg.estimates.get(key, 0) * len(sizes) * (2 if verify else 1)
    return Step(f"{phase} {name}", phase, cmd, timeout=cfg.budget, ok_codes=(0, 1), estimate=estimate,
                meta={"backend": backend, "key": key, "configs": len(sizes) * (2 if verify else 1),
                      "result": str(out)})


def headline_steps(cfg: Config) -> list[Step]:
    mode, precision, compile, batch = cfg.headline
    steps = [bench_step(cfg, f"{b}-{mode}-{precision}-{compile}-{batch}", backend=b, phase="headline",
                        group=(mode, precision, compile, (batch,), False)) for b in cfg.backends]
    for step in steps:
        step.timeout = HEADLINE_LIMIT + 20  # `nin bench --timeout` (order.headline) stops its worker first
    return steps


def grid_steps(cfg: Config, names: list[str]) -> list[Step]:
    """One step per (setting group, backend), groups in order of value, backends in turn within each;
    a backend without the group's compile mode is left out."""
    steps = []
    for i, group in enumerate(cfg.grid):
        mode, precision, compile, sizes, verify = group
        for b in names:
            offered = backends.get(b).compile_modes + ("plain",)
            if compile not in offered or (verify and b not in OWN):
                continue
            name = f"{i:02d}-{b}-{mode}-{precision}-{compile}-{'-'.join(map(str, sizes))}" + ("-verify" if verify
                                                                                             else "")
            steps.append(bench_step(cfg, name, backend=b, group=group, phase="grid"))
    return steps


def record_path(cfg: Config, backend: str, precision: str) -> Path:
    return cfg.work / "records" / f"{backend}-{cfg.device}-{precision}-eager.safetensors"


def record_lanes(cfg: Config, names: list[str]) -> dict[str, list[Step]]:
    """One lane of records per backend, fp32 (strict) then fast; the lanes run at once on the GPU."""
    lanes = {}
    for b in names:
        lanes[b] = [Step(f"record {b} {cfg.device} {p}", "record",
                         nin(cfg, "record", "--backend", b, "--device", cfg.device, "--precision", p,
                             "--variant", *cfg.variants, "--out", str(record_path(cfg, b, p)),
                             "--timeout", str(int(cfg.record_timeout))),
                         timeout=cfg.record_timeout + 15, estimate=0 if cfg.dry_run else RECORD_ESTIMATE,
                         meta={"record": str(record_path(cfg, b, p)), "backend": b, "precision": p})
                  for p in cfg.precisions]
    return lanes


def reference_steps(cfg: Config) -> list[Step]:
    """The float64 reference of each variant, on the CPU: `nin error-model` computes it (and reads the
    spreads of every precision from conformance/error_model.json, where `make gpu-bundle` put `fast`'s)."""
    return [Step(f"reference {Path(v).stem}", "reference",
                 nin(cfg, "error-model", "--variant", v, "--precision", *cfg.precisions), timeout=cfg.budget,
                 env=cpu_env(), background=True, meta={"variant": v}) for v in cfg.variants]


def compare_step(cfg: Config, records: list[str]) -> Step:
    return Step("compare", "compare", nin(cfg, "compare", *records, "--report", str(cfg.work / "matrix-gpu.md"),
                                          "--json-out", str(cfg.work / "matrix-gpu.json")),
                timeout=cfg.budget, env=cpu_env(4), background=True, ok_codes=(0, 1), meta={"records": records})


def train_dir(cfg: Config, backend: str) -> Path:
    """Where a training run lives: the layout of `nin sweep` (variant / backend / seed)."""
    return cfg.work / "train" / Path(cfg.train_variant).stem / backend / "seed0"


def bench_key(backend: str, compile: str) -> tuple:
    """What a benchmark step's time is estimated and learned by: the modules the backend requires, and its
    compile mode (the plain step compiles as `compiled` does)."""
    return backends.get(backend).requires, "compiled" if compile == "plain" else compile


def carried_run(cfg: Config, backend: str) -> Path:
    """A run to resume, carried in the bundle by `make gpu-bundle` (gpu.bundle.add_runs)."""
    return Path(cfg.wheelhouse) / "train" / backend


def train_compile(backend: str) -> str:
    """The compile mode of a backend's training run: eager where it requires a TRAIN_EAGER module."""
    return "eager" if set(backends.get(backend).requires) & set(TRAIN_EAGER) else "compiled"


def peak_backend(cfg: Config) -> str:
    """The backend probed first, whose bench.matmul_peak measures the device's matmul rate: the first."""
    return cfg.backends[0]


def train_step(cfg: Config, backend: str, *, seconds: float, resume: bool) -> Step:
    """`nin train` of the tuned recipe for at most `seconds` (its --timeout stops it; the checkpoint of
    every finished epoch stays), or --resume of a carried run with its own settings."""
    out = train_dir(cfg, backend)
    if resume:
        args = ["--backend", backend, "--out", str(out), "--resume"]
    else:
        args = ["--backend", backend, "--variant", cfg.train_variant, "--recipe", "tuned", "--device", cfg.device,
                "--precision", "fast", "--compile", train_compile(backend), "--seed", "0",
                "--out", str(out), *shlex.split(cfg.train_extra)]
    return Step(f"train {backend}", "train", nin(cfg, "train", *args, "--quiet", "--timeout", str(int(seconds))),
                timeout=seconds + 30, ok_codes=(0, 124), estimate=0 if cfg.dry_run else TRAIN_MINIMUM,
                meta={"backend": backend, "run": str(out), "resume": resume})


def plan(cfg: Config) -> dict[str, list[Step]]:
    """Every step the run would take, in order, before the headline narrows the backends down."""
    names = list(cfg.backends)
    return {"headline": [peak_step(cfg), *headline_steps(cfg)],
            "records": [*probe_steps(cfg, [b for b in names if b != peak_backend(cfg)]), *reference_steps(cfg),
                        *[s for lane in record_lanes(cfg, names).values() for s in lane], compare_step(cfg, [])],
            "grid": grid_steps(cfg, names),
            "train": [train_step(cfg, b, seconds=cfg.train_seconds, resume=carried_run(cfg, b).is_dir())
                      for b in cfg.train_backends]}
