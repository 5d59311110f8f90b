"""Dropout replayed exactly: the reference applies a backend's own masks (common.reference, masks=), each backend's
loop hands over the masks its step drew (loop.dropout_masks), and the matrix judges the scheduled case of a small
network with dropout on against the replay (conformance.replay, conformance.compare.with_replay)."""

import dataclasses

import numpy as np
import pytest
from tiny_records import CASES, metadata, synthetic_tensors, tiny

from common import reference, weights
from common import spec as specs
from common.spec import Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock, walk
from conformance import errormodel, records, replay
from conformance.cases import (
    PROBE,
    PROBE_CASES,
    dropout_shapes,
    masks_of,
    replays_dropout,
    scheduled,
    scheduled_steps,
    training_batches,
)
from conformance.compare import as_updates, bounds_for, check_values, with_replay
from harness import processes

TINY = NetSpec("tiny-dropout", (2, 8, 8), 4, (
    NiNBlock(3, kernel_size=3, stride=1, padding=1, mlp=(3,)), MaxPool(2, 2, 0), Dropout(0.5),
    NiNBlock(4, kernel_size=1, stride=1, padding=0, mlp=()), GlobalAvgPool(), Flatten()))


def _masks(spec, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [op.in_shape for op in walk(spec) if op.kind == "dropout"]
    return [(rng.random((n, *s)) >= layer.rate).astype(np.float64)
            for s, layer in zip(shapes, [x for x in spec.layers if isinstance(x, Dropout)])]


def test_reference_applies_the_masks_it_is_given():
    w = weights.random_weights(TINY, 3)
    images = np.random.default_rng(0).random((2, *TINY.input_shape))
    masks = _masks(TINY, 2, 1)
    _, outputs = reference.forward(TINY, w, images, training=True, masks=masks, return_layer_outputs=True)
    assert np.array_equal(outputs[2], outputs[1] * masks[0] / 0.5)
    assert np.count_nonzero(outputs[2]) < np.count_nonzero(outputs[1])  # some kept units were dropped


def test_reference_gradient_through_dropout_matches_finite_differences():
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.random_weights(TINY, 3).items()}
    images, labels = np.random.default_rng(0).random((2, *TINY.input_shape)), np.array([1, 3])
    masks = _masks(TINY, 2, 1)
    _, grads = reference.loss_and_grads(TINY, w, images, labels, masks=masks)
    name, h = "block0.conv0.weight", 1e-6
    for index in [(0, 0, 1, 1), (2, 1, 0, 2)]:
        moved = {}
        for sign in (1, -1):
            v = {k: a.copy() for k, a in w.items()}
            v[name][index] += sign * h
            moved[sign] = reference.loss_and_grads(TINY, v, images, labels, masks=masks)[0]
        assert abs((moved[1] - moved[-1]) / (2 * h) - grads[name][index]) < 1e-7


def test_reference_refuses_training_dropout_without_the_right_masks():
    w = weights.random_weights(TINY, 3)
    images = np.random.default_rng(0).random((2, *TINY.input_shape))
    with pytest.raises(ValueError, match="the reference draws no dropout masks"):
        reference.forward(TINY, w, images, training=True)
    with pytest.raises(ValueError, match="0 dropout masks for 1 dropout layers"):
        reference.forward(TINY, w, images, training=True, masks=[])
    with pytest.raises(ValueError, match=r"dropout0's mask has shape \(2, 3, 4\), its input \(2, 3, 4, 4\)"):
        reference.forward(TINY, w, images, training=True, masks=[np.ones((2, 3, 4))])
    assert reference.forward(TINY.with_dropout(0.0), w, images, training=True).shape == (2, 4)  # rate 0: no masks


def test_only_small_networks_with_dropout_replay_it():
    assert replays_dropout(PROBE) and replays_dropout(TINY)
    assert not replays_dropout(TINY.with_dropout(0.0))  # nothing to replay
    assert not any(replays_dropout(specs.get(v)) for v in specs.VARIANTS)  # their copies take minutes per record


def _recorded(spec, cases, data, masks) -> dict:
    """What a perfect backend records for the scheduled case with these masks."""
    out = scheduled(spec, cases, data, masks=masks)
    out.update({f"scheduled/masks/{t}/{j}": m for t, step in enumerate(masks) for j, m in enumerate(step)})
    kept = np.random.default_rng(9).random((16, 1024, 1, 1)) >= 0.75  # the dropout probe, dropping as it should
    out.update({"dropout/0/train": kept / 0.25, "dropout/0/eval": np.ones(kept.shape)})
    return out


def _drawn(spec, cases, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[(rng.random(s) >= 0.75).astype(np.float64) for s in batch]
            for _ in range(cases.scheduled_epochs) for batch in dropout_shapes(spec, cases)]


def _judge(values: dict, data_dir) -> dict:
    spec, cases = PROBE, PROBE_CASES
    init = weights.init(spec, cases.init_seed)
    values = as_updates(values, init)
    ref, bounds, dropout = with_replay(spec, cases, init, values, reference={}, bounds={}, hyperparameters="exact",
                                       running_variance="biased", precision="fp32", data_dir=data_dir)
    rows = check_values(spec.name, "t", "reference", values=values, reference={**ref, "dropout/0/rate": [0.75]},
                        bounds=bounds, precision="fp32", dropout=dropout)
    return {r.check: r for r in rows}


