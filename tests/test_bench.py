"""The throughput harness on the CPU, with tiny configurations (the paper's net, batch 2, compile off).

The worker and the runner run for real, in subprocesses, as `nin bench` runs them; the out-of-memory
and missing-backend paths run the worker in this process with the framework parts replaced.
"""

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest
from conftest import HANG_S

from benchmarks import report, runner, timing, utilization, verify_timing, worker
from common import backends
from harness import processes

pytestmark = pytest.mark.main_env  # spawns each backend's own interpreter already: run once

TINY = {"variant": "paper", "mode": "train", "batch_size": 2, "precision": "fp32", "compile": "eager",
        "device": "cpu", "warmup": 1, "windows": 2, "steps": 1}
TINY_ARGS = ["--variant", "paper", "--batch-size", "2", "--compile", "eager", "--device", "cpu",
             "--warmup", "1", "--windows", "2", "--steps", "1"]
CONTRACT_KEYS = {"images_per_second", "window_seconds", "first_step_seconds", "peak_memory_bytes", "settings", "spread"}

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed here")


@needs_torch
def test_torch_worker_times_a_tiny_configuration():
    out = processes.call("torch", "benchmarks.worker", worker.arguments({"backend": "torch", **TINY}), timeout=HANG_S)
    assert out["status"] == "ok", out.get("reason")
    assert CONTRACT_KEYS | {"versions", "numerics", "device_name", "backend", "batch_size"} <= set(out)
    assert len(out["window_seconds"]) == 2 and all(t > 0 for t in out["window_seconds"])
    assert out["images_per_second"] > 0 and out["first_step_seconds"] > 0
    assert out["images_per_second"] == pytest.approx(statistics.median(2 / t for t in out["window_seconds"]))
    assert out["peak_memory_bytes"] is None  # no device counter on the CPU
    assert out["settings"]["tf32_matmul"] is False and out["settings"]["optimizer"].startswith("SGD")


@needs_torch
def test_runner_writes_json_markdown_and_plot(tmp_path, monkeypatch):
    if importlib.util.find_spec("mxnet") is None:  # then mxnet, pointed at this interpreter, must skip
        monkeypatch.setenv("NIN_PYTHON_MXNET", sys.executable)
    argv = ["nin", "bench", "--backend", "torch", "mxnet", "--mode", "infer", *TINY_ARGS, "--out", str(tmp_path / "r.json")]
    rc = runner.main(runner.build_parser().parse_args(argv[2:]), argv=argv)
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["command"] == " ".join(argv)
    assert doc["device"]["kind"] == "cpu" and doc["device"]["peak"] is None
    torch_result = next(r for r in doc["results"] if r["backend"] == "torch")
    assert torch_result["status"] == "ok" and torch_result["images_per_second"] > 0
    assert torch_result["predicted_memory_bytes"] > 0 and torch_result["utilization"]["achieved_tflops"] > 0
    assert torch_result["utilization"]["mfu"] is None  # a CPU's peak is unknown: none is invented
    assert "torch" in doc["versions"] and doc["settings"]["batch_sizes"] == [2]
    if importlib.util.find_spec("mxnet") is None:
        mx = next(r for r in doc["results"] if r["backend"] == "mxnet")
        assert mx["status"] == "skipped" and "mxnet not installed" in mx["reason"]
    md = (tmp_path / "r.md").read_text()
    assert doc["command"] in md and "| torch | infer | 2 | fp32 | eager | ok |" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_utilization_math():
    assert utilization.fraction_of_peak(1e12, 1.0, 2.0) == pytest.approx(0.5)  # 1e12 FLOP in 1 s of 2e12 FLOP/s
    assert utilization.achieved_tflops(3e12, 2.0) == pytest.approx(1.5)
    # 1 GFLOP per image on 100 TFLOP/s allows 1e5 images/s; 20 MB per image on 1000 GB/s allows 5e4: memory bound.
    assert utilization.roofline_images_per_second(1e9, 2e7, 100.0, 1000.0) == (pytest.approx(5e4), "memory")
    assert utilization.roofline_images_per_second(1e9, 1e6, 100.0, 1000.0) == (pytest.approx(1e5), "compute")
    peak = utilization.DevicePeak("test", {"bf16": 2.0}, 1000.0, "test")
    u = utilization.utilization(1000.0, 1e9, 1e6, peak=peak, precision="bf16")  # 1e12 FLOP/s on a 2 TFLOP/s device
    assert u["mfu"] == pytest.approx(0.5) and u["roofline_bound"] == "compute"
    assert u["fraction_of_roofline"] == pytest.approx(0.5)
    assert utilization.utilization(1000.0, 1e9, 1e6, peak=None, precision="fp32")["mfu"] is None


@pytest.mark.parametrize("name, entry, bandwidth", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 3350), ("NVIDIA H100 PCIe", "H100 PCIe", 2000),
    ("NVIDIA H100 NVL", "H100 NVL", 3900), ("NVIDIA H200", "H200 SXM", 4800),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 2039), ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 1935),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB", 1555)])
