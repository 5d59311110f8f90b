"""The session in the order of value, each phase under the one deadline (docs/gpu.md, section 4).

    setup      the bundle's wheels installed where missing; NIN_DATA_DIR and NIN_CACHE_DIR set
    headline   the device's measured matmul peak (the first backend's probe), then training, bf16,
               compiled, batch 256 for each backend: one number each, and its share of that peak
    records    fp32 then fast records, one lane per backend, at once; beside them the float64 reference
               of each variant and the other probes (CPU); then `nin compare` in the background
    grid       the rest of the benchmark grid, group by group, until the training's share begins
    train      `nin train` toward 90 % for the frameworks' own backends (plan.OWN) at once, a checkpoint
               every epoch; a run carried in the bundle is resumed
A step that will not fit in the time left is skipped and says so; OUT is rewritten after every step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from concurrent.futures import Future, wait
from pathlib import Path

from common.fsio import atomic_write_text

from . import plan, report
from .plan import Config, Step
from .session import Session, read_json


def setup(s: Session) -> None:
    """nvidia-smi, the wheels the interpreter lacks, and where the data and the caches are."""
    cfg = s.cfg
    if shutil.which("nvidia-smi"):
        smi = s.run_step(Step("nvidia-smi", "setup", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                                      "clocks.max.sm,power.limit", "--format=csv,noheader"],
                              timeout=30))
        s.facts["gpu"] = s.tail(smi, 1)
    elif cfg.device == "gpu":
        s.note("nvidia-smi is not on PATH")
    if any(Path(cfg.wheelhouse).glob("*.whl")):
        site = cfg.work / "site"
        step = s.run_step(Step("install the bundle's wheels", "setup", [
            cfg.python, "-m", "gpu.bundle", "install", "--dest", str(cfg.wheelhouse), "--target", str(site)],
            timeout=180))
        if step.status == "ok":
            s.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), s.env.get("PYTHONPATH")]))
    else:
        s.note(f"no wheels in {cfg.wheelhouse} (`make gpu-bundle`): the Keras backends need keras installed already")
    data = Path(cfg.wheelhouse) / "fashion-mnist"
    if data.is_dir():
        s.env["NIN_DATA_DIR"] = str(data.resolve())
    else:
        s.note(f"no {data}: records and training read Fashion-MNIST from where common.data finds it")
    s.env["NIN_CACHE_DIR"] = str((cfg.work / "cache").resolve())
    s.env["PYTHONUNBUFFERED"] = "1"
    for b in cfg.backends:  # one interpreter for all: the machine's own, holding PyTorch and JAX
        s.env.setdefault(f"NIN_PYTHON_{b.upper().replace('-', '_')}", cfg.python)
    s.facts["environment"] = {k: s.env[k] for k in ("NIN_DATA_DIR", "NIN_CACHE_DIR", "PYTHONPATH") if k in s.env}


def learn(cfg: Config, step: Step) -> None:
    """A finished benchmark's seconds per configuration replace the guess for its backend and compile mode."""
    if step.status == "ok" and step.seconds and step.meta.get("configs"):
        cfg.estimates[step.meta["key"]] = step.seconds / step.meta["configs"]


def headline(s: Session) -> list[str]:
    """The peak, then one headline number per backend; returns the backends that are installed here."""
    cfg = s.cfg
    peak = s.run_step(plan.peak_step(cfg))
    probe = s.last_json(peak) or {"status": "error", "reason": peak.reason or s.tail(peak, 3)}
    keep_probe(s, plan.peak_backend(cfg), probe)
    s.facts["peak_tflops"] = (probe.get("measured") or {}).get("bf16_matmul_tflops")
    runnable = []
    for step in s.add(plan.headline_steps(cfg)):
        left = min(plan.HEADLINE_LIMIT, s.remaining() - cfg.reserve - 10)
        step.cmd += ["--timeout", str(int(max(30.0, left)))]  # it stops its worker before the step's limit
        s.run_step(step)
        learn(cfg, step)
        result = next(iter((read_json(Path(step.meta["result"])) or {}).get("results") or []), None)
        s.facts["headline"][step.meta["backend"]] = report.headline_entry(result, step, s.facts["peak_tflops"])
        if result and result["status"] == "skipped" and "not installed" in result.get("reason", ""):
            s.facts["left_out"][step.meta["backend"]] = result["reason"]
            s.note(f"{step.meta['backend']} is left out: {result['reason']}")
        else:
            runnable.append(step.meta["backend"])
        s.publish()
    return runnable


def keep_probe(s: Session, backend: str, result: dict) -> None:
    atomic_write_text(s.cfg.work / "probes" / f"{backend}.json", json.dumps(result, indent=2) + "\n")
    with s.lock:
        s.facts["probes"][backend] = result
    for problem in result.get("problems") or []:
        s.note(f"{backend}: {problem}")


