"""nin_mxnet's train.make_optimizer, train.train_step and loop.py against the backend contract
(common/backends.py): the suite's SGD (SuiteSGD in a gluon.Trainer) with a per-step table read at
MXNet's num_update, framework-neutral checkpoints (export_state / load_state), a bitwise resume, and
canonical (PyTorch-written) checkpoints continued in Gluon.

Everything runs in float64 on the CPU, on the tiny conformance.cases.PROBE network, so that 1e-10 separates
a right SGD from a wrong one. MXNet's optimizer is exact: the rate is the float64 table's entry as it
is, momentum and weight decay as given (a float32 rate is ~1e-8 off: the reduced case's fp64 scheduled
check then fails by ~6e5 times its bound). Only batch norm's momentum is a float32 in MXNet's kernel
(model.HYPERPARAMETERS == "float32", conformance.cases.as_kernels_see)."""

from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import pytest
from conftest import require_backend

from common import calc, reference, weights
from common.data import input_matrices
from conformance import cases
from harness import processes

SPEC = cases.PROBE
NODROP = SPEC.with_dropout(0.0)
MOMENTUM, WEIGHT_DECAY = 0.875, 2.0 ** -6  # exact in float32: PyTorch's run and MXNet's see the same
LRS = np.array([0.05, 0.3, 0.1, 0.07, 0.2, 0.03, 0.15, 0.11])  # not float32 numbers: a float32 table shows
TOL = 1e-10


def f32(value: float) -> float:
    """What MXNet's optimizer sees of momentum or weight decay, as float64."""
    return float(np.float32(value))


@pytest.fixture(scope="module")
def mx():
    """(model, train, loop) of nin_mxnet, with conformance numerics on the CPU."""
    model = require_backend("mxnet")
    train = processes.load("mxnet", "train")
    train.configure("cpu", "fp64")
    assert model.HYPERPARAMETERS == "float32"
    return model, train, processes.load("mxnet", "loop")


def _uint8_data(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, SPEC.num_classes, n)


def _resized(spec, images: np.ndarray) -> np.ndarray:
    """What the loops feed the network, computed by the reference in float64 (NCHW)."""
    rows, cols = input_matrices(spec)
    return reference.resize(images, rows.astype(np.float64), cols.astype(np.float64), spec.input_shape[0])


def _batches(images, labels, batch_size):
    return [(images[s:s + batch_size], labels[s:s + batch_size]) for s in range(0, len(images), batch_size)]


def _reference_run(spec, init, batches, lrs, *, first: int = 0, velocity=None, momentum=MOMENTUM,
                   weight_decay=WEIGHT_DECAY):
    """The suite's SGD (reference.sgd_step) over NCHW float64 batches, steps first.. using lrs[t]
    (the last entry past the end): (losses, weights with the running statistics (biased variance),
    canonical momentum buffers)."""
    w = {k: np.array(v, dtype=np.float64) for k, v in init.items()}
    running = {k: w[k].copy() for k in w if k.endswith((".running_mean", ".running_var"))}
    running.update({k + "_unbiased": v.copy() for k, v in running.items() if k.endswith(".running_var")})
    velocity = {k: np.array(v, dtype=np.float64) for k, v in (velocity or {}).items()}
    losses = []
    for t, (x, y) in enumerate(batches, start=first):
        loss, grads = reference.loss_and_grads(spec, w, x, y, running=running)
        reference.sgd_step(w, grads, velocity, lr=float(lrs[min(t, len(lrs) - 1)]), momentum=momentum,
                           weight_decay=weight_decay)
        losses.append(loss)
    return losses, {**w, **{k: v for k, v in running.items() if not k.endswith("_unbiased")}}, velocity


def _assert_trainable_close(got: dict, want: dict, tol: float = TOL):
    names = [k for k in want if calc.is_trainable(k)]
    assert names and set(names) <= set(got)
    for k in names:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=tol, err_msg=k)