def test_peak_table_names_the_device(name, entry, bandwidth):
    peak = utilization.peak_for(name)
    assert peak.name == entry and peak.bandwidth_gbs == bandwidth
    assert peak.tflops["bf16"] > peak.tflops["tf32"] > peak.tflops["fp32"]


def test_unknown_devices_have_no_peak():
    assert utilization.peak_for("AMD EPYC 7B13") is None and utilization.peak_for(None) is None


def _in_process(name, module, args, timeout=None):
    """processes.call without the subprocess, so that monkeypatches reach the worker."""
    return worker.run(worker.config_from_args(worker.build_parser().parse_args(args)))


@needs_torch
def test_oom_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    bench = processes.load("torch", "bench")
    train = processes.load("torch", "train")

    def fake_make_step(spec, *, mode, batch_size, precision, compile, device, steps):
        if batch_size > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (lambda: None), {}

    monkeypatch.setattr(bench, "make_step", fake_make_step)
    monkeypatch.setattr(train, "configure", lambda device, precision: {"precision": precision})
    monkeypatch.setattr(processes, "call", _in_process)
    args = runner.build_parser().parse_args(["--backend", "torch", "--mode", "train", *TINY_ARGS,
                                             "--batch-size", "4", "2", "8", "--out", str(tmp_path / "r.json")])
    assert runner.main(args, argv=["nin", "bench"]) == 0  # out of memory is a result, not a failure
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(r["batch_size"], r["status"]) for r in doc["results"]] == [(2, "ok"), (4, "oom"), (8, "oom")]
    assert "out of memory" in doc["results"][1]["reason"]
    assert doc["results"][0]["images_per_second"] > 0
    assert "| oom: RuntimeError: CUDA out of memory" in (tmp_path / "r.md").read_text()


def test_backend_without_framework_or_compile_mode_is_skipped(monkeypatch):
    ghost = backends.Backend("ghost", "nin_ghost", ("no_such_framework",), ".venv", "Ghost", ("eager",))
    monkeypatch.setitem(backends.BACKENDS, "ghost", ghost)
    out = worker.run({"backend": "ghost", **TINY})
    assert out["status"] == "skipped" and "no_such_framework not installed" in out["reason"]
    if importlib.util.find_spec("torch") is not None:
        out = worker.run({"backend": "torch", **TINY, "compile": "graph"})
        assert out["status"] == "skipped" and "torch has no compile mode 'graph'" in out["reason"]


def test_timing_loop_counts_windows_and_takes_the_median():
    calls = []
    out = timing.measure(lambda: calls.append(1), lambda r: None, batch_size=4, warmup=2, windows=3, steps=5)
    assert len(calls) == 1 + 2 + 3 * 5 and len(out["window_seconds"]) == 3
    assert out["images_per_second"] == pytest.approx(statistics.median(4 * 5 / t for t in out["window_seconds"]))
    assert out["spread"] >= 0


