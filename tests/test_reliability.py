"""Reliability, second round (docs/bad-inputs.md, "Limits before the work", "Refused: what cannot be
right", "Nothing lost" and "One line"): each class of failure a hostile or careless user found, planted
as that user would, asserting the contract of docs/bad-inputs.md and that the class cannot come back.

Nothing here starts a framework: where a command would start a worker, the worker is replaced by one
that fails the test (`no_worker`), so that "refused before any worker" is asserted by construction,
not by timing; the workers' own side (training.worker) runs in-process with fake backend modules.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import ROOT, damaged, failed_check, nin, setting, usage_error
from tiny_records import CASES, tiny

from common import backends, calc, fsio
from common import spec as specs
from common.spec import NetSpec, NiNBlock
from conformance import records, sweep
from harness import processes
from training import cli as training_cli
from training import recipe as recipes
from training import runs
from training import worker as training_worker
from training.recipe import Settings


@pytest.fixture(autouse=True)
def env(cache, monkeypatch):
    monkeypatch.setenv("NIN_CACHE_DIR", str(cache))


def no_worker(*args, **kwargs):
    raise AssertionError("a worker was started for input that should have been refused before")


@pytest.fixture
def workerless(monkeypatch):
    """Every way a command starts a worker fails the test."""
    monkeypatch.setattr(sweep, "run_record", no_worker)
    monkeypatch.setattr(training_cli, "run_worker", no_worker)
    monkeypatch.setattr(processes, "call", no_worker)
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(16 * 2**30))  # one answer on every machine


def write_spec(path: Path, spec: NetSpec | dict) -> Path:
    path.write_text(json.dumps(spec if isinstance(spec, dict) else spec.to_dict()))
    return path


def long_mlp(n: int) -> dict:
    """The paper's spec with a first block of n 1x1 convs: about 3 bytes of JSON per conv."""
    d = specs.get("paper").to_dict()
    d["layers"][0]["mlp"] = [4] * (n - 1) + [96]
    return d


# === 1. size and cost, checked before the work, in linear time ===================================
def test_a_walk_reads_each_block_s_convs_once(monkeypatch):
    """walk() used to rebuild `block.convs` (a tuple of every conv) for each conv: quadratic in a
    block's length, so that a 600 KB spec never finished `nin summary`. Counted, not timed."""
    spec = NetSpec.from_dict(long_mlp(500))
    calls = [0]
    original = NiNBlock.convs

    def counting(self):
        calls[0] += 1
        return original.fget(self)

    monkeypatch.setattr(NiNBlock, "convs", property(counting))
    ops = list(specs.walk(spec))
    assert len(ops) > 1000 and calls[0] == len(list(spec.blocks()))


def test_a_summary_visits_the_operations_once(monkeypatch):
    """calc.spec_layers used to scan every operation for each layer: quadratic in the layer count."""
    spec = specs.get("paper")
    scans = [0]

    class Counted(list):
        def __iter__(self):
            scans[0] += 1
            return super().__iter__()

    real = calc.layers
    monkeypatch.setattr(calc, "layers", lambda s: Counted(real(s)))
    rows = calc.spec_layers(spec)
    assert len(rows) == len(spec.layers) and scans[0] == 1


def test_a_spec_of_a_very_long_block_is_refused_before_its_entries_are_read(tmp_path, good):
    """600 KB of 1x1 convs: refused by the count of convs (spec.MAX_CONVS), in `nin summary` and in a
    record's metadata alike."""
    d = long_mlp(200_000)
    path = write_spec(tmp_path / "long.json", d)
    assert 500_000 < path.stat().st_size < specs.MAX_SPEC_BYTES
    usage_error(nin("summary", "--spec", path), path, "layers[0].mlp", "200,000", f"at most {specs.MAX_CONVS}")
    d["name"] = "tiny"
    bad = damaged(tmp_path / "long.safetensors", good, meta=setting("variants", "tiny", "spec", d))
    failed_check(nin("compare", bad), bad, "metadata.variants.tiny.spec", "layers[0].mlp", "at most")
    spread = long_mlp(600)  # within the bound per block, past it in all
    spread["layers"][3]["mlp"] = [192] * 600
    spread["layers"][3]["mlp"][-1] = 192
    usage_error(nin("summary", "--spec", write_spec(tmp_path / "spread.json", spread)), "convs", "at most 1024")


