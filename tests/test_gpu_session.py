"""The GPU session (gpu/) and its bundle, without a GPU and without network.

The plan against the order of value; the step runner with real subprocesses (a failure, a time-out that
must stop a worker's worker too, the budget); the whole order driven by an injected clock with no
process at all (the deadline logic, every skip message, the files in OUT and their limits); the report
and `collect`; the timing loop's synchronisation; and the whole dry run on the CPU from a bundle made
here. No test depends on the machine's speed: the clock is fake, or the budgets are far beyond what any
machine takes. The bundle's parts and its wheels: tests/test_gpu_bundle.py.
"""

import base64
import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import HANG_S

from benchmarks import timing
from common import data
from gpu import bundle, order, plan, report, wheels
from gpu.session import Session
from training import recipe, runs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.main_env  # nothing here depends on the environment: run once, in the main one


def _cfg(tmp_path, **kw):
    return plan.Config(out=tmp_path / "out", work=tmp_path / "work", wheelhouse=tmp_path / "whl", **kw)


def _opt(cmd, flag):
    return cmd[cmd.index(flag) + 1]


# --- the plan ------------------------------------------------------------------------------------------
def test_the_plan_puts_the_headline_first_then_records_grid_and_training(tmp_path):
    steps = plan.plan(_cfg(tmp_path))
    assert list(steps) == ["headline", "records", "grid", "train"]
    peak, *head = steps["headline"]
    assert peak.cmd[2:] == ["benchmarks.probe", "--backend", "torch", "--device", "gpu"]  # the measured peak
    assert [_opt(s.cmd, "--backend") for s in head] == ["torch", "jax", "keras-jax", "keras-torch"]
    for s in head:  # the roof: training, bf16, compiled, batch 256, one number per backend
        assert [_opt(s.cmd, f) for f in ("--mode", "--precision", "--compile", "--batch-size", "--device")] == \
            ["train", "bf16", "compiled", "256", "gpu"]
    records = [s for s in steps["records"] if s.phase == "record"]
    assert [(_opt(s.cmd, "--backend"), _opt(s.cmd, "--precision")) for s in records] == \
        [(b, p) for b in ("torch", "jax", "keras-jax", "keras-torch") for p in ("fp32", "fast")]
    assert all(s.cmd[s.cmd.index("--variant") + 1:s.cmd.index("--out")] == ["d2l", "paper", "d2l-bn"] for s in records)
    references = [s for s in steps["records"] if s.phase == "reference"]
    assert [_opt(s.cmd, "--variant") for s in references] == ["d2l", "paper", "d2l-bn"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" and s.background for s in references)  # the CPU's work
    train = steps["train"]
    assert [(_opt(s.cmd, "--backend"), _opt(s.cmd, "--compile")) for s in train] == [("torch", "eager"),
                                                                                     ("jax", "compiled")]
    for s in train:
        assert [_opt(s.cmd, f) for f in ("--variant", "--recipe", "--device", "--precision")] == \
            ["d2l", "tuned", "gpu", "fast"]
        assert "--resize" not in s.cmd and "--epochs" not in s.cmd  # the recipe's 224x224 and 20 epochs
        assert float(_opt(s.cmd, "--timeout")) < s.timeout  # `nin train` stops itself, keeping its checkpoint


def test_the_grid_covers_the_sweep_and_checks_the_headline_s_clock(tmp_path):
    steps = plan.plan(_cfg(tmp_path))["grid"]
    headline = plan.plan(_cfg(tmp_path))["headline"][1:]
    verified = [s for s in steps if "--verify" in s.cmd]
    assert {_opt(s.cmd, "--backend") for s in verified} == {"torch", "jax"} and steps[:2] == verified
    assert all(_opt(s.cmd, "--batch-size") == "256" and _opt(s.cmd, "--precision") == "bf16" for s in verified)
    covered = {(_opt(s.cmd, "--backend"), _opt(s.cmd, "--mode"), _opt(s.cmd, "--precision"), _opt(s.cmd, "--compile"),
                int(n)) for s in headline + steps for n in s.cmd[s.cmd.index("--batch-size") + 1:s.cmd.index("--device")]}
    wanted = {(b, m, p, c, n) for b in plan.BACKENDS for m in ("train", "infer") for p in ("fp32", "bf16")
              for c in ("eager", "compiled") for n in (64, 256, 512)}
    assert wanted <= covered
    assert len({s.name for s in steps}) == len(steps)


def test_the_dry_run_is_the_cpu_with_a_tiny_network(tmp_path):
    cfg = plan.dry_run_config(tmp_path / "out", tmp_path / "work")
    steps = [s for phase in plan.plan(cfg).values() for s in phase]
    assert cfg.variants == (str(tmp_path / "work" / "tiny.json"),)
    assert all(_opt(s.cmd, "--device") == "cpu" for s in steps if "--device" in s.cmd)
    assert all(_opt(s.cmd, "--variant") == cfg.variants[0] for s in steps if "--variant" in s.cmd)


def test_a_carried_run_is_resumed_with_its_own_settings(tmp_path):
    cfg = _cfg(tmp_path)
    step = plan.train_step(cfg, "torch", seconds=100, resume=True)
    assert "--resume" in step.cmd and "--recipe" not in step.cmd and "--variant" not in step.cmd
    assert _opt(step.cmd, "--out") == str(plan.train_dir(cfg, "torch"))
    assert plan.carried_run(cfg, "jax") == tmp_path / "whl" / "train" / "jax"


# --- running steps for real ------------------------------------------------------------------------------
def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone but for its parent's wait
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_a_failure_and_a_time_out_are_recorded_and_the_session_goes_on(tmp_path):
    s = Session(_cfg(tmp_path, budget=3600, reserve=1))
    pidfile = tmp_path / "grandchild.pid"
    # The step and its worker never end by themselves (signal.pause), so the step times out whatever
    # the machine's speed; its 20 s only have to cover starting two Pythons.
    grandchild = ("import signal, subprocess, sys; "
                  "p = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()']); "
                  f"open({str(pidfile)!r}, 'w').write(str(p.pid)); signal.pause()")
    failed = s.run_step(plan.Step("fails", "grid", _py("import sys; print('boom'); sys.exit(3)"), timeout=600))
    slow = s.run_step(plan.Step("hangs", "record", _py(grandchild), timeout=20))
    fine = s.run_step(plan.Step("works", "grid", _py("print('{\"ok\": 1}')"), timeout=600))
    assert (failed.status, failed.rc) == ("failed", 3) and "boom" in failed.reason
    assert slow.status == "timeout"
    pid = int(pidfile.read_text())
    while _alive(pid):  # the step's own worker is stopped with it (a hang here is the failure)
        time.sleep(0.1)
    assert fine.status == "ok" and s.last_json(fine) == {"ok": 1}
    doc = json.loads((tmp_path / "out" / "session.json").read_text())
    assert [(st["name"], st["status"]) for st in doc["steps"]] == [("fails", "failed"), ("hangs", "timeout"),
                                                                   ("works", "ok")]
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/fails.log", "logs/hangs.log", "logs/works.log", "session.log"} <= names


# --- the whole order, driven by an injected clock ------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _bench_doc(backend: str, ips: float, *, status="ok", reason="") -> dict:
    result = {"backend": backend, "variant": "d2l", "mode": "train", "batch_size": 256, "precision": "bf16",
              "compile": "compiled", "device": "gpu", "status": status, "images_per_second": ips, "spread": 0.01,
              "first_step_seconds": 9.0, "peak_memory_bytes": 2 ** 30, "predicted_memory_bytes": 2 ** 30,
              "utilization": {"achieved_tflops": ips * 4.574e9 / 1e12, "mfu": 0.3}, "reason": reason}
    return {"command": f"nin bench --backend {backend}", "created": "2026-11-26T10:00:00+00:00", "host": "h",
            "load_average": {"before": [0.5, 0, 0], "after": [1.0, 0, 0]}, "environment": {},
            "device": {"kind": "gpu", "name": "NVIDIA H200", "driver": "580", "peak": None},
            "settings": {"backends": [backend], "variant": "d2l", "modes": ["train"], "batch_sizes": [256],
                         "precisions": ["bf16"], "compile": ["compiled"], "device": "gpu", "warmup": 5,
                         "windows": 5, "steps": 10, "timeout_s": 60, "verify": False},
            "model": {"variant": "d2l", "params": 1992166, "forward_flops_per_image": 1.525e9,
                      "train_flops_per_image": 4.574e9, "forward_bytes_per_image_fp32": 1},
            "versions": {backend: {backend: "1"}}, "results": [result]}


def _fake_run(run: Path, backend: str, epochs: int) -> None:
    """A training run as `nin train` leaves it: metrics (header and epochs) and a checkpoint file."""
    s = recipe.from_recipe("tuned", backend, device="gpu", precision="fast")
    header = {"type": "header", "format": runs.METRICS_FORMAT, "backend": backend, "variant": "d2l", "device": "gpu",
              "device_name": "H200", "versions": {}, "settings": s.to_dict(), "command": "nin train",
              "created": "2026-11-26T10:00:00+00:00"}
    lines = [header] + [{"type": "epoch", "epoch": e, "step": e * 938, "lr": 0.01, "train_loss": 0.3,
                         "train_accuracy": 0.9, "test_loss": 0.3, "test_accuracy": 0.88 + e / 1000,
                         "test_zero_logits": 0.0, "images_per_second": 9000.0, "train_seconds": 7.0,
                         "wall_seconds": 8.0} for e in range(1, epochs + 1)]
    runs.write_metrics(run, lines)
    (run / runs.CHECKPOINT).write_bytes(b"weights" * 100)


def _fake(clock: Clock, seconds: dict, cfg: plan.Config):
    """execute(step, limit): takes seconds[phase] of the fake clock (a time-out past the limit) and leaves
    what the real command would: a probe's JSON, a benchmark result, a record, a matrix, a training run."""
    def execute(step, limit):
        took = seconds.get(step.phase, 1)
        clock.now += min(took, limit)
        if took > limit:
            return None
        log = cfg.work / step.log
        if step.phase in ("peak", "probe"):
            log.write_text(json.dumps({"status": "ok", "measured": {"bf16_matmul_tflops": 800.0}}) + "\n")
        elif step.phase in ("headline", "grid"):
            b = step.meta["backend"]
            doc = _bench_doc(b, 0, status="skipped", reason="keras not installed") if b == "keras-torch" else \
                _bench_doc(b, 40000.0)
            Path(step.meta["result"]).write_text(json.dumps(doc))
        elif step.phase == "record":
            Path(step.meta["record"]).write_bytes(b"record")
        elif step.phase == "compare":
            (cfg.work / "matrix-gpu.md").write_text("# Conformance matrix\n\n120 passed, 0 failed\n")
            for picture in ("matrix-gpu.png", "matrix-gpu.html"):  # the heatmap nin compare --report writes beside
                (cfg.work / picture).write_bytes(b"heatmap")
        elif step.phase == "train":
            _fake_run(Path(step.meta["run"]), step.meta["backend"], epochs=3)
        return 0
    return execute


def _ordered(tmp_path, seconds: dict, **kw) -> tuple[plan.Config, dict]:
    cfg = _cfg(tmp_path, serial=True, **kw)
    clock = Clock()
    assert order.run(cfg, session=Session(cfg, clock=clock, execute=_fake(clock, seconds, cfg))) in (0, 1)
    doc = json.loads((cfg.out / "session.json").read_text())
    return cfg, {st["name"]: st for st in doc["steps"]} | {"_doc": doc}


def test_with_time_for_everything_every_step_runs_and_out_holds_the_eight_files(tmp_path):
    cfg, steps = _ordered(tmp_path, {}, budget=100_000)
    doc = steps.pop("_doc")
    assert {st["status"] for name, st in steps.items() if "keras-torch" not in name} == {"ok"}
    assert sorted(p.name for p in cfg.out.iterdir()) == sorted(report.OUT_FILES)
    assert report.out_problems(cfg.out) == []
    head = json.loads((cfg.out / "headline.json").read_text())
    assert head["setting"] == {"mode": "train", "precision": "bf16", "compile": "compiled", "batch_size": 256}
    torch = head["backends"]["torch"]
    assert torch["images_per_second"] == 40000.0 and torch["of_measured_peak"] == pytest.approx(40000 * 4.574e-3 / 800)
    assert head["backends"]["keras-torch"]["status"] == "skipped"  # not installed: left out of all that follows
    assert not [name for name in steps if "keras-torch" in name and not name.startswith("headline")]
    summary = (cfg.out / "summary.md").read_text()
    assert summary.index("## Headline") < summary.index("## Conformance") < summary.index("## Training")
    assert "120 passed, 0 failed" in summary and "| torch | 3 of 20 | 88.3% |" in summary
    with tarfile.open(cfg.out / "train-torch.tar") as tar:
        assert sorted(tar.getnames()) == ["checkpoint.safetensors", "metrics.jsonl"]
    assert doc["peak_tflops"] == 800.0 and doc["train"]["jax"]["epochs"] == 3


def test_a_tight_budget_keeps_the_order_and_says_what_it_skipped(tmp_path):
    # 40 s setup-to-records per step kind; the grid's steps are estimated from the headline's 40 s each
    # serial: the fake clock adds up steps that run at once on the device; 217 s pass before the grid
    seconds = {"peak": 10, "headline": 30, "record": 10, "reference": 5, "probe": 1, "compare": 10, "grid": 30,
               "train": 400}
    cfg, steps = _ordered(tmp_path, seconds, budget=520, train_seconds=150, reserve=15)
    assert all(steps[f"headline {b}-train-bf16-compiled-256"]["status"] == "ok" for b in ("torch", "jax", "keras-jax"))
    assert steps["record keras-jax gpu fast"]["status"] == "ok" and steps["compare"]["status"] == "ok"
    grid = [st for name, st in steps.items() if name.startswith("grid ")]
    assert [st["status"] for st in grid[:2]] == ["ok", "ok"]  # the headline's clock checked first
    skipped = [st for st in grid if st["status"] == "skipped"]
    assert skipped and all("before the 150 s kept for training (--train-seconds)" in st["reason"] for st in skipped)
    assert any("needs about 30 s" in st["reason"] for st in skipped)  # the estimate learnt from the headline
    train = steps["train torch"]
    assert train["status"] == "timeout" and train["command"].endswith("--timeout 120")  # 165 s left, less 15 + 30
    summary = (cfg.out / "summary.md").read_text()
    assert "Not run (" in summary and "| train torch | timeout |" in summary


def test_when_nothing_is_left_for_training_it_is_skipped_with_the_reason(tmp_path):
    seconds = {"peak": 20, "headline": 100, "record": 60, "reference": 30, "compare": 20, "grid": 40}
    cfg, steps = _ordered(tmp_path, seconds, budget=520, train_seconds=0, reserve=15)
    train = steps["train torch"]
    assert train["status"] == "skipped" and train["reason"].startswith("budget: needs about 60 s")
    assert (cfg.out / "summary.md").is_file() and not (cfg.out / "train-torch.tar").exists()


def test_only_train_resumes_the_carried_run_and_starts_no_other(tmp_path):
    carried = tmp_path / "whl" / "train" / "torch"
    _fake_run(carried, "torch", epochs=2)
    cfg, steps = _ordered(tmp_path, {"train": 50}, budget=520, phases=("train",))
    assert [name for name in steps if name != "_doc"] == ["train torch", "train jax"]  # no wheels: no setup step
    assert "--resume" in steps["train torch"]["command"] and steps["train torch"]["status"] == "ok"
    # a new jax run would come back and replace the one collected here, which the bundle had no room for
    assert steps["train jax"]["status"] == "skipped" and "was not carried" in steps["train jax"]["reason"]


# --- collect and the bundle ----------------------------------------------------------------------------
def test_collect_puts_the_results_and_the_runs_where_they_belong(tmp_path):
    cfg, _ = _ordered(tmp_path, {}, budget=100_000)
    repo = tmp_path / "repo"
    placed = {str(p.relative_to(repo)) for p in report.collect(cfg.out, root=repo)}
    assert {"records/matrix-gpu.md", "records/matrix-gpu.png", "records/matrix-gpu.html", "records/gpu-session.md",
            "results/training/gpu/d2l/torch/seed0/metrics.jsonl",
            "results/training/gpu/d2l/jax/seed0/checkpoint.safetensors"} <= placed
    assert any(p.startswith("benchmarks/results/nvidia-h200-") and p.endswith(".json") for p in placed)
    whl = tmp_path / "bundle"
    whl.mkdir()
    added = bundle.add_runs(whl, repo / "results" / "training" / "gpu" / "d2l", log=lambda m: None)
    assert added == ["torch", "jax"]  # 3 of 20 epochs: unfinished, so carried to be resumed
    assert (whl / "train" / "torch" / "metrics.jsonl").is_file()
    assert report.collect(cfg.out, root=repo)  # the same runs again: they go on where they were
    _fake_run(repo / "results" / "training" / "gpu" / "d2l" / "jax" / "seed0", "jax", epochs=9)
    header = (repo / "results" / "training" / "gpu" / "d2l" / "jax" / "seed0" / "metrics.jsonl")
    header.write_text(header.read_text().replace("2026-11-26T10:00:00", "2026-11-20T10:00:00", 1))
    with pytest.raises(ValueError, match="holds another run"):  # nine epochs are not lost to three
        report.collect(cfg.out, root=repo)
    with pytest.raises(FileNotFoundError):
        report.collect(tmp_path / "nowhere")


def test_the_timing_loop_waits_for_the_warm_up_before_the_first_window():
    """JAX dispatches asynchronously: the warm-up's last step must be waited for, or it runs in the window."""
    results, syncs = itertools.count(), []
    timing.measure(results.__next__, syncs.append, batch_size=1, warmup=3, windows=1, steps=2)
    # the first step timed alone (0), three warm-up steps (1, 2, 3), one window of two (4, 5)
    assert syncs == [None, 0, 3, None, 5]


# --- a wheel installed for real, offline (the bundle's own tests: tests/test_gpu_bundle.py) ----------------
def _make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module and its dist-info."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": b"VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for p, b in files.items()] + [f"{dist}/RECORD,,"]
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, b in files.items():
            z.writestr(p, b)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def test_install_for_real_without_network_into_a_target(tmp_path):
    _make_wheel(tmp_path, "nin_offline_probe", "1.0")
    target = tmp_path / "site"
    assert wheels.install(tmp_path, target=target)["installed"] == {"nin-offline-probe": "1.0"}
    env = {**os.environ, "PYTHONPATH": str(target)}
    assert subprocess.run([sys.executable, "-c", "import nin_offline_probe as m; print(m.VALUE)"], env=env,
                          capture_output=True, text=True).stdout.strip() == "42"
    assert wheels.install(tmp_path, target=target)["installed"] == {}  # a second run finds it there



# --- the whole dry run, from a bundle made here ----------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed here")
def test_the_documented_command_runs_the_whole_order_on_the_cpu(tmp_path, data_dir):
    whl = tmp_path / "whl"
    (whl / "fashion-mnist").mkdir(parents=True)
    _make_wheel(whl, "nin_offline_probe", "1.0")
    for name in data.FILES:
        found = next(p for p in (data_dir / f"{name}.gz", data_dir / name) if p.is_file())
        (whl / "fashion-mnist" / found.name).symlink_to(found)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "WHEELHOUSE": str(whl)}
    cmd = ["bash", "scripts/gpu_session.sh", str(out), str(HANG_S), "--dry-run", "--backends", "torch",
           "--train-backends", "torch", "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2 * HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "session.json").read_text())
    assert [(st["phase"], st["status"]) for st in doc["steps"]] == [
        ("setup", "ok"), ("peak", "ok"), ("headline", "ok"), ("record", "ok"), ("record", "ok"), ("reference", "ok"),
        ("compare", "ok"), ("grid", "ok"), ("grid", "ok"), ("train", "ok")]
    assert doc["environment"]["NIN_DATA_DIR"] == str(whl / "fashion-mnist")
    assert "start peak (probe torch)" in proc.stderr  # a progress line per step
    assert sorted(p.name for p in out.iterdir()) == sorted(set(report.OUT_FILES) - {"train-jax.tar"})
    assert report.out_problems(out) == []
    assert doc["headline"]["torch"]["status"] == "ok" and doc["headline"]["torch"]["images_per_second"] > 0
    assert "passed, 0 failed" in (out / "matrix-gpu.md").read_text()
    merged = json.loads((tmp_path / "work" / "bench-gpu.json").read_text())
    assert [r["status"] for r in merged["results"]] == ["ok"] * 4 and merged["results"][1]["verify"]["status"] == "ok"
    assert doc["train"]["torch"]["epochs"] == 2 and doc["train"]["torch"]["checkpoint"]
