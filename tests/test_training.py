"""`nin train` and its friends: every backend trains from the canonical init, writes metrics and
checkpoints, resumes bitwise after a kill -9 mid-epoch, stops cleanly when the loss diverges; bad
checkpoints and metrics are one-line errors. Runs are tiny (64 images at 72x72, two epochs): the
behaviour is what is tested here, the accuracies are measured in results/training/."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_S, require_backend

from common import backends, data, weights
from common import spec as specs
from harness import processes
from nin import cli
from training import recipe as recipes
from training import report as reports
from training import runs
from training.recipe import Settings, SettingsError
from training.runs import RunError

TINY = ["--resize", "72", "--train-limit", "64", "--test-limit", "32", "--batch-size", "16", "--epochs", "2",
        "--recipe", "tuned", "--warmup", "0.5"]
STEPS_PER_EPOCH = 4


def nin(*argv) -> int:
    return cli.main([str(a) for a in argv])


def same_weights(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


# --- the recipe, the data path, the formats: no backend needed ---------------------------------
def test_lr_table_warms_up_then_follows_the_schedule():
    s = Settings(backend="torch", lr=0.1, warmup=1.0, schedule="cosine", epochs=3)
    t = recipes.lr_table(s, steps=10)
    assert len(t) == 30
    np.testing.assert_allclose(t[:10], 0.1 * np.arange(1, 11) / 10)
    assert t[10] == pytest.approx(0.1) and t[-1] < 0.001 and np.all(np.diff(t[10:]) < 0)
    assert np.all(recipes.lr_table(Settings(backend="torch", lr=0.05), steps=7) == 0.05)
    linear = recipes.lr_table(Settings(backend="torch", lr=0.2, schedule="linear", epochs=2), steps=5)
    np.testing.assert_allclose(linear, 0.2 * (1 - np.arange(10) / 10))
    assert recipes.dropout_seed(0, 1) != recipes.dropout_seed(0, 2) != recipes.dropout_seed(1, 1)


@pytest.mark.parametrize("fields, message", [
    ({"lr": 0.0}, "--lr: expected a number in (0, 100]"),
    ({"optimizer": "adam"}, "--optimizer: expected one of ['sgd', 'momentum']"),
    ({"resize": 60}, "--variant d2l at --resize 60"),
    ({"warmup": 6.0}, "--warmup: 6 epochs of warm-up is more than --epochs 5"),
    ({"train_limit": -1}, "--train-limit: expected an integer from 0 to 60000"),
])
def test_bad_settings_name_the_flag(fields, message):
    with pytest.raises(SettingsError) as e:
        Settings(backend="torch", **fields)
    assert message in str(e.value)


def test_a_named_recipe_fills_what_the_flags_leave():
    s = recipes.from_recipe("chapter", "jax", lr=0.05, epochs=None)
    assert (s.optimizer, s.lr, s.epochs, s.batch_size, s.recipe) == ("sgd", 0.05, 5, 128, "chapter")


def test_input_matrices_resize_as_preprocess_does(data_dir):
    images, _ = data.load("train", data_dir)
    spec = recipes.network(Settings(backend="torch", resize=96))
    rows, cols = data.input_matrices(spec)
    assert rows.shape == (96, 28) and cols.shape == (96, 28) and rows.dtype == np.float32
    x = rows @ images[:8].astype(np.float32) @ cols.T  # what every backend computes, in float32
    np.testing.assert_allclose(x, data.preprocess(images[:8], spec)[:, 0], atol=1e-6)


def test_the_chapters_interpolation_differs_only_by_its_rounding(data_dir):
    """The chapter resizes PIL images (torchvision's Resize: bilinear, half-pixel centres) and then
    scales the bytes; ours is the same filter without PIL's rounding to bytes after each of its two
    passes: at most one grey level apart, a sixth of one on average."""
    image_module = pytest.importorskip("PIL.Image")
    images, _ = data.load("test", data_dir)
    spec = recipes.network(Settings(backend="torch", resize=224))
    ours = data.preprocess(images[:16], spec)[:, 0] * 255
    theirs = np.stack([np.asarray(image_module.fromarray(im).resize((224, 224), image_module.BILINEAR), np.float32)
                       for im in images[:16]])
    assert np.abs(ours - theirs).max() <= 1 + 1e-3 and np.abs(ours - theirs).mean() < 0.25


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    s = Settings(backend="torch", resize=72, epochs=2)
    w = weights.init(recipes.network(s), 0)
    record = {"type": "epoch", "epoch": 1, "step": 4, "lr": 0.1, "train_loss": 2.3, "train_accuracy": 0.1,
              "test_loss": 2.2, "test_accuracy": 0.2, "test_zero_logits": 0.0, "images_per_second": 10.0,
              "train_seconds": 1.0, "wall_seconds": 1.5}
    runs.write_checkpoint(run, weights=w, optimizer={"step": np.array(4)}, meta={
        "backend": "torch", "settings": s.to_dict(), "epoch": 1, "step": 4, "rng": {"seed": 0}, "records": [record]})
    header = {"type": "header", "format": runs.METRICS_FORMAT, "backend": "torch", "variant": "d2l", "device": "cpu",
              "device_name": "x", "versions": {}, "settings": s.to_dict(), "command": "nin train", "created": "now"}
    runs.write_metrics(run, [header, record])
    return run


def test_checkpoint_round_trip_keeps_zero_dim_tensors(tmp_path):
    run = _fake_run(tmp_path)
    w, opt, meta = runs.read_checkpoint(run)
    assert opt["step"].shape == () and meta["epoch"] == 1 and "block0.conv0.weight" in w


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "not a readable checkpoint"),
    (lambda b: b[:-9] + bytes([b[-9] ^ 0xFF]) + b[-8:], "the file is corrupt"),
    (lambda b: b"", "not a readable checkpoint"),
])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys, damage, message):
    run = _fake_run(tmp_path)
    path = run / runs.CHECKPOINT
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunError, match=message):
        runs.read_checkpoint(run)
    assert nin("train", "--backend", "torch", "--out", run, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:1] + ["{not json"], ":2: not valid JSON"),
    (lambda lines: lines[1:], ":1: the first line must be the header"),
    (lambda lines: [lines[0].replace('"lr": 0.1', '"lr": -3')] + lines[1:], "settings: --lr"),
    (lambda lines: lines[:1] + [lines[1].replace('"test_accuracy": 0.2', '"test_accuracy": "high"')],
     "test_accuracy: expected a number"),
    (lambda lines: lines[:1] + [lines[1].replace('"epoch": 1', '"epoch": 3')], "epoch 3 follows epoch 0"),
])
def test_damaged_metrics_are_one_line_errors(tmp_path, capsys, edit, message):
    run = _fake_run(tmp_path)
    path = run / runs.METRICS
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(RunError, match=message):
        runs.read_metrics(run)
    assert nin("report", run) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.main_env  # the report is the driver's (SciPy's t distribution): it runs in the main environment
def test_tost_agrees_within_the_margin_and_not_beyond():
    a = {s: 80.0 + d for s, d in enumerate([0.1, -0.2, 0.3, 0.0, -0.1])}
    b = {s: 80.0 + d for s, d in enumerate([0.0, -0.1, 0.2, 0.1, -0.2])}
    close = reports.equivalence(a, b, margin=0.5)
    assert close["kind"] == "paired" and close["n"] == 5 and close["equivalent"] and close["p_tost"] < 0.05
    d = np.array([a[s] - b[s] for s in a])
    half = 2.1318468 * d.std(ddof=1) / math.sqrt(5)  # t(0.95, 4)
    np.testing.assert_allclose(close["ci90"], [d.mean() - half, d.mean() + half], rtol=1e-6)
    far = reports.equivalence(a, {s: v - 1.0 for s, v in b.items()}, margin=0.5)
    assert not far["equivalent"] and far["p_tost"] > 0.05


# --- every backend, in its own process ----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(backend, data_dir, tmp_path_factory):
    """One uninterrupted two-epoch run through `nin train`."""
    require_backend(backend)
    out = tmp_path_factory.mktemp(f"train-{backend}") / "run"
    assert nin("train", "--backend", backend, *TINY, "--out", out, "--quiet") == 0
    return out


def test_train_writes_metrics_and_checkpoints(trained, backend):
    header, epochs, others = runs.read_metrics(trained)
    assert header["backend"] == backend and header["settings"]["resize"] == 72 and header["command"].startswith("nin")
    assert header["versions"] and header["device"] == "cpu" and not others
    assert [e["epoch"] for e in epochs] == [1, 2] and [e["step"] for e in epochs] == [4, 8]
    for e in epochs:
        assert 1.5 < e["train_loss"] < 3.5 and 0 <= e["test_accuracy"] <= 1 and e["images_per_second"] > 0
    w, opt, meta = runs.read_checkpoint(trained)
    assert meta["epoch"] == 2 and meta["step"] == 8 and opt  # momentum state travels with the weights
    spec = recipes.network(runs.settings_from(meta["settings"], "checkpoint"))
    weights.check(spec, w)
    assert not same_weights(w, weights.init(spec, 0))


@pytest.fixture(scope="module")
def killed(trained, backend, tmp_path_factory):
    """The same run, killed with SIGKILL in the middle of epoch 2 (two batches into it)."""
    out = tmp_path_factory.mktemp(f"killed-{backend}") / "run"
    s = runs.stored_settings(trained)
    cmd = processes.worker_command(backend, "training.worker", [
        "train", "--settings", json.dumps(s.to_dict()), "--out", str(out), "--quiet",
        "--kill-at-step", str(STEPS_PER_EPOCH + 2)])
    proc = subprocess.run(cmd, cwd=processes.ROOT, env=processes.environment_for(backend), capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return out


def test_a_run_killed_mid_epoch_resumes_bitwise(trained, killed, backend, tmp_path):
    """kill -9 in the middle of epoch 2, then `nin train --resume`: the same weights, bit for bit, and
    the same optimizer state and epoch records as the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    assert runs.read_checkpoint(out)[2]["epoch"] == 1 and len(runs.read_metrics(out)[1]) == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the kill left no half-written file
    assert nin("train", "--backend", backend, "--out", out, "--resume", "--quiet") == 0
    w_full, opt_full, meta_full = runs.read_checkpoint(trained)
    w_resumed, opt_resumed, meta_resumed = runs.read_checkpoint(out)
    assert same_weights(w_resumed, w_full)
    assert same_weights(opt_resumed, opt_full)
    keys = ("step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_zero_logits")
    assert [{k: e[k] for k in keys} for e in meta_resumed["records"]] == \
        [{k: e[k] for k in keys} for e in meta_full["records"]]
    assert [o["type"] for o in runs.read_metrics(out)[2]] == ["resume"]


def test_resume_refuses_other_settings(trained, backend, capsys):
    assert nin("train", "--backend", backend, "--out", trained, "--resume", "--lr", "0.3") == 2
    assert f"--lr 0.3 (the run has {recipes.RECIPES['tuned']['lr']:g})" in capsys.readouterr().err


def test_a_diverging_run_stops_with_a_clear_message(backend, data_dir, tmp_path, capfd):
    require_backend(backend)
    out = tmp_path / "diverged"
    code = nin("train", "--backend", backend, *TINY, "--variant", "d2l-linear-head", "--optimizer", "sgd",
               "--lr", "100", "--warmup", "0", "--out", out, "--quiet")
    err = capfd.readouterr().err
    assert code == 1
    assert "diverged: loss" in err and "epoch 1" in err and "no epoch finished" in err, err
    assert "Traceback" not in err
    _, epochs, others = runs.read_metrics(out)
    assert not epochs and others[-1]["type"] == "diverged"
    assert not (out / runs.CHECKPOINT).exists()


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(killed, backend, tmp_path, capfd):
    """Blow the last block's weights up in the valid checkpoint of epoch 1: epoch 2 diverges, the run
    stops, and the checkpoint it started from is still there, unchanged."""
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    w, opt, meta = runs.read_checkpoint(out)
    w = {k: v * np.float32(1e20) if k.startswith("block3.") and k.endswith(".weight") else v for k, v in w.items()}
    runs.write_checkpoint(out, weights=w, optimizer=opt, meta={k: v for k, v in meta.items() if k != "sha256"})
    before = (out / runs.CHECKPOINT).read_bytes()
    assert nin("train", "--backend", backend, "--out", out, "--resume", "--quiet") == 1
    err = capfd.readouterr().err
    assert "diverged" in err and "kept the last good checkpoint" in err and "after epoch 1" in err, err
    assert (out / runs.CHECKPOINT).read_bytes() == before
    assert runs.read_metrics(out)[2][-1]["type"] == "diverged"


def test_plot_and_report_read_the_runs(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert nin("plot", trained, "--out", png) == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in capsys.readouterr().out  # plot names what it wrote
    assert nin("report", trained, "--json") == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary[0]["complete"] == 1 and summary[0]["seconds_per_epoch"] > 0


def test_lr_find_writes_the_curve(backend, data_dir, tmp_path):
    require_backend(backend)
    pytest.importorskip("matplotlib")
    out = tmp_path / "lr"
    assert nin("lr-find", "--backend", backend, "--resize", "72", "--batch-size", "8", "--train-limit", "64",
               "--steps", "6", "--min-lr", "0.001", "--max-lr", "1", "--out", out, "--quiet") == 0
    result = json.loads((out / f"{backend}-d2l" / "lr_find.json").read_text())
    assert len(result["losses"]) == 6 and result["lrs"][0] == pytest.approx(0.001)
    assert (out / "lr_find.png").is_file() and "LR range test" in (out / "lr_find.md").read_text()


@pytest.mark.main_env
def test_every_backend_trains_the_same_recipe_alike(data_dir, tmp_path):
    """Dropout off (the only stream the backends draw apart), momentum, weight decay and a warm-up: the
    same canonical init and batches give the same losses and, to float32 noise, the same weights. Every
    registered backend, each with nin train's default --compile compiled (Keras on PyTorch's torch.compile
    of the resize layer once failed in Inductor: nin_tf/loop.py InputResize)."""
    spec_file = tmp_path / "d2l-nodrop.json"
    spec_file.write_text(specs.get("d2l").with_dropout(0.0).to_json())
    names = [b for b in backends.BACKENDS if not _missing(b)]  # Keras on JAX and PyTorch too, compiled as by default
    if len(names) < 2:
        pytest.skip(f"fewer than two backends installed here ({names})")
    out = {b: tmp_path / b for b in names}

    def train(b: str) -> subprocess.CompletedProcess:  # `nin train` as typed, two at a time (CI's two cores)
        return subprocess.run([sys.executable, "-m", "nin", "train", "--backend", b, "--variant", str(spec_file),
                               "--resize", "72", "--train-limit", "24", "--test-limit", "16", "--batch-size", "8",
                               "--epochs", "1", "--warmup", "1", "--out", str(out[b]), "--quiet"],
                              cwd=processes.ROOT, capture_output=True, text=True, timeout=HANG_S)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for b, r in zip(names, pool.map(train, names)):
            assert r.returncode == 0, f"{b}: {r.stderr[-2000:]}"
    init = weights.init(specs.get("d2l"), 0)
    ref_w, _, ref_meta = runs.read_checkpoint(out[names[0]])
    for b in names[1:]:
        w, _, meta = runs.read_checkpoint(out[b])
        assert meta["records"][0]["train_loss"] == pytest.approx(ref_meta["records"][0]["train_loss"], rel=1e-5)
        for k in ref_w:
            ours, theirs = w[k] - init[k], ref_w[k] - init[k]
            assert np.linalg.norm(ours - theirs) <= 3e-2 * np.linalg.norm(theirs), (b, k)


def _missing(backend: str) -> list[str]:
    python = processes.python_for(backend)
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    code = subprocess.run([python, "-c", probe, *backends.get(backend).requires], capture_output=True).returncode
    return ["missing"] if code else []


def test_the_worker_refuses_bad_settings_json(tmp_path):
    cmd = processes.worker_command("torch", "training.worker", ["train", "--settings", '{"backend": "torch", "lr": 0}',
                                                                "--out", str(tmp_path / "x")])
    proc = subprocess.run(cmd, cwd=processes.ROOT, env={**os.environ, **processes.environment_for("torch")},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--lr: expected a number" in proc.stderr