HUGE = NetSpec(name="huge", input_shape=(1, 4096, 4096), num_classes=10, layers=(
    NiNBlock(4096, kernel_size=3, stride=1, padding=1, mlp=(10,)), specs.GlobalAvgPool(), specs.Flatten()))


def test_record_conformance_and_error_model_refuse_days_of_work_before_any_worker(tmp_path, workerless):
    spec = write_spec(tmp_path / "huge.json", HUGE)
    for args in (["record", "--backend", "torch", "--variant", spec, "--out", tmp_path / "r" / "r.safetensors"],
                 ["conformance", "--backend", "torch", "--variant", spec, "--out-dir", tmp_path / "records"],
                 ["error-model", "--variant", spec]):
        usage_error(nin(*args), "--variant", "huge.json", "multiply-adds", "1e+13")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.json"]  # nothing made, not even a folder


def test_every_command_refuses_what_cannot_fit_in_memory_before_any_worker(tmp_path, workerless, monkeypatch):
    """The same estimate (common.calc) before every worker: a record, a run, a range test, a sweep."""
    monkeypatch.setenv("NIN_MEMORY_LIMIT", "1000")  # nothing fits
    spec = write_spec(tmp_path / "tiny.json", tiny())
    out = tmp_path / "out"
    for args, words in [
        (["record", "--backend", "torch", "--variant", spec, "--out", out / "r.safetensors"], ["--variant", "fp32"]),
        (["conformance", "--backend", "torch", "--variant", spec, "--out-dir", out], ["--variant", "fp64"]),
        (["train", "--backend", "torch", "--out", out], ["--variant d2l", "--batch-size 64"]),
        (["sweep", "--backend", "torch", "--out", out, "--seeds", "2"], ["--variant d2l", "--batch-size"]),
        (["lr-find", "--backend", "torch", "--out", out, "--steps", "10"], ["--batch-size 64", "--steps 10"]),
        (["bench", "--backend", "torch", "--variant", "paper", "--out", out / "b.json"], ["--variant paper"]),
    ]:
        usage_error(nin(*args), *words, "needs at least", "1,000 bytes", "NIN_MEMORY_LIMIT")
    assert not out.exists()
    monkeypatch.setenv("NIN_MEMORY_LIMIT", "lots")
    usage_error(nin("train", "--backend", "torch", "--out", out), "NIN_MEMORY_LIMIT", "'lots'")


def test_a_range_test_of_a_billion_images_is_refused_by_its_estimate(tmp_path, workerless):
    """`--steps 1000000000` is past --steps' range; the most steps at the largest batch are 5.5 TiB."""
    usage_error(nin("lr-find", "--backend", "torch", "--out", tmp_path / "l", "--steps", "1000000000"), "--steps",
                "100,000")
    usage_error(nin("lr-find", "--backend", "torch", "--out", tmp_path / "l", "--steps", "100000", "--batch-size",
                    "65536"), "--steps 100000", "--batch-size 65536", "TiB")
    usage_error(nin("train", "--backend", "torch", "--out", tmp_path / "t", "--epochs", "10000", "--batch-size",
                    "1"), "(10000 epochs)", "GiB")  # its learning-rate table alone: 6e8 steps
    assert not (tmp_path / "l").exists() and not (tmp_path / "t").exists()