def records(s: Session, names: list[str]) -> Future | None:
    """The lanes of records, the references and the other probes at once; then the compare, in the
    background (it runs on the CPU beside the grid and the training). Returns the compare's future."""
    cfg = s.cfg
    lanes = plan.record_lanes(cfg, names)
    probes = plan.probe_steps(cfg, [b for b in names if b != plan.peak_backend(cfg)])
    s.add([st for lane in lanes.values() for st in lane] + probes)
    references = [s.submit(lambda st=st: s.run_step(st)) for st in s.add(plan.reference_steps(cfg))]

    def run(job) -> None:
        for step in job:
            s.run_step(step)
            if step.phase == "probe":
                keep_probe(s, step.meta["backend"], s.last_json(step) or {"status": "error", "reason": step.reason})

    s.map(run, list(lanes.values()) + [[st] for st in probes])
    made = [st.meta["record"] for lane in lanes.values() for st in lane
            if st.status == "ok" and Path(st.meta["record"]).is_file()]
    if not made:
        s.note("no record was made: nothing to compare")
        return None
    compare = s.add([plan.compare_step(cfg, made)])[0]

    def compare_when_ready() -> Step:
        wait(references)  # else the compare computes each missing reference itself, one after another
        return s.run_step(compare)

    return s.submit(compare_when_ready)


def grid(s: Session, names: list[str]) -> None:
    """The remaining groups in order, each skipped when its estimate does not fit before the training's share."""
    cfg = s.cfg
    kept = cfg.train_seconds if "train" in cfg.phases else 0.0
    until = s.deadline - cfg.reserve - kept
    share = f" before the {kept:.0f} s kept for training (--train-seconds)" if kept else ""
    for step in s.add(plan.grid_steps(cfg, names)):
        key, configs = step.meta["key"], step.meta["configs"]
        step.estimate = cfg.estimates.get(key, 0) * configs
        step.cmd += ["--timeout", str(int(max(60.0, until - s.clock())))]
        s.run_step(step, until=until, share=share)
        learn(cfg, step)


def train(s: Session) -> None:
    """The frameworks' own backends (plan.OWN) at once, for the time left; a run carried in the bundle is resumed."""
    cfg = s.cfg
    seconds = max(s.remaining() - cfg.reserve - 30, 1.0)  # the step's own limit adds 30 s: `nin train` stops first
    carrying = (Path(cfg.wheelhouse) / "train").is_dir()  # the bundle holds runs: only those go on
    steps = []
    for b in cfg.train_backends:
        carried = plan.carried_run(cfg, b)
        resume = (carried / "metrics.jsonl").is_file()
        if resume:
            shutil.copytree(carried, plan.train_dir(cfg, b), dirs_exist_ok=True)
        step = s.add([plan.train_step(cfg, b, seconds=seconds, resume=resume)])[0]
        if b in s.facts["left_out"]:
            s.skip(step, f"not installed here: {s.facts['left_out'][b]}")
        elif carrying and not resume:
            s.skip(step, "its run was not carried: the bundle resumes other runs first, and a new run would "
                         "replace the one collected (make gpu-bundle says which it left out)")
        else:
            steps.append(step)
    s.map(s.run_step, steps)
    for step in steps:
        if step.rc == 124:
            step.reason = "stopped by its --timeout; the last finished epoch's checkpoint is kept (--resume)"
        s.facts["train"][step.meta["backend"]] = report.train_entry(Path(step.meta["run"]), step)


def prepare(cfg: Config) -> None:
    """A former session's results in the work folder would mix with this one's: remove them (the cache of
    references stays: it is the same for every run of the same code)."""
    for sub in ("records", "bench", "logs", "probes", "train"):
        shutil.rmtree(cfg.work / sub, ignore_errors=True)
        (cfg.work / sub).mkdir(parents=True)
    for path in cfg.work.glob("*-gpu.*"):
        path.unlink()
    if cfg.dry_run:
        atomic_write_text(cfg.work / "tiny.json", json.dumps(plan.TINY_SPEC, indent=2) + "\n")


def run(cfg: Config, *, session: Session | None = None) -> int:
    """The whole session; 0 when every step that ran succeeded, else 1."""
    prepare(cfg)
    s = session or Session(cfg)
    s.log(f"gpu session: device {cfg.device}, budget {cfg.budget:.0f} s, phases {' '.join(cfg.phases)}, "
          f"out {cfg.out}")
    if session is None and threading.current_thread() is threading.main_thread():
        def terminated(signum, frame):  # `timeout` or a user's kill: stop the steps, write the report
            s.stop_all()
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, terminated)
    try:
        phases(s)
    except KeyboardInterrupt as e:
        s.note(f"stopped from outside ({e or 'interrupt'}): the report holds what was done")
        return 130
    finally:
        s.stop_all()
        report.finish(s)
    return 1 if any(st.status in ("failed", "timeout") for st in s.steps) else 0


def phases(s: Session) -> None:
    cfg = s.cfg
    setup(s)
    names = headline(s) if "headline" in cfg.phases else list(cfg.backends)
    compare = records(s, names) if "records" in cfg.phases else None
    if "grid" in cfg.phases:
        grid(s, names)
    if "train" in cfg.phases:
        train(s)
    if compare is not None:
        wait([compare], timeout=max(s.remaining() - cfg.reserve, 1))