def test_the_replay_passes_a_run_with_its_own_masks_and_fails_one_with_others(data_dir):
    data = training_batches(PROBE, PROBE_CASES, data_dir)
    masks = _drawn(PROBE, PROBE_CASES, 0)
    rows = _judge(_recorded(PROBE, PROBE_CASES, data, masks), data_dir)
    assert all(rows[c].passed for c in ("scheduled_trajectory", "scheduled_final_weights", "scheduled_evaluation"))
    other = _recorded(PROBE, PROBE_CASES, data, _drawn(PROBE, PROBE_CASES, 1))  # the step drew other masks
    other.update({k: v for k, v in _recorded(PROBE, PROBE_CASES, data, masks).items() if "/masks/" in k})
    rows = _judge(other, data_dir)
    assert rows["scheduled_trajectory"].ratio > 100 and rows["scheduled_final_weights"].ratio > 100


def test_masks_repeated_every_epoch_fail_the_dropout_check(data_dir):
    data = training_batches(PROBE, PROBE_CASES, data_dir)
    first = _drawn(PROBE, PROBE_CASES, 0)[:scheduled_steps(PROBE_CASES)]
    rows = _judge(_recorded(PROBE, PROBE_CASES, data, first * PROBE_CASES.scheduled_epochs), data_dir)
    assert rows["scheduled_trajectory"].passed  # replayed exactly: only the statistic sees it
    assert not rows["dropout"].passed and "successive epochs" in rows["dropout"].detail
    independent = replay.epoch_independence(_recorded(PROBE, PROBE_CASES, data, _drawn(PROBE, PROBE_CASES, 0)),
                                            PROBE, PROBE_CASES)
    assert independent and all(ratio <= 1 for ratio, _, _ in independent)


def test_a_record_without_masks_fails_and_says_so(data_dir):
    data = training_batches(PROBE, PROBE_CASES, data_dir)
    values = {k: v for k, v in _recorded(PROBE, PROBE_CASES, data, _drawn(PROBE, PROBE_CASES, 0)).items()
              if "/masks/" not in k}
    assert replay.epoch_independence(values, PROBE, PROBE_CASES)[0][2] == "scheduled/masks/0/0: missing"
    with pytest.raises(KeyError):
        masks_of(values, PROBE)


def test_replayed_spreads_are_the_error_models_measure(data_dir):
    """The replay's bounds come from SCHEDULED_MEMBERS perturbed copies with the record's masks, as the stored
    error model's do: a spread per trajectory step, every one positive and far below the run's own size."""
    data = training_batches(PROBE, PROBE_CASES, data_dir)
    values = _recorded(PROBE, PROBE_CASES, data, _drawn(PROBE, PROBE_CASES, 0))
    exact, spreads = replay.replayed(PROBE, PROBE_CASES, values, hyperparameters="exact", precision="fp32",
                                     data_dir=data_dir)
    trajectory = spreads["scheduled/trajectory"]
    assert trajectory.shape == exact["scheduled/trajectory"].shape and np.all(trajectory > 0)
    assert np.all(trajectory < 1e-3 * np.abs(exact["scheduled/trajectory"]))
    assert errormodel.SCHEDULED_MEMBERS >= 32
    assert bounds_for(exact, spreads, "fp32")["scheduled/trajectory"].shape == trajectory.shape


def test_torch_hands_over_the_masks_its_step_applied(data_dir):
    """What nn.Dropout really did in train_epoch (forward hooks) is what dropout_masks draws again."""
    if processes.missing_here("torch"):
        pytest.skip("PyTorch is not installed in this environment")
    loop = processes.load("torch", "loop")
    import torch
    spec, cases = PROBE, PROBE_CASES
    trainer = loop.make_trainer(spec, np.full(3, 0.01), momentum=0.0, weight_decay=0.0, device="cpu",
                                compile="eager")
    loop.load_state(trainer, weights.init(spec, 0), {}, 0)
    seen = []
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(lambda module, args, out: seen.append((args[0].detach().numpy() != 0, out.detach().numpy() != 0)))
    data = training_batches(spec, cases, data_dir)
    loop.train_epoch(trainer, data.images, data.labels, batch_size=cases.scheduled_batch, dropout_seed=7,
                     progress=lambda *a: None)
    applied = list(seen)
    drawn = loop.dropout_masks(trainer, dropout_shapes(spec, cases), dropout_seed=7)
    assert [m.shape for _, m in applied] == [batch[0].shape for batch in drawn]
    for (nonzero, kept), batch in zip(applied, drawn):  # a unit whose input is 0 shows nothing of its mask
        assert nonzero.mean() > 0.3 and np.array_equal(kept[nonzero], batch[0][nonzero].astype(bool))
    assert not np.array_equal(drawn[0][0], loop.dropout_masks(trainer, dropout_shapes(spec, cases),
                                                              dropout_seed=8)[0][0])


def test_a_record_holds_every_mask_of_0_and_1(tmp_path):
    base = tiny()
    spec = dataclasses.replace(base, name="tiny-drop", layers=base.layers[:2] + (Dropout(0.5),) + base.layers[2:])
    tensors = synthetic_tensors(spec)
    masks = [k for k in tensors if "/scheduled/masks/" in k]
    assert len(masks) == CASES.scheduled_epochs * scheduled_steps(CASES)
    tensors.update({k: np.ones_like(tensors[k]) for k in masks})
    path = records.write_record(tmp_path / "good.safetensors", tensors, metadata(spec))
    assert records.read_record(path).specs["tiny-drop"] == spec
    bad = dict(tensors)
    bad[masks[2]] = np.full_like(tensors[masks[2]], 0.5)
    records.write_record(tmp_path / "half.safetensors", bad, metadata(spec))
    with pytest.raises(records.RecordError, match=f"tensor {masks[2]} holds 0.5: a keep mask holds 0 and 1 only"):
        records.read_record(tmp_path / "half.safetensors")
    records.write_record(tmp_path / "short.safetensors", {k: v for k, v in tensors.items() if k != masks[0]},
                         metadata(spec))
    with pytest.raises(records.RecordError, match="missing tensor"):
        records.read_record(tmp_path / "short.safetensors")