def _gzip_bomb(size: int) -> bytes:
    """A gzip stream of `size` zero bytes (several members of 16 MiB each), about 1/1000 its size."""
    member = gzip.compress(bytes(16 * 2**20), compresslevel=9)
    return member * (size // (16 * 2**20))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs resource limits (POSIX)")
def test_a_gzip_bomb_in_the_data_folder_is_refused_in_bounded_memory(tmp_path):
    """A labels file that inflates to 1 GiB, read under a 768 MiB address-space limit: refused (the
    read stops past the 60,008 bytes the file holds), never a MemoryError and never the whole stream."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_gzip_bomb(2**30))
    probe = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (768 * 2**20, 768 * 2**20))\n"
        "from common import data\n"
        "try:\n"
        f"    data._read_bytes(__import__('pathlib').Path({str(folder)!r}) / 'train-labels-idx1-ubyte.gz',"
        " 'train-labels-idx1-ubyte')\n"
        "except data.DataError as e:\n"
        "    print(e); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "holds more than the 60,008 bytes" in r.stdout, (r.stdout, r.stderr)


# === 2. every flag has a range, checked when the command line is parsed ============================
RANGES = [  # (arguments, words)
    (["lr-find", "--backend", "torch", "--out", "x", "--steps", "0"], ["--steps", "'0'"]),
    (["lr-find", "--backend", "torch", "--out", "x", "--steps", "-5"], ["--steps", "'-5'"]),
    (["lr-find", "--backend", "torch", "--out", "x", "--min-lr", "1e9"], ["--min-lr", "(0, 100]"]),
    (["lr-find", "--backend", "torch", "--out", "x", "--rates", "0.1", "nan"], ["--rates", "nan"]),
    (["train", "--backend", "torch", "--timeout", "1e308"], ["--timeout", "week"]),
    (["sweep", "--backend", "torch", "--out", "x", "--timeout", "inf"], ["--timeout"]),
    (["lr-find", "--backend", "torch", "--out", "x", "--timeout", "0"], ["--timeout"]),
    (["sweep", "--backend", "torch", "--out", "x", "--seeds", "0"], ["--seeds", "'0'"]),
    (["sweep", "--backend", "torch", "--out", "x", "--seed-list", "-1"], ["--seed-list"]),
    (["sweep", "--backend", "torch", "--out", "x", "--margin", "1e9"], ["--margin"]),
    (["train", "--backend", "torch", "--lr", "nan"], ["--lr", "(0, 100]"]),
    (["train", "--backend", "torch", "--epochs", "0"], ["--epochs", "'0'"]),
    (["train", "--backend", "torch", "--batch-size", "1.5"], ["--batch-size", "'1.5'"]),
    (["train", "--backend", "torch", "--seed", "1" + "0" * 30], ["--seed"]),
    (["train", "--backend", "torch", "--momentum", "1"], ["--momentum", "0.999"]),
    (["train", "--backend", "torch", "--resize", "5000"], ["--resize", "4,096"]),
    (["report", "x", "--margin", "-1"], ["--margin"]),
    # an empty path must not mean the default one
    (["record", "--backend", "torch", "--out", ""], ["--out", "''"]),
    (["compare", "x.safetensors", "--report", ""], ["--report", "''"]),
    (["compare", "x.safetensors", "--json-out", " "], ["--json-out"]),
    (["conformance", "--out-dir", ""], ["--out-dir"]),
    (["bench", "--out", ""], ["--out"]),
    (["train", "--backend", "torch", "--out", ""], ["--out"]),
    (["sweep", "--backend", "torch", "--out", ""], ["--out"]),
    (["lr-find", "--backend", "torch", "--out", ""], ["--out"]),
    (["report", "x", "--out", ""], ["--out"]),
    (["plot", "x", "--out", ""], ["--out"]),
    (["summary", "--spec", ""], ["--spec"]),
    (["data", "--data-dir", ""], ["--data-dir"]),
    # one thing asked twice: `--backend torch torch` ran two workers on one file
    (["conformance", "--backend", "torch", "torch"], ["--backend", "'torch' is given twice"]),
    (["conformance", "--precision", "fp32", "fp32"], ["--precision", "twice"]),
    (["conformance", "--compile", "eager", "eager"], ["--compile", "twice"]),
    (["record", "--backend", "torch", "--variant", "paper", "paper"], ["--variant", "twice"]),
    (["bench", "--backend", "torch", "torch"], ["--backend", "twice"]),
    (["bench", "--batch-size", "2", "2"], ["--batch-size", "twice"]),
    (["sweep", "--backend", "torch", "torch", "--out", "x"], ["--backend", "twice"]),
    (["sweep", "--backend", "torch", "--out", "x", "--seed-list", "1", "1"], ["--seed-list", "twice"]),
    (["lr-find", "--backend", "jax", "jax", "--out", "x"], ["--backend", "twice"]),
    (["error-model", "--precision", "fp32", "fp32"], ["--precision", "twice"]),
]


@pytest.mark.parametrize("args, words", RANGES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in RANGES])
def test_every_flag_has_a_range(tmp_path, monkeypatch, workerless, args, words):
    monkeypatch.chdir(tmp_path)  # an empty --out used to write the default path inside the checkout
    usage_error(nin(*args), *words)
    assert not list(tmp_path.iterdir())


# === 3. what cannot be right is refused ===========================================================
def test_a_spec_of_fewer_than_ten_classes_is_refused_for_fashion_mnist(tmp_path, workerless):
    three = write_spec(tmp_path / "three.json", tiny("three", classes=3))
    for args in (["train", "--backend", "torch", "--variant", three, "--resize", "8", "--out", tmp_path / "run"],
                 ["lr-find", "--backend", "torch", "--variant", three, "--resize", "8", "--out", tmp_path / "lr"],
                 ["record", "--backend", "torch", "--variant", three, "--out", tmp_path / "r" / "r.safetensors"]):
        usage_error(nin(*args), "three.json", "num_classes 3", "10 classes")
    with pytest.raises(recipes.SettingsError, match="num_classes 3"):
        Settings(backend="torch", variant=str(three), resize=8)  # the worker refuses it too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.json"]


def _run_dir(folder: Path, *, variant: str = "d2l", epochs: int = 2, checkpoint: bool = True) -> Path:
    """A run directory as `nin train` leaves it after one epoch (its checkpoint a real one of `variant`)."""
    from common import weights

    s = Settings(backend="torch", variant=variant, resize=72, epochs=epochs)
    record = {"type": "epoch", "epoch": 1, "step": 4, "lr": 0.1, "train_loss": 2.3, "train_accuracy": 0.1,
              "test_loss": 2.2, "test_accuracy": 0.2, "test_zero_logits": 0.0, "images_per_second": 10.0,
              "train_seconds": 1.0, "wall_seconds": 1.5}
    if checkpoint:
        runs.write_checkpoint(folder, weights=weights.init(recipes.network(s), 0), optimizer={}, meta={
            "backend": "torch", "settings": s.to_dict(), "epoch": 1, "step": 4, "rng": {"seed": 0},
            "records": [record]})
    header = {"type": "header", "format": runs.METRICS_FORMAT, "backend": "torch", "variant": variant,
              "device": "cpu", "device_name": "x", "versions": {}, "settings": s.to_dict(), "command": "nin train",
              "created": "now"}
    runs.write_metrics(folder, [header, record])
    return folder


def test_a_checkpoint_of_another_network_is_refused_not_resumed(tmp_path, workerless):
    """The paper's checkpoint copied into a d2l run resumed as the paper network under a d2l header."""
    run = _run_dir(tmp_path / "run")
    other = _run_dir(tmp_path / "other", variant="paper")
    shutil.copy(other / runs.CHECKPOINT, run / runs.CHECKPOINT)
    line = usage_error(nin("train", "--backend", "torch", "--out", run, "--resume"), runs.CHECKPOINT,
                       "belongs to another run", "variant 'paper'", "'d2l'")
    assert "metrics.jsonl" in line
    with pytest.raises(runs.RunError, match="belongs to another run"):  # and the worker, on its own
        training_worker._resume(runs.stored_settings(other), run, "nin train --resume")


@pytest.mark.parametrize("kind", ["a directory", "a loop of symbolic links", "a link to nowhere", "a FIFO"])
def test_a_checkpoint_that_cannot_be_read_is_an_error_not_epoch_0(tmp_path, workerless, kind):
    run = _run_dir(tmp_path / "run", checkpoint=False)
    path = run / runs.CHECKPOINT
    if kind == "a directory":
        path.mkdir()
    elif kind == "a loop of symbolic links":
        path.symlink_to(path.name)
    elif kind == "a link to nowhere":
        path.symlink_to("nowhere.safetensors")
    else:
        os.mkfifo(path)
    words = {"a directory": "a directory", "a loop of symbolic links": "loop of symbolic links",
             "a link to nowhere": "leads nowhere", "a FIFO": "not a regular file"}[kind]
    usage_error(nin("train", "--backend", "torch", "--out", run, "--resume"), path, words)
    s = Settings(backend="torch", resize=72, epochs=2)
    with pytest.raises(runs.RunError, match=words):  # the worker never starts again from epoch 0
        training_worker.train(s, run, resume=True, command="nin train --resume")


FP64 = {"precision": "fp64"}


@pytest.mark.parametrize("name, limits, ok", [
    ("torch", {"all": "PyTorch never says this"}, False),
    ("torch", {"batch_norm": "nor this"}, False),
    ("torch", {}, True),
    ("keras-jax", {}, False),  # it computes in float32: judged with fp64 bounds, every check would fail unexplained
    ("keras-jax", {"all": "Keras maps float64 to float32"}, True),
])
def test_a_record_declares_the_float64_limits_its_backend_declares(good, tmp_path, name, limits, ok):
    def change(m):
        m.update(precision="fp64", backend=name, float64_limits=limits)
        return m

    path = damaged(tmp_path / "r.safetensors", good, meta=change,
                   tensors=lambda t: {k: v.astype(np.float64) for k, v in t.items()})
    if ok:
        records.read_record(path)
    else:
        failed_check(nin("compare", path), path, "metadata.float64_limits", name)


@pytest.mark.main_env
def test_the_table_of_float64_limits_is_what_each_backend_declares():
    """The registry's float64_limits against each backend's own train.float64_limits(), asked in the
    backend's own interpreter and environment (all at once)."""
    code = ("import json, sys; from harness import processes; "
            "print(json.dumps(sorted(processes.load(sys.argv[1], 'train').float64_limits())))")
    procs = {b: subprocess.Popen([processes.python_for(b), "-c", code, b], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=processes.environment_for(b))
             for b in backends.BACKENDS}
    answers = {}
    for b, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode == 0:
            answers[b] = json.loads(out.strip().splitlines()[-1])
        elif "No module named" not in err:
            pytest.fail(f"{b}: {err[-2000:]}")
    assert answers, "no backend could be asked"
    assert {b: sorted(backends.get(b).float64_limits) for b in answers} == answers


def test_bench_on_a_gpu_that_is_not_there_writes_nothing(tmp_path, workerless, monkeypatch):
    monkeypatch.setattr(processes, "gpus", lambda: [])
    usage_error(nin("bench", "--backend", "torch", "--device", "gpu", "--out", tmp_path / "b" / "r.json"),
                "--device gpu", "no GPU is visible")
    assert not (tmp_path / "b").exists()


# === 4. no result is lost or replaced silently ===================================================
def _fake_record(source: Path, calls: list):
    def run_record(backend, variants, *, out, **kw):
        calls.append((backend, variants))
        shutil.copy(source, out)
        return subprocess.CompletedProcess([], 0, "", "")
    return run_record


def test_a_record_of_another_network_is_not_replaced_without_overwrite(good, tmp_path, monkeypatch):
    out = tmp_path / "r.safetensors"
    shutil.copy(good, out)  # a torch cpu fp32 eager record of `tiny`
    calls = []
    monkeypatch.setattr(sweep, "run_record", _fake_record(good, calls))
    line = usage_error(nin("record", "--backend", "torch", "--variant", "paper", "--out", out), "--out", out,
                       "['tiny']", "['paper']", "would be lost", "--overwrite")
    assert "torch cpu fp32 eager" in line and not calls and out.read_bytes() == good.read_bytes()
    usage_error(nin("record", "--backend", "jax", "--variant", write_spec(tmp_path / "tiny.json", tiny()),
                    "--out", out), "--out", "torch cpu fp32 eager", "jax cpu fp32 eager")
    assert nin("record", "--backend", "torch", "--variant", tmp_path / "tiny.json", "--out", out).code == 0
    assert nin("record", "--backend", "torch", "--variant", "paper", "--out", out, "--overwrite").code == 0
    assert len(calls) == 2  # the same network again, and the other one with --overwrite
    out.write_text("my notes")
    usage_error(nin("record", "--backend", "torch", "--variant", "paper", "--out", out), "not a record")
    assert out.read_text() == "my notes"


def test_conformance_does_not_replace_records_of_other_variants(good, tmp_path, monkeypatch):
    folder = tmp_path / "records"
    folder.mkdir()
    shutil.copy(good, folder / sweep.record_name("torch", device="cpu", precision="fp32", compile="eager"))
    monkeypatch.setattr(sweep, "run_record", no_worker)
    usage_error(nin("conformance", "--backend", "torch", "--variant", "paper", "--precision", "fp32", "--compile",
                    "eager", "--out-dir", folder), "--out", "['tiny']", "would be lost")


SPECIAL = ["a FIFO", "a symbolic link", "a loop of symbolic links", "/dev/null"]


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_result_never_replaces_a_special_file_or_a_link(good, tmp_path, kind):
    """As root, `--report /dev/null` replaced the device with a regular file; a FIFO or a link the same."""
    target = tmp_path / "real.md"
    target.write_text("mine\n")
    path = tmp_path / "report.md"
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a symbolic link":
        path.symlink_to(target)
    elif kind == "a loop of symbolic links":
        path.symlink_to(path.name)
    else:
        path = Path("/dev/null")
        if not path.exists():
            pytest.skip("no /dev/null")
    before = os.lstat(path)
    words = {"a FIFO": "is a FIFO", "a symbolic link": "is a symbolic link", "a loop of symbolic links":
             "is a symbolic link", "/dev/null": "is a character device"}[kind]
    for flag in ("--report", "--json-out"):
        usage_error(nin("compare", good, flag, path), flag, path, words)
    with pytest.raises(fsio.OutputError, match=words):
        fsio.atomic_write_text(path, "x")  # every writer, not only the flags
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert target.read_text() == "mine\n"


HOLDER = """
import sys, time
from common import fsio
with fsio.exclusive(sys.argv[1], "--report"):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes it, or kills this process
"""


def test_a_second_writer_of_one_result_is_refused_while_the_first_runs(good, tmp_path):
    """Another process writing the report holds its lock: `nin compare --report` is refused at once,
    naming it; once that process is killed with kill -9 the lock is the kernel's to free, and a new
    command writes."""
    report = tmp_path / "m.md"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(report)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        usage_error(nin("compare", good, "--report", report), "--report", report, f"pid {holder.pid}",
                    "writing it now")
        with pytest.raises(fsio.OutputError, match="writing it now"), fsio.exclusive(report, "--report"):
            pass  # a thread of this process is refused the same way
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = nin("compare", good, "--report", report)
    assert r.code == 0 and report.read_text().startswith("# Conformance matrix"), r
    left = {p.name for p in tmp_path.iterdir()}
    assert "m.md" in left and left <= {"m.md", "m.png", "m.html"}, left  # the report and its heatmap; no lock


WRITERS = [  # (arguments, the file whose lock the command takes)
    (["record", "--backend", "torch", "--variant", "paper", "--out", "{o}/r.safetensors"], "r.safetensors"),
    (["conformance", "--backend", "torch", "--variant", "paper", "--precision", "fp32", "--compile", "eager",
      "--out-dir", "{o}"], "torch-cpu-fp32-eager.safetensors"),
    (["train", "--backend", "torch", "--resize", "72", "--out", "{o}"], runs.METRICS),
    (["sweep", "--backend", "torch", "--resize", "72", "--out", "{o}"], "report.md"),
    (["lr-find", "--backend", "torch", "--resize", "72", "--out", "{o}"], "lr_find.md"),
    (["bench", "--backend", "torch", "--variant", "paper", "--out", "{o}/b.json"], "b.json"),
]


@pytest.mark.parametrize("args, locked", WRITERS, ids=[w[0][0] for w in WRITERS])
def test_every_writer_is_refused_while_another_writes_its_file(tmp_path, workerless, args, locked):
    """Two commands writing one result ran both, and one result replaced the other unseen."""
    out = tmp_path / "out"
    with fsio.exclusive(out / locked, "--out"):  # another command, writing it now
        usage_error(nin(*[str(a).replace("{o}", str(out)) for a in args]), locked, "writing it now")
    assert not out.exists()


def test_a_refused_command_leaves_no_folder(tmp_path, workerless):
    """check_writable used to make the output's folders before the later checks refused the command."""
    three = write_spec(tmp_path / "three.json", tiny("three", classes=3))
    deep = tmp_path / "a" / "b"
    for args in (["record", "--backend", "torch", "--variant", three, "--out", deep / "r.safetensors"],
                 ["conformance", "--backend", "torch", "--variant", three, "--out-dir", deep],
                 ["compare", tmp_path / "nope.safetensors", "--report", deep / "m.md"],
                 ["train", "--backend", "torch", "--variant", three, "--resize", "8", "--out", deep],
                 ["bench", "--backend", "torch", "--variant", three, "--compile", "nope", "--out", deep / "b.json"]):
        assert nin(*args).code == 2
        assert not (tmp_path / "a").exists(), args
    fsio.check_writable(deep / "c" / "m.md", "--report")  # checked, and still nothing made
    assert not (tmp_path / "a").exists()


def test_a_failed_training_leaves_nothing(tmp_path, monkeypatch):
    """Two trainings that failed in their first epoch left a header-only metrics.jsonl, and the run
    directory: the command's side (the folder made for the run) and the worker's (no metrics until
    the first epoch ends) are both asserted."""
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(16 * 2**30))
    monkeypatch.setattr(training_cli, "run_worker", lambda *a, **k: (1, {"reason": "RuntimeError: broke"}))
    out = tmp_path / "runs" / "x"
    r = nin("train", "--backend", "torch", "--resize", "72", "--out", out)
    assert r.code == 1 and "broke" in r.err and not (tmp_path / "runs").exists(), r

    class BrokenError(RuntimeError):
        pass

    def train_epoch(*args, **kwargs):
        raise BrokenError("the framework broke in epoch 1")

    fake = types.SimpleNamespace(FRAMEWORK="fake", configure=lambda *a: {}, device_name=lambda d: "cpu",
                                 versions=lambda: {}, make_trainer=lambda *a, **k: None,
                                 load_state=lambda *a: None, train_epoch=train_epoch)
    monkeypatch.setattr(training_worker.processes, "load", lambda backend, module: fake)
    monkeypatch.setattr(training_worker, "load_data", lambda s, d=None: (
        np.zeros((8, 28, 28), np.uint8), np.zeros(8, np.int32), np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int32)))
    with pytest.raises(BrokenError):
        training_worker.train(Settings(backend="torch", resize=72, epochs=1, batch_size=4), out, resume=False,
                              command="nin train")
    assert not out.exists() or not list(out.iterdir())


