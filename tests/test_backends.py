"""Every backend against the spec and the NumPy reference: ids read [backend-variant-device].

The fixtures (common/fixtures.py) give random weights in every tensor, random images and labels;
a backend whose framework is absent here skips with the reason (fails under NIN_REQUIRE).
"""

import numpy as np
import pytest

from common import calc, reference, weights
from common.spec import Dropout, Flatten, NetSpec, NiNBlock, GlobalAvgPool
from common.tolerances import CONDITIONING_FACTOR, error, max_abs
from common.weights import WeightsError


@pytest.fixture(scope="module")
def built(bk, spec, canonical_weights, device):
    model_mod, _ = bk
    model = model_mod.build(spec, device=device)
    model_mod.load_weights(model, canonical_weights)
    return model


@pytest.fixture(scope="module")
def ref_logits(spec, canonical_weights, images):
    return reference.forward(spec, canonical_weights, images)


@pytest.fixture(scope="module")
def ref_grads(spec, canonical_weights, images, labels):
    return reference.loss_and_grads(spec.with_dropout(0.0), canonical_weights, images, labels)


def test_layer_shapes_match_spec(bk, built, spec, images):
    model_mod, _ = bk
    assert model_mod.layer_shapes(built, images) == [tuple(s) for s in calc.layer_output_shapes(spec)]


def test_parameter_count_matches_spec(bk, built, spec):
    model_mod, _ = bk
    exported = model_mod.export_weights(built)
    trainable = sum(v.size for k, v in exported.items() if calc.is_trainable(k))
    assert trainable == calc.param_count(spec)
    assert {k: v.shape for k, v in exported.items()} == calc.param_shapes(spec)


def test_weights_round_trip(bk, built, canonical_weights):
    model_mod, _ = bk
    out = model_mod.export_weights(built)
    for name, w in canonical_weights.items():
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], w, err_msg=name)


def test_logits_match_reference(bk, built, images, ref_logits, tolerances):
    model_mod, _ = bk
    logits = model_mod.forward(built, images)
    assert logits.shape == ref_logits.shape
    err = error(logits, ref_logits, tolerances["logits"])
    assert err <= 1.0, f"logits off by {max_abs(logits, ref_logits):.3g} (error {err:.3g} x tolerance)"


def test_gradients_match_reference(bk, spec, canonical_weights, images, labels, ref_grads, tolerances, device):
    model_mod, train_mod = bk
    model = model_mod.build(spec.with_dropout(0.0), device=device)
    model_mod.load_weights(model, canonical_weights)
    loss, grads = train_mod.loss_and_grads(model, images, labels)
    ref_loss, ref = ref_grads
    assert error(loss, ref_loss, tolerances["loss"]) <= 1.0, (loss, ref_loss)
    assert sorted(grads) == sorted(ref)
    worst = max(((error(grads[k], ref[k], tolerances["gradients"]), k) for k in ref))
    assert worst[0] <= 1.0, f"gradient of {worst[1]} off by {worst[0]:.3g} x tolerance"


def test_train_step_matches_reference_sgd(bk, spec, canonical_weights, images, labels, tolerances, device):
    """One step of SGD with momentum and weight decay, twice (the second uses the momentum buffer)."""
    from common.spec import TrainConfig
    model_mod, train_mod = bk
    s = spec.with_dropout(0.0)
    model = model_mod.build(s, device=device)
    model_mod.load_weights(model, canonical_weights)
    config = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = train_mod.make_optimizer(model, config)
    losses = [train_mod.train_step(model, opt, images, labels) for _ in range(2)]
    sgd = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    ref_losses, ref_w = reference.train_trajectory(s, canonical_weights, [(images, labels)] * 2, **sgd)
    # The same steps in NumPy float32: how far float32 alone gets on this case (its conditioning;
    # d2l-bn at batch 2 is ill-conditioned, whoever computes it). See common/tolerances.py.
    losses32, w32 = reference.train_trajectory(s, canonical_weights, [(images, labels)] * 2, dtype=np.float32, **sgd)
    slack = CONDITIONING_FACTOR * np.max(np.abs(losses32 - ref_losses))
    assert error(losses, ref_losses, tolerances["trajectory"], slack) <= 1.0, (losses, ref_losses)
    out = model_mod.export_weights(model)
    for name in ref_w:
        if calc.is_trainable(name):
            slack = CONDITIONING_FACTOR * np.linalg.norm(w32[name] - ref_w[name])
            ratio = error(out[name] - canonical_weights[name], ref_w[name] - canonical_weights[name],
                          tolerances["final_weights"], slack)
            assert ratio <= 1.0, f"{name}: update off by {ratio:.3g} x tolerance"