def _trainer(loop, lrs=LRS, *, compile="compiled", spec=NODROP, momentum=MOMENTUM, dtype="float64"):
    return loop.make_trainer(spec, lrs, momentum=momentum, weight_decay=WEIGHT_DECAY, device="cpu",
                             compile=compile, dtype=dtype)


def _epoch(loop, trainer, images, labels, *, epoch: int, batch_size: int = 4) -> list:
    losses = []
    loop.train_epoch(trainer, images, labels, batch_size=batch_size, dropout_seed=epoch,
                     progress=lambda n, loss, correct: losses.append((n, loss, correct)))
    return losses


# --- 1. make_optimizer + train_step: the suite's SGD with a changing rate -----------------------
@pytest.mark.parametrize("compile", ["eager", "compiled"])
def test_train_step_is_the_suite_sgd_with_the_table(mx, compile):
    """3 steps of train.train_step with train.make_optimizer (a 2-entry table: the third step uses the
    last entry), momentum 0.9 and weight decay 1e-3 (not float32 numbers), equal common.reference's
    suite-form SGD with exactly these numbers within 1e-10 (and not with float32-rounded ones: the
    test sees the difference)."""
    model_mod, train, _ = mx
    spec, _ = cases.as_kernels_see(NODROP, cases.PROBE_CASES, model_mod.HYPERPARAMETERS)
    rng = np.random.default_rng(7)
    batches = [(rng.random((4,) + NODROP.input_shape), rng.integers(0, NODROP.num_classes, 4)) for _ in range(3)]
    init = weights.random_weights(NODROP, seed=11)
    lrs, momentum, weight_decay = np.array([0.05, 0.3]), 0.9, 1e-3
    model = model_mod.build(NODROP, device="cpu", dtype="float64", compiled=compile == "compiled")
    model_mod.load_weights(model, init)
    optimizer = train.make_optimizer(model, lrs, momentum=momentum, weight_decay=weight_decay)
    steps = [train.train_step(model, optimizer, model_mod.to_input(model, x), y) for x, y in batches]
    got = model_mod.export_weights(model)
    want_losses, want = reference.train_trajectory(spec, init, batches, lr=[0.05, 0.3, 0.3],
                                                   momentum=momentum, weight_decay=weight_decay)
    for (loss, correct), want_loss in zip(steps, want_losses):
        assert isinstance(loss, float) and isinstance(correct, int)
        assert abs(loss - want_loss) < TOL
    _assert_trainable_close(got, want)
    x, y = batches[0]  # the first step's count: argmax of the logits before its update
    assert steps[0][1] == int((reference.forward(NODROP, init, x, training=True).argmax(1) == y).sum())
    assert optimizer._optimizer.num_update == 3
    for other in ({"lr": [0.05, 0.3, 0.3], "momentum": f32(momentum), "weight_decay": f32(weight_decay)},
                  {"lr": [f32(0.05), f32(0.3), f32(0.3)], "momentum": f32(momentum),
                   "weight_decay": f32(weight_decay)}):
        _, apart = reference.train_trajectory(spec, init, batches, **other)
        assert max(np.abs(got[k] - apart[k]).max() for k in apart if calc.is_trainable(k)) > 10 * TOL, other


def test_the_table_is_the_only_rate(mx):
    """The rate of step t is lrs[t] read at num_update (t + 1 when update() asks), the last entry
    past the end; Gluon refuses set_learning_rate on an optimizer with a scheduler."""
    model_mod, train, _ = mx
    model = model_mod.build(NODROP, device="cpu", dtype="float64")
    optimizer = train.make_optimizer(model, LRS[:3])
    schedule = optimizer._optimizer.lr_scheduler
    assert isinstance(schedule, train.TableSchedule) and schedule.lrs.dtype == np.float64
    assert [schedule(t + 1) for t in range(5)] == [0.05, 0.3, 0.1, 0.1, 0.1]
    with pytest.raises(UserWarning, match="LRScheduler"):
        optimizer.set_learning_rate(0.5)