# === 5. every failure is one line and a documented status ==========================================
def test_metrics_and_checkpoints_that_cannot_be_read_name_the_file(tmp_path, workerless):
    """RecursionError and 5000-digit integers in a run's JSON were 'internal error', exit 1."""
    for what, text in [("nested", "[" * 100_000), ("number", '{"type": "header", "epoch": 1' + "0" * 5000 + "}")]:
        run = _run_dir(tmp_path / what)
        path = run / runs.METRICS
        path.write_text(path.read_text() + text + "\n")
        words = "nested too deeply" if what == "nested" else "number too large"
        usage_error(nin("report", run), f"{path}:3", words)
        usage_error(nin("train", "--backend", "torch", "--out", run, "--resume"), f"{path}:3", words)
    from safetensors.numpy import save_file

    run = _run_dir(tmp_path / "ckpt")
    save_file({"w": np.zeros(1, np.float32)}, str(run / runs.CHECKPOINT),
              metadata={"checkpoint": '{"epoch": 1' + "0" * 5000 + "}"})
    usage_error(nin("train", "--backend", "torch", "--out", run, "--resume"), runs.CHECKPOINT, "number too large")


def test_integers_past_float_are_the_field_not_an_overflow(good, tmp_path, workerless):
    """`math.isfinite(10**400)` raises OverflowError (NumPy's isfinite a TypeError): where a number goes,
    such an integer was 'internal error', exit 1."""
    d = specs.get("paper").to_dict()
    d["init_std"] = 10**400
    usage_error(nin("summary", "--spec", write_spec(tmp_path / "s.json", d)), "init_std", "(0, 10]")
    bad = damaged(tmp_path / "r.safetensors", good, meta=setting("cases", "lr", 10**400))
    failed_check(nin("compare", bad), bad, "metadata.cases.lr", "401 digits")
    run = _run_dir(tmp_path / "run", checkpoint=False)
    path = run / runs.METRICS
    path.write_text(path.read_text().replace('"lr": 0.1, "train_loss"', '"lr": 1' + "0" * 400 + ', "train_loss"'))
    usage_error(nin("report", run), f"{path}:2", "lr", "401 digits")
    header = json.loads(path.read_text().splitlines()[0])
    header["settings"]["lr"] = 10**400
    path.write_text(json.dumps(header) + "\n")
    usage_error(nin("train", "--backend", "torch", "--out", run, "--resume"), "settings: --lr", "...")