def test_load_weights_names_the_bad_tensor(bk, built, canonical_weights):
    model_mod, _ = bk
    bad = dict(canonical_weights)
    bad["block0.conv0.weight"] = bad["block0.conv0.weight"][:, :, :-1]
    with pytest.raises(WeightsError, match="block0.conv0.weight"):
        model_mod.load_weights(built, bad)
    missing = {k: v for k, v in canonical_weights.items() if k != "block1.conv1.weight"}
    with pytest.raises(WeightsError, match="block1.conv1.weight"):
        model_mod.load_weights(built, missing)


DROP_RATE = 0.5
DROPOUT_ONLY = NetSpec("dropout-probe", (4096, 1, 1), 4096, (Dropout(DROP_RATE), GlobalAvgPool(), Flatten()))


def test_dropout_acts_in_training_only(bk, device):
    """Training mode zeroes about p of the units and scales the rest by 1/(1-p); evaluation is identity."""
    model_mod, _ = bk
    model = model_mod.build(DROPOUT_ONLY, device=device)
    x = np.ones((8, 4096, 1, 1), dtype=np.float32)
    out_eval = model_mod.forward(model, x, training=False)
    np.testing.assert_array_equal(out_eval, 1.0)
    out_train = model_mod.forward(model, x, training=True, seed=1)
    dropped = float(np.mean(out_train == 0))
    assert abs(dropped - DROP_RATE) < 0.02, f"dropped fraction {dropped:.3f}, expected {DROP_RATE}"
    kept = out_train[out_train != 0]
    np.testing.assert_allclose(kept, 1 / (1 - DROP_RATE), rtol=1e-6)
    again = model_mod.forward(model, x, training=True, seed=2)
    assert not np.array_equal(again, out_train), "the dropout mask does not change with the seed"


def test_json_spec_builds_and_matches_reference(bk, device, tmp_path, tolerances):
    """A spec no variant has (stride 2, odd sizes, padded pool, BN in one block only) from a JSON file."""
    from common.spec import MaxPool
    s = NetSpec("json-probe", (3, 19, 17), 7, (
        NiNBlock(6, kernel=3, stride=2, padding=1, mlp=(5,)), MaxPool(3, 2, 1),
        NiNBlock(8, kernel=2, stride=1, padding=0, mlp=(), batch_norm=True),
        Dropout(0.3), NiNBlock(7, kernel=1, stride=1, padding=0, mlp=(7,), relu_last=False),
        GlobalAvgPool(), Flatten()))
    path = tmp_path / "probe.json"
    path.write_text(s.to_json())
    loaded = NetSpec.from_json_file(path)
    assert loaded == s
    model_mod, _ = bk
    model = model_mod.build(loaded, device=device)
    w = weights.random_weights(loaded, seed=4)
    model_mod.load_weights(model, w)
    x = np.random.default_rng(9).random((3,) + loaded.input_shape, dtype=np.float32)
    assert model_mod.layer_shapes(model, x) == [tuple(t) for t in calc.layer_output_shapes(loaded)]
    got, ref = model_mod.forward(model, x), reference.forward(loaded, w, x)
    assert error(got, ref, tolerances["logits"]) <= 1.0, max_abs(got, ref)