def test_plain_sgd_has_no_momentum_buffers(mx):
    """momentum 0: w -= lr * (g + wd * w), no buffer: export_state gives {} and the step count."""
    _, _, loop = mx
    images, labels = _uint8_data(8)
    trainer = _trainer(loop, momentum=0.0)
    loop.load_state(trainer, weights.init(NODROP, 0), {}, 0)
    _epoch(loop, trainer, images, labels, epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    assert optimizer == {} and step == 2
    batches = [(_resized(NODROP, x), y) for x, y in _batches(images, labels, 4)]
    _, want, _ = _reference_run(NODROP, weights.init(NODROP, 0), batches, LRS, momentum=0.0)
    _assert_trainable_close(w, want)


# --- 2. export_state -> load_state -> continue == not stopping, bitwise ---------------------------
@pytest.mark.parametrize("compile", ["eager", "compiled"])
def test_resume_is_bitwise(mx, compile):
    """Two epochs (a partial last batch each, dropout on) in one trainer == one epoch, export_state,
    load_state into a new trainer, the second epoch: losses, weights, momentum and step bitwise."""
    _, _, loop = mx
    images, labels = _uint8_data(10)
    order = np.random.default_rng(1).permutation(10)
    epochs = [(images, labels), (images[order], labels[order])]
    init = weights.init(SPEC, 0)

    straight = _trainer(loop, compile=compile, spec=SPEC)
    loop.load_state(straight, init, {}, 0)
    want = [_epoch(loop, straight, *data, epoch=e) for e, data in enumerate(epochs)]
    want_state = loop.export_state(straight)

    first = _trainer(loop, compile=compile, spec=SPEC)
    loop.load_state(first, init, {}, 0)
    got = [_epoch(loop, first, *epochs[0], epoch=0)]
    w, optimizer, step = loop.export_state(first)
    assert step == 3 and sorted(optimizer) == sorted(f"momentum/{k}" for k in w if calc.is_trainable(k))
    second = _trainer(loop, compile=compile, spec=SPEC)
    loop.load_state(second, w, optimizer, step)
    got.append(_epoch(loop, second, *epochs[1], epoch=1))
    got_state = loop.export_state(second)

    assert [n for n, _, _ in got[0]] == [4, 4, 2]  # the partial last batch is kept
    assert got == want
    assert got_state[2] == want_state[2] == 6
    for g, e in zip(got_state[:2], want_state[:2]):
        assert sorted(g) == sorted(e)
        for k in e:
            assert g[k].dtype == e[k].dtype == np.float64 and np.array_equal(g[k], e[k]), k


# --- 3. framework-neutral checkpoints in: the reference's and PyTorch's ---------------------------
def test_reference_checkpoint_continues(mx):
    """A checkpoint in canonical form written by hand, as PyTorch's loop writes one (the reference's
    weights, momentum buffers and step after 3 steps), loads, and 3 more steps of the loop at lrs[3..]
    equal the reference's uninterrupted 6 steps within 1e-10; export_state gives the buffers back in
    canonical form."""
    _, _, loop = mx
    images, labels = _uint8_data(12, seed=4)
    batches = [(_resized(NODROP, x), y) for x, y in _batches(images, labels, 4)]
    order = np.random.default_rng(2).permutation(12)
    later = [(_resized(NODROP, x), y) for x, y in _batches(images[order], labels[order], 4)]
    init = weights.init(NODROP, 5)
    _, middle, velocity = _reference_run(NODROP, init, batches, LRS)
    want_losses, want, want_velocity = _reference_run(NODROP, middle, later, LRS, first=3, velocity=velocity)

    trainer = _trainer(loop)
    loop.load_state(trainer, middle, {f"momentum/{k}": v for k, v in velocity.items()}, 3)
    got = _epoch(loop, trainer, images[order], labels[order], epoch=1)
    np.testing.assert_allclose([loss for _, loss, _ in got], want_losses, rtol=0, atol=TOL)
    w, optimizer, step = loop.export_state(trainer)
    assert step == 6
    _assert_trainable_close(w, want)
    _assert_trainable_close({k[len("momentum/"):]: v for k, v in optimizer.items()}, want_velocity, 1e-8)


TORCH_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from common import weights
    from conformance import cases
    from harness import processes
    loop = processes.load("torch", "loop")
    spec = cases.PROBE.with_dropout(0.0)
    lrs, momentum, weight_decay, images, labels = (np.load(sys.argv[1])[k] for k in
                                                   ("lrs", "momentum", "weight_decay", "images", "labels"))
    trainer = loop.make_trainer(spec, lrs, momentum=float(momentum), weight_decay=float(weight_decay),
                                device="cpu", compile="eager", dtype="float64")
    loop.load_state(trainer, weights.init(spec, 2), {}, 0)
    loop.train_epoch(trainer, images, labels, batch_size=4, dropout_seed=0, progress=lambda *a: None)
    w, optimizer, step = loop.export_state(trainer)
    np.savez(sys.argv[2], step=step, **{"weights/" + k: v for k, v in w.items()}, **optimizer)
""")


def test_torch_checkpoint_continues(mx, tmp_path):
    """PyTorch's loop (nin_torch.loop, in PyTorch's own environment: MXNet's has no torch) trains 3
    steps and exports; Gluon loads that checkpoint and trains 3 more: the weights equal the reference's
    uninterrupted 6 steps within 1e-10."""
    python = processes.python_for("torch")
    _, _, loop = mx
    images, labels = _uint8_data(12, seed=8)
    order = np.random.default_rng(6).permutation(12)
    np.savez(tmp_path / "in.npz", lrs=LRS, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, images=images, labels=labels)
    proc = subprocess.run([python, "-c", TORCH_RUN, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          env=processes.environment_for("torch"), capture_output=True, text=True, timeout=600)
    if proc.returncode and "No module named 'torch'" in proc.stderr:
        pytest.skip(f"no PyTorch environment ({python} lacks torch): "
                    "test_reference_checkpoint_continues covers a canonical checkpoint")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as z:
        w = {k[len("weights/"):]: z[k] for k in z.files if k.startswith("weights/")}
        optimizer = {k: z[k] for k in z.files if k.startswith("momentum/")}
        step = int(z["step"])
    assert step == 3 and optimizer

    ours = _trainer(loop)
    loop.load_state(ours, w, optimizer, step)
    _epoch(loop, ours, images[order], labels[order], epoch=1)
    got, _, got_step = loop.export_state(ours)
    batches = [(_resized(NODROP, x), y) for x, y in _batches(images, labels, 4)]
    batches += [(_resized(NODROP, x), y) for x, y in _batches(images[order], labels[order], 4)]
    _, want, _ = _reference_run(NODROP, weights.init(NODROP, 2), batches, LRS)
    assert got_step == 6
    _assert_trainable_close(got, want)


def test_bad_checkpoints_name_the_tensor(mx):
    """A momentum buffer missing after step 0, or misshapen, is a ValueError naming the checkpoint and
    the tensor; a fresh optimizer ({} at step 0) is valid."""
    _, _, loop = mx
    trainer = _trainer(loop)
    init = weights.init(NODROP, 0)
    loop.load_state(trainer, init, {}, 0)
    assert loop.export_state(trainer)[1:] == ({}, 0)
    _epoch(loop, trainer, *_uint8_data(4), epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    name = "momentum/block1.conv0.weight"
    with pytest.raises(ValueError, match=f"checkpoint.*{name}"):
        loop.load_state(_trainer(loop), w, {k: v for k, v in optimizer.items() if k != name}, step)
    with pytest.raises(ValueError, match=f"checkpoint.*{name}"):
        loop.load_state(_trainer(loop), w, {**optimizer, name: optimizer[name][:, :1]}, step)


def test_float32_trainer(mx):
    """The default dtype is float32: model, resize and exported state."""
    _, _, loop = mx
    trainer = loop.make_trainer(NODROP, LRS, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, device="cpu",
                                compile="compiled")
    loop.load_state(trainer, weights.init(NODROP, 0), {}, 0)
    _epoch(loop, trainer, *_uint8_data(6), epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    assert step == 2 and trainer.rows.dtype == np.float32
    assert all(v.dtype == np.float32 for v in (*w.values(), *optimizer.values()))