def test_a_bad_spec_is_named_by_every_training_command(tmp_path, workerless):
    """argparse said only "invalid _variant_arg value" for a spec file that fails its schema."""
    d = specs.get("paper").to_dict()
    d["layers"][0]["batch_norm"] = "false"
    spec = write_spec(tmp_path / "bn.json", d)
    for args in (["train", "--backend", "torch", "--variant", spec],
                 ["sweep", "--backend", "torch", "--variant-list", spec, "--out", tmp_path / "s"],
                 ["lr-find", "--backend", "torch", "--variant", spec, "--out", tmp_path / "l"]):
        usage_error(nin(*args), "--variant", "bn.json", "layers[0].batch_norm", "true or false")


def test_a_range_test_kept_from_before_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(16 * 2**30))
    folder = tmp_path / "lr" / "torch-d2l"
    folder.mkdir(parents=True)
    for text, words in [("[" * 100_000, "nested too deeply"), ('{"lrs": 1' + "0" * 5000 + "}", "too large"),
                        ("[]", "a JSON object"), ('{"backend": "torch"}', "variant")]:
        (folder / "lr_find.json").write_text(text)
        usage_error(nin("lr-find", "--backend", "torch", "--out", tmp_path / "lr", "--keep"), "lr_find.json", words)


def test_paths_that_loop_are_one_line(good, tmp_path, workerless):
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    usage_error(nin("compare", loop), "record", loop, "loop")
    usage_error(nin("summary", "--spec", loop.with_name("loop.json")), "does not exist")
    (tmp_path / "loop.json").symlink_to("loop.json")
    usage_error(nin("summary", "--spec", tmp_path / "loop.json"), "loop.json", "symbolic links")
    usage_error(nin("compare", good, "--report", loop / "m.md"), "--report", "loop")
    usage_error(nin("train", "--backend", "torch", "--out", loop), loop / "metrics.jsonl", "loop of symbolic links")