def test_a_failing_configuration_is_an_error_with_its_message(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "call", lambda name, module, args, timeout=None: {"status": "error", "reason": "boom"})
    args = runner.build_parser().parse_args(["--backend", "keras-tf", "--mode", "infer", *TINY_ARGS,
                                             "--out", str(tmp_path / "r.json")])
    assert runner.main(args, argv=["nin", "bench"]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["reason"] == "boom"


@needs_torch
def test_independent_timing_loop_runs_for_torch():
    out = processes.call("torch", "benchmarks.verify_timing", worker.arguments({"backend": "torch", **TINY}), timeout=HANG_S)
    assert out["status"] == "ok" and out["images_per_second"] > 0 and out["steps"] == 2
    assert out["loop"] == "bench step, plain loop"  # PyTorch has no loop of its own: its bench step, timed plainly
    result = {"backend": "torch", **TINY, "status": "ok", "images_per_second": out["images_per_second"]}
    verify_timing.check([result], timeout=HANG_S)  # a fresh process of its own
    assert result["verify"]["status"] == "ok" and result["verify"]["tolerance"] == 0.10


def test_runner_help_works_standalone():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.runner", "--help"], cwd=backends.ROOT,
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0 and "--batch-size" in proc.stdout and "--verify" in proc.stdout


def _result(backend: str, rates: list[float], status: str = "ok") -> dict:
    median = statistics.median(rates)
    return {"backend": backend, "mode": "train", "batch_size": 16, "precision": "fp32", "compile": "eager",
            "status": status, "images_per_second": median, "images_per_second_windows": rates,
            "spread": (max(rates) - min(rates)) / median}


def _doc(results: list[dict], *, load: float, cpus: int = 2, kind: str = "cpu") -> dict:
    return {"device": {"kind": kind, "name": "test CPU", "count": cpus}, "settings": {"variant": "paper"},
            "load_average": {"before": [load, 0.0, 0.0], "after": [0.5, 0.0, 0.0]}, "results": results}


def test_a_noisy_result_or_a_busy_machine_is_marked_untrusted_with_the_reason():
    steady, noisy = _result("torch", [10.0, 10.4, 10.2]), _result("jax", [8.0, 10.0, 9.0])  # spread 4%, 22%
    assert report.untrusted(steady) == [] and report.untrusted(noisy) == ["spread 22.2% > 10%"]
    quiet = _doc([steady, noisy], load=1.5)
    assert report.busy(quiet) is None
    rows = report.table(quiet["results"], report.busy(quiet)).splitlines()
    assert "| ok |" in rows[2] and "| **untrusted**: spread 22.2% > 10% |" in rows[3]
    loaded = _doc([steady, noisy], load=2.5)  # more runnable threads than the 2 CPUs
    assert report.busy(loaded) == "load 2.50 > 2 CPUs"
    assert report.untrusted(steady, report.busy(loaded)) == ["load 2.50 > 2 CPUs"]
    assert report.busy(_doc([steady], load=9.0, kind="gpu")) is None  # its count is GPUs: no CPU count to judge by
    assert report.untrusted({**steady, "status": "oom"}, "load 2.50 > 2 CPUs") == []  # nothing measured


def test_the_plot_draws_the_windows_range_and_hatches_the_untrusted():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steady, noisy = _result("torch", [10.0, 10.4, 10.2]), _result("jax", [8.0, 10.0, 9.0])
    fig, ax = plt.subplots()
    report.draw_mode(ax, [steady, noisy], colours={"torch": "C0", "jax": "C1"}, machine=None)
    (bars,) = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    assert [p.get_width() for p in bars.patches] == [10.2, 9.0]
    assert [p.get_hatch() or "" for p in bars.patches] == ["", "//"]
    segments = bars.errorbar.lines[2][0].get_segments()  # one horizontal whisker per bar: min to max window
    assert [(s[0][0], s[1][0]) for s in segments] == [pytest.approx((10.0, 10.4)), pytest.approx((8.0, 10.0))]
    assert any("untrusted: spread 22.2% > 10%" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_reports_render_again_from_their_json_alone(tmp_path):
    """python -m benchmarks.report re-renders the .md and .png of a result file and leaves the JSON as it is."""
    doc = _doc([_result("torch", [10.0, 10.4, 10.2])], load=0.5)
    doc.update(command="nin bench", created="2026-12-05", host="h", versions={}, model={
        "params": 1, "forward_flops_per_image": 1e9, "train_flops_per_image": 3e9},
        settings={"variant": "paper", "warmup": 1, "windows": 3, "steps": 1})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    written = report.render(path)
    assert path.read_bytes() == before and written[0] == tmp_path / "r.md"
    md = written[0].read_text()
    assert "| torch | train | 16 | fp32 | eager | ok | 10.2 | 3.9% | ok |" in md
    assert f"untrusted: the windows' spread is above {report.SPREAD_LIMIT:.0%} of the median" in md


@needs_torch
def test_devices_times_the_training_loop_on_each_engine_and_its_scaling(tmp_path):
    """`nin bench --devices 1 2`: the training loop as `nin train --devices` runs it, PyTorch's 2 replicas as
    2 processes started by torchrun's launcher; the scaling column is images/s over 2 x the 1-device rate."""
    argv = ["nin", "bench", "--backend", "torch", "jax", "--devices", "1", "2", *TINY_ARGS, "--out",
            str(tmp_path / "r.json")]
    assert runner.main(runner.build_parser().parse_args(argv[2:]), argv=argv) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["settings"]["devices"] == [1, 2] and doc["settings"]["modes"] == ["train"]
    by = {(r["backend"], r["devices"]): r for r in doc["results"]}
    one, two = by["torch", 1], by["torch", 2]
    assert one["status"] == two["status"] == "ok", (one.get("reason"), two.get("reason"))
    assert two["settings"]["engine"].startswith("torch.distributed") and two["settings"]["devices"] == 2
    assert two["scaling_efficiency"] == pytest.approx(two["images_per_second"] / (2 * one["images_per_second"]))
    assert "scaling_efficiency" not in one or one["scaling_efficiency"] == pytest.approx(1.0)
    if by["jax", 1]["status"] == "ok":  # a Mesh runs compiled only: eager is skipped, with the reason
        assert by["jax", 2]["status"] == "skipped" and "--compile compiled" in by["jax", 2]["reason"]
    header = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| backend"))
    assert "| devices |" in header and "| scaling |" in header


@pytest.mark.parametrize("flags, message", [
    (["--devices", "2", "--batch-size", "3"], "--devices 2: --batch-size 3 does not split evenly over 2 replicas"),
    (["--devices", "2", "--mode", "infer"], "--devices times the training loop (nin train --devices): --mode train"),
    (["--devices", "2", "--precision", "bf16"], "--devices times the training loop, in fp32 only"),
])
def test_devices_refuses_what_the_loop_cannot_time_in_one_line(flags, message, tmp_path, capsys):
    args = runner.build_parser().parse_args(["--backend", "torch", *flags, "--out", str(tmp_path / "r.json")])
    assert runner.main(args, argv=["nin", "bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nin bench: {message}") and "\n" not in err
    assert not (tmp_path / "r.json").exists()
