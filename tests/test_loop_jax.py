"""nin_jax's train.make_optimizer, train.train_step and loop.py against the backend contract
(common/backends.py): the suite's SGD with a per-step table read at optax's count, framework-neutral
checkpoints (export_state / load_state), a bitwise resume, and PyTorch's checkpoints continued in Flax.

Everything runs in float64 on the CPU (jax_enable_x64 on for this module only), on the tiny
conformance.cases.PROBE network, so that 1e-10 separates a right SGD from a wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend

from common import calc, reference, weights
from common.data import input_matrices
from conformance import cases
from harness import processes

SPEC = cases.PROBE
NODROP = SPEC.with_dropout(0.0)
MOMENTUM, WEIGHT_DECAY = 0.875, 2.0 ** -6
LRS = np.array([0.05, 0.3, 0.1, 0.07, 0.2, 0.03, 0.15, 0.11])  # not float32 numbers: a float32 table shows
TOL = 1e-10


@pytest.fixture(scope="module")
def jx():
    """(model, train, loop) of nin_jax, with 64-bit types on for this module and restored after it."""
    model = require_backend("jax")
    import jax
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield model, processes.load("jax", "train"), processes.load("jax", "loop")
    jax.config.update("jax_enable_x64", previous)


def _uint8_data(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, SPEC.num_classes, n)


def _resized(spec, images: np.ndarray) -> np.ndarray:
    """What the loops feed the network, computed by the reference in float64 (NCHW)."""
    rows, cols = input_matrices(spec)
    return reference.resize(images, rows.astype(np.float64), cols.astype(np.float64), spec.input_shape[0])


def _batches(images, labels, batch_size):
    return [(images[s:s + batch_size], labels[s:s + batch_size]) for s in range(0, len(images), batch_size)]


def _reference_run(spec, init, batches, lrs, *, first: int = 0, velocity=None):
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
        reference.sgd_step(w, grads, velocity, lr=float(lrs[min(t, len(lrs) - 1)]), momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)
        losses.append(loss)
    return losses, {**w, **{k: v for k, v in running.items() if not k.endswith("_unbiased")}}, velocity


def _assert_trainable_close(got: dict, want: dict, tol: float = TOL):
    names = [k for k in want if calc.is_trainable(k)]
    assert names and set(names) <= set(got)
    for k in names:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=tol, err_msg=k)


def _trainer(loop, lrs=LRS, *, compile="compiled", spec=NODROP, momentum=MOMENTUM):
    return loop.make_trainer(spec, lrs, momentum=momentum, weight_decay=WEIGHT_DECAY, device="cpu",
                             compile=compile, dtype="float64")


def _epoch(loop, trainer, images, labels, *, epoch: int, batch_size: int = 4) -> list:
    losses = []
    loop.train_epoch(trainer, images, labels, batch_size=batch_size, dropout_seed=epoch,
                     progress=lambda n, loss, correct: losses.append((n, loss, correct)))
    return losses


# --- 1. make_optimizer + train_step: the suite's SGD with a changing rate -----------------------
@pytest.mark.parametrize("compile", ["eager", "compiled"])
def test_train_step_is_the_suite_sgd_with_the_table(jx, compile):
    """3 steps of train.train_step with train.make_optimizer (a 2-entry table: the third step uses the
    last entry), momentum and weight decay, equal common.reference's suite-form SGD within 1e-10."""
    model_mod, train, _ = jx
    rng = np.random.default_rng(7)
    batches = [(rng.random((4,) + NODROP.input_shape), rng.integers(0, NODROP.num_classes, 4)) for _ in range(3)]
    init = weights.random_weights(NODROP, seed=11)
    lrs = np.array([0.05, 0.3])
    model = model_mod.build(NODROP, device="cpu", dtype="float64", compiled=compile == "compiled")
    model_mod.load_weights(model, init)
    optimizer = train.make_optimizer(model, lrs, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model_mod.forward(model, batches[0][0])  # leaves the model in eval mode: train_step must switch it back
    steps = [train.train_step(model, optimizer, model_mod.to_input(model, x), y) for x, y in batches]
    want_losses, want = reference.train_trajectory(NODROP, init, batches, lr=[0.05, 0.3, 0.3], momentum=MOMENTUM,
                                                   weight_decay=WEIGHT_DECAY)
    for (loss, correct), want_loss in zip(steps, want_losses):
        assert isinstance(loss, float) and isinstance(correct, int)
        assert abs(loss - want_loss) < TOL
    _assert_trainable_close(model_mod.export_weights(model), want)
    x, y = batches[0]  # the first step's count: argmax of the logits before its update
    assert steps[0][1] == int((reference.forward(NODROP, init, x, training=True).argmax(1) == y).sum())


def test_plain_sgd_has_no_momentum_buffers(jx):
    """momentum 0: w -= lr * (g + wd * w), no buffer: export_state gives {} and the step count."""
    _, _, loop = jx
    images, labels = _uint8_data(8)
    trainer = _trainer(loop, momentum=0.0)
    loop.load_state(trainer, weights.init(NODROP, 0), {}, 0)
    _epoch(loop, trainer, images, labels, epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    assert optimizer == {} and step == 2
    batches = [(_resized(NODROP, x), y) for x, y in _batches(images, labels, 4)]
    _, want = reference.train_trajectory(NODROP, weights.init(NODROP, 0), batches, lr=LRS,
                                         weight_decay=WEIGHT_DECAY)
    _assert_trainable_close(w, want)


# --- 2. export_state -> load_state -> continue == not stopping, bitwise ---------------------------
@pytest.mark.parametrize("compile", ["eager", "compiled"])
def test_resume_is_bitwise(jx, compile):
    """Two epochs (a partial last batch each, dropout on) in one trainer == one epoch, export_state,
    load_state into a new trainer, the second epoch: losses, weights, momentum and step bitwise."""
    _, _, loop = jx
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

    assert got == want
    assert got_state[2] == want_state[2] == 6
    for g, e in zip(got_state[:2], want_state[:2]):
        assert sorted(g) == sorted(e)
        for k in e:
            assert g[k].dtype == e[k].dtype == np.float64 and np.array_equal(g[k], e[k]), k


def test_no_retrace_per_batch(jx, monkeypatch):
    """The compiled loop traces its step once per batch shape (a partial last batch: once more), and
    not at all in the next epoch; the resize likewise."""
    _, train, loop = jx
    traces = []
    original = train.cross_entropy
    monkeypatch.setattr(train, "cross_entropy", lambda *a: traces.append(1) or original(*a))
    images, labels = _uint8_data(14, seed=9)
    trainer = _trainer(loop)
    loop.load_state(trainer, weights.init(NODROP, 0), {}, 0)
    resize_cache = loop._inputs_jit._cache_size()
    _epoch(loop, trainer, images, labels, epoch=0)  # 3 batches of 4, one of 2
    assert len(traces) <= 2 and loop._inputs_jit._cache_size() - resize_cache <= 2
    before, resize_cache = len(traces), loop._inputs_jit._cache_size()
    loop.evaluate(trainer, images, labels, batch_size=4)  # eval mode between epochs, as nin train does
    _epoch(loop, trainer, images, labels, epoch=1)
    assert len(traces) == before and loop._inputs_jit._cache_size() == resize_cache


# --- 3. framework-neutral checkpoints in: the reference's and PyTorch's ---------------------------
def test_reference_checkpoint_continues(jx):
    """A checkpoint in canonical form written by hand (the reference's weights, momentum buffers
    and step after 3 steps) loads, and 3 more steps of the loop at lrs[3..] equal the reference's
    uninterrupted 6 steps within 1e-10; export_state gives the buffers back in canonical form."""
    _, _, loop = jx
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


def test_torch_checkpoint_continues(jx):
    """PyTorch's loop (nin_torch.loop) trains 3 steps and exports; Flax loads that checkpoint and
    trains 3 more: the weights equal the reference's uninterrupted 6 steps within 1e-10."""
    if processes.missing_here("torch"):
        pytest.skip("torch is not importable here: test_reference_checkpoint_continues covers a canonical one")
    _, _, loop = jx
    torch_loop = processes.load("torch", "loop")
    images, labels = _uint8_data(12, seed=8)
    order = np.random.default_rng(6).permutation(12)
    init = weights.init(NODROP, 2)
    theirs = torch_loop.make_trainer(NODROP, LRS, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, device="cpu",
                                     compile="eager", dtype="float64")
    torch_loop.load_state(theirs, init, {}, 0)
    torch_loop.train_epoch(theirs, images, labels, batch_size=4, dropout_seed=0, progress=lambda *a: None)
    w, optimizer, step = torch_loop.export_state(theirs)
    assert step == 3 and optimizer

    ours = _trainer(loop)
    loop.load_state(ours, w, optimizer, step)
    _epoch(loop, ours, images[order], labels[order], epoch=1)
    got, _, got_step = loop.export_state(ours)
    batches = [(_resized(NODROP, x), y) for x, y in _batches(images, labels, 4)]
    batches += [(_resized(NODROP, x), y) for x, y in _batches(images[order], labels[order], 4)]
    _, want, _ = _reference_run(NODROP, init, batches, LRS)
    assert got_step == 6
    _assert_trainable_close(got, want)


def test_bad_checkpoints_name_the_tensor(jx):
    """A momentum buffer missing after step 0, or misshapen, is a ValueError naming the checkpoint and
    the tensor; a fresh optimizer ({} at step 0) is valid."""
    _, _, loop = jx
    trainer = _trainer(loop)
    init = weights.init(NODROP, 0)
    loop.load_state(trainer, init, {}, 0)
    assert loop.export_state(trainer)[2] == 0
    _epoch(loop, trainer, *_uint8_data(4), epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    name = "momentum/block1.conv0.weight"
    with pytest.raises(ValueError, match=f"checkpoint.*{name}"):
        loop.load_state(_trainer(loop), w, {k: v for k, v in optimizer.items() if k != name}, step)
    with pytest.raises(ValueError, match=f"checkpoint.*{name}"):
        loop.load_state(_trainer(loop), w, {**optimizer, name: optimizer[name][:, :1]}, step)


def test_float32_trainer(jx):
    """The default dtype is float32: model, resize and exported state."""
    _, _, loop = jx
    trainer = loop.make_trainer(NODROP, LRS, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, device="cpu",
                                compile="compiled")
    loop.load_state(trainer, weights.init(NODROP, 0), {}, 0)
    _epoch(loop, trainer, *_uint8_data(6), epoch=0)
    w, optimizer, step = loop.export_state(trainer)
    assert step == 2 and trainer.rows.dtype == np.float32
    assert all(v.dtype == np.float32 for v in (*w.values(), *optimizer.values()))