def test_a_timeout_is_exit_124_and_one_line(tmp_path, monkeypatch):
    """A worker past --timeout is stopped; the command says so and exits 124 (docs/bad-inputs.md)."""
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(16 * 2**30))
    waits = [sys.executable, "-c", "import signal; signal.pause()"]  # runs until it is stopped
    monkeypatch.setattr(processes, "worker_command", lambda *a, **k: waits)
    r = nin("record", "--backend", "torch", "--variant", write_spec(tmp_path / "tiny.json", tiny()), "--timeout",
            "0.01", "--out", tmp_path / "r" / "r.safetensors")
    assert r.code == 124 and r.messages == ["nin record: torch: timed out after 0.01 s"], r
    r = nin("train", "--backend", "torch", "--resize", "72", "--timeout", "0.01", "--out", tmp_path / "run")
    assert r.code == 124 and len(r.messages) == 1 and "timed out after 0.01 s" in r.err, r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json"]


def test_plot_says_it_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run_dir(tmp_path / "run", checkpoint=False)
    usage_error(nin("plot", run, "--out", tmp_path / "x.txt"), "--out", "x.txt", "PNG", ".png")
    assert not (tmp_path / "x.txt").exists()
    assert nin("plot", run, "--out", tmp_path / "x.png").code == 0 and (tmp_path / "x.png").read_bytes()[:4] == \
        b"\x89PNG"


def test_a_worker_killed_by_the_kernel_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(16 * 2**30))
    monkeypatch.setattr(training_cli, "run_worker", lambda *a, **k: (-signal.SIGKILL, {}))
    r = nin("train", "--backend", "torch", "--resize", "72", "--out", tmp_path / "run")
    assert r.code == 1 and len(r.messages) == 1 and "SIGKILL: out of memory?" in r.err, r


def test_records_checked_for_reference_memory_on_this_machine(good, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(records.record_memory(tiny(), CASES, "fp64") - 1))
    failed_check(nin("compare", good), good, "metadata.variants.tiny.spec", "float64 reference", "NIN_MEMORY_LIMIT")
