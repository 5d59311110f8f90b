"""common/: spec, calculator, reference, weights, data. NumPy only; runs in both environments."""

import gzip
import http.server
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from common import calc, data, reference, weights
from common import spec as S
from common.spec import Dropout, Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock, SpecError

ROOT = Path(__file__).resolve().parent.parent


# --- spec ------------------------------------------------------------------------------------
def test_chapter_shapes_and_parameter_counts():
    d2l = S.get("d2l")
    shapes = [s for s in calc.layer_output_shapes(d2l) if len(s) == 3]
    assert shapes[:6] == [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 5, 5)]
    assert (10, 5, 5) in shapes and calc.layer_output_shapes(d2l)[-1] == (10,)
    assert calc.param_count(d2l) == 1_992_166
    assert calc.param_count(S.get("paper")) == 966_986
    assert [s for s in calc.layer_output_shapes(S.get("paper")) if len(s) == 3][1] == (96, 16, 16)  # 32 -> 16 -> 8


def test_ablations_change_one_thing_each():
    d2l = S.get("d2l")
    single = S.get("d2l-single-1x1")
    assert all(len(b.mlp) == 1 for _, b in single.blocks())
    gradual = list(S.get("d2l-gradual").blocks())[-1][1]
    assert len(gradual.convs) == 3 and gradual.convs[0][0] > gradual.convs[1][0] > gradual.convs[2][0] == 10
    assert not list(S.get("d2l-linear-head").blocks())[-1][1].relu_last
    assert all(b.batch_norm for _, b in S.get("d2l-bn").blocks())
    # batch norm adds a scale and a shift per channel; the conv before it loses its bias
    assert calc.param_count(S.get("d2l-bn")) == calc.param_count(d2l) + sum(
        oc for _, b in d2l.blocks() for oc, *_ in b.convs)


@pytest.mark.parametrize("name", sorted(S.VARIANTS))
def test_json_round_trip(name, tmp_path):
    spec = S.get(name)
    path = tmp_path / "s.json"
    path.write_text(spec.to_json())
    assert NetSpec.from_json_file(path) == spec
    assert S.get(str(path)) == spec


BAD_SPECS = [
    # (what is wrong, layers or dict, text the message must contain)
    ("output smaller than 1x1", dict(input_shape=(1, 8, 8), layers=(NiNBlock(10, 11, 1, 0, ()), GlobalAvgPool(), Flatten())),
     "layer 0 (nin_block), conv 0: a 11x11 kernel"),
    ("input too small for d2l", dict(input_shape=(1, 64, 64), layers=S.get("d2l").layers), "layer 5 (max_pool)"),
    ("zero channels", dict(layers=(NiNBlock(0, 3, 1, 1, ()), GlobalAvgPool(), Flatten())), "out_channels must be an integer from 1 to 65536, got 0"),
    ("negative stride", dict(layers=(NiNBlock(10, 3, -1, 1, ()), GlobalAvgPool(), Flatten())), "stride must be an integer from 1 to 4096, got -1"),
    ("pool stride zero", dict(layers=(NiNBlock(10, 3, 1, 1, ()), MaxPool(3, 0), GlobalAvgPool(), Flatten())), "layer 1 (max_pool): stride"),
    ("class mismatch", dict(layers=(NiNBlock(7, 3, 1, 1, ()), GlobalAvgPool(), Flatten())), "ends with 7 features but num_classes is 10"),
    ("no flatten", dict(layers=(NiNBlock(10, 3, 1, 1, ()), GlobalAvgPool())), "must end with flatten"),
    ("flatten too early", dict(layers=(NiNBlock(10, 3, 1, 1, ()), Flatten())), "flatten needs a 10x1x1 input"),
    ("dropout rate 1", dict(layers=(NiNBlock(10, 3, 1, 1, ()), Dropout(1.0), GlobalAvgPool(), Flatten())), "rate must be in [0, 1)"),
    ("conv padding beyond half the kernel", dict(layers=(NiNBlock(10, 3, 1, 5, ()), GlobalAvgPool(), Flatten())), "padding 5 is more than half the kernel_size 3"),
    ("padded pool on raw input", dict(layers=(MaxPool(3, 2, 1), NiNBlock(10, 3, 1, 1, ()), GlobalAvgPool(), Flatten())), "post-ReLU"),
]


@pytest.mark.parametrize("what,kwargs,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_name_the_layer_and_sizes(what, kwargs, message):
    args = dict(name="t", input_shape=(1, 16, 16), num_classes=10)
    args.update(kwargs)
    with pytest.raises(SpecError) as e:
        NetSpec(**args)
    assert message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ('{"name": "x", "input_shape": [1, 8, 8], "num_classes": 2, "layers": [{"type": "conv"}]}', 'layers[0].type: expected one of'),
    ('{"name": "x", "input_shape": [1, 8, 8], "num_classes": 2, "layers": [{"type": "max_pool", "size": 3}]}', "unknown field(s) ['size']"),
    ('{"name": "x", "input_shape": [1, 8], "num_classes": 2, "layers": []}', "input_shape: expected [C, H, W]"),
    ('{"name": "x", "layers": []}', "missing field(s)"),
    ('{"name": "x", ', "is not valid JSON"),
])
def test_bad_json_specs(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        NetSpec.from_json_file(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(SpecError, match="d2l-bn"):
        S.get("d2l-big")


# --- calculator against independent counts ----------------------------------------------------
@pytest.mark.parametrize("name", sorted(S.VARIANTS))
def test_params_and_macs_against_an_independent_count(name):
    """Parameters from the canonical weight arrays; MACs from the reference forward's real arrays."""
    spec = S.get(name)
    w = weights.init(spec)
    assert sum(v.size for k, v in w.items() if calc.is_trainable(k)) == calc.summary(spec).total_params
    x = np.zeros((1,) + spec.input_shape)
    counted = []
    orig = reference.conv2d

    def counting_conv(x, w, b, **kwargs):
        y = orig(x, w, b, **kwargs)
        counted.append(y[0].size * w[0].size)  # each output element: C_in * k * k multiply-adds
        return y

    reference.conv2d = counting_conv
    try:
        reference.forward(spec, w, x.astype(np.float32))
    finally:
        reference.conv2d = orig
    assert sum(counted) == calc.summary(spec).total_macs


def test_d2l_macs_by_hand():
    # conv1: 96 * 54 * 54 outputs, each 1 * 11 * 11 MACs
    assert calc.layers(S.get("d2l"))[0].macs == 96 * 54 * 54 * 121
    assert calc.summary(S.get("d2l")).total_macs == 762_297_352


def test_memory_by_hand():
    """A two-conv net small enough to count on paper."""
    spec = NetSpec("tiny", (2, 4, 4), 3, (NiNBlock(3, 3, 1, 1, (3,)), Dropout(0.5), GlobalAvgPool(), Flatten()))
    params = (3 * 2 * 9 + 3) + (3 * 3 + 3)  # 57 + 12 = 69
    s = calc.summary(spec, batch_size=5, dtype="float32")
    assert s.total_params == params
    # kept per input: input 32, conv 48, relu 48, conv 48, relu 48, dropout 48, gap 3 = 275; masks 48 bytes
    acts = 32 + 48 * 5 + 3
    assert s.activations == acts
    assert s.train_memory_bytes == 4 * params * 3 + 5 * (4 * acts + 48)  # weights, grads, momentum
    assert calc.summary(spec, 5, momentum=False).train_memory_bytes == 4 * params * 2 + 5 * (4 * acts + 48)
    assert s.inference_memory_bytes == 4 * params + 5 * 4 * (48 + 48)  # largest consecutive pair
    assert calc.summary(spec, 5, "bfloat16").inference_memory_bytes == 2 * params + 5 * 2 * 96


def test_floor_rounding_documented():
    assert S.out_size(224, 11, 4, 0) == 54  # floor(213 / 4) + 1
    assert S.out_size(54, 3, 2, 0) == 26 and S.out_size(26, 3, 2, 0) == 12 and S.out_size(12, 3, 2, 0) == 5


# --- reference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_norm", [False, True])
def test_reference_gradients_against_finite_differences(batch_norm):
    spec = NetSpec("fd", (2, 9, 9), 4, (
        NiNBlock(5, 3, 2, 1, (5,), batch_norm=batch_norm), MaxPool(3, 2, 1),
        NiNBlock(4, 2, 1, 0, (4,), batch_norm=batch_norm, relu_last=False), GlobalAvgPool(), Flatten()))
    w = {k: v.astype(np.float64) for k, v in weights.random_weights(spec, 3).items()}
    rng = np.random.default_rng(0)
    x, y = rng.random((3,) + spec.input_shape), np.array([0, 3, 1])
    _, grads = reference.loss_and_grads(spec, w, x, y)
    loss = lambda ww: reference.softmax_cross_entropy(reference.forward(spec, ww, x, training=True), y)
    for name, g in grads.items():
        for _ in range(3):
            idx = tuple(rng.integers(0, d) for d in g.shape)
            plus, minus = dict(w), dict(w)
            plus[name], minus[name] = w[name].copy(), w[name].copy()
            plus[name][idx] += 1e-6
            minus[name][idx] -= 1e-6
            fd = (loss(plus) - loss(minus)) / 2e-6
            assert fd == pytest.approx(g[idx], rel=1e-4, abs=1e-8), (name, idx)


def test_reference_refuses_random_dropout():
    with pytest.raises(ValueError, match="with_dropout"):
        reference.loss_and_grads(S.get("paper"), weights.init(S.get("paper")), np.zeros((1, 3, 32, 32)), np.zeros(1, int))


def test_reference_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 224, 224\)"):
        reference.forward(S.get("d2l"), weights.init(S.get("d2l")), np.zeros((1, 1, 28, 28)))


# --- weights -----------------------------------------------------------------------------------
def test_init_is_seeded_and_follows_the_spec():
    d2l, paper = S.get("d2l"), S.get("paper")
    a, b = weights.init(d2l, 3), weights.init(d2l, 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    w = a["block1.conv0.weight"]
    bound = np.sqrt(6 / (96 * 25 + 256 * 25))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound  # Xavier uniform
    assert np.std(weights.init(paper, 0)["block1.conv0.weight"]) == pytest.approx(paper.init_std, rel=0.02)
    assert not np.any(a["block0.conv0.bias"])


def test_safetensors_round_trip_and_errors(tmp_path):
    spec = S.get("d2l-bn")
    w = weights.random_weights(spec, 1)
    weights.save(tmp_path / "w.safetensors", w, {"variant": spec.name})
    back = weights.load(tmp_path / "w.safetensors", spec)
    assert all(np.array_equal(back[k], w[k]) for k in w)
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.load(tmp_path / "nope.safetensors")
    (tmp_path / "t.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:1000])
    with pytest.raises(weights.WeightsError, match="t.safetensors"):
        weights.load(tmp_path / "t.safetensors")
    bad = {**w, "block0.conv0.weight": np.zeros((96, 1, 5, 5), np.float32)}
    with pytest.raises(weights.WeightsError, match=r"block0.conv0.weight has shape \(96, 1, 5, 5\)"):
        weights.check(spec, bad)


def test_layout_converters_invert_each_other():
    w = np.random.default_rng(0).random((4, 3, 2, 5))
    assert np.array_equal(weights.hwio_to_oihw(weights.oihw_to_hwio(w)), w)
    assert np.array_equal(weights.nhwc_to_nchw(weights.nchw_to_nhwc(w)), w)
    assert weights.oihw_to_hwio(w).shape == (2, 5, 3, 4)


# --- data --------------------------------------------------------------------------------------
def test_fashion_mnist_loads_and_verifies(data_dir):
    images, labels = data.load("train", data_dir, download=False)
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert images.mean() / 255 == pytest.approx(0.286041, abs=1e-5)
    test_images, _ = data.load("test", data_dir, download=False)
    assert test_images.shape == (10000, 28, 28)


def test_preprocess_resizes_and_repeats_channels(data_dir):
    images, labels = data.load("test", data_dir, download=False)
    x = data.preprocess(images[:3], S.get("d2l"))
    assert x.shape == (3, 1, 224, 224) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert x.mean() == pytest.approx(images[:3].mean() / 255, rel=0.02)  # resizing keeps the brightness
    p = data.preprocess(images[:2], S.get("paper"))
    assert p.shape == (2, 3, 32, 32) and np.array_equal(p[:, 0], p[:, 2])
    batches = list(data.batches(images[:10], labels[:10], S.get("paper"), 4, shuffle=True, seed=1, epoch=2))
    again = list(data.batches(images[:10], labels[:10], S.get("paper"), 4, shuffle=True, seed=1, epoch=2))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))


def test_corrupt_file_is_named(tmp_path, data_dir):
    raw = gzip.decompress((data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw[:-1] + bytes([(raw[-1] + 1) % 256]))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes((data_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: sha256"):
        data.load("test", tmp_path, download=False)
    with pytest.raises(data.DataError, match="not in .* and download=False"):
        data.load("train", tmp_path, download=False)


def test_download_verifies_and_falls_back_to_the_next_mirror(tmp_path, data_dir, monkeypatch):
    """Serve the files from a local HTTP server; the first mirror is broken, the second is good."""
    served = tmp_path / "served"
    served.mkdir()
    for name in data.FILES:
        if name.startswith("t10k"):
            (served / f"{name}.gz").write_bytes((data_dir / f"{name}.gz").read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        monkeypatch.setattr(data, "MIRRORS", (f"http://127.0.0.1:{port}/missing/", f"http://127.0.0.1:{port}/"))
        images, labels = data.load("test", tmp_path / "cache", download=True)
        assert images.shape == (10000, 28, 28)
        assert (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").is_file()
        monkeypatch.setattr(data, "MIRRORS", (f"http://127.0.0.1:{port}/missing/",))
        with pytest.raises(data.DataError, match="could not download train-images-idx3-ubyte.gz"):
            data.load("train", tmp_path / "cache2", download=True)
    finally:
        server.shutdown()


# --- the boundary --------------------------------------------------------------------------------
def test_importing_common_pulls_in_no_framework():
    code = ("import sys, common, common.spec, common.calc, common.reference, common.weights, common.data, "
            "conformance.cases, conformance.records, common.backends, conformance.tolerances, common.fsio, common.tables\n"
            "bad = sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax', 'optax', 'mxnet') if m in sys.modules)\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_spec_number_is_written_in_a_backend():
    """The chapter's distinctive sizes live in common/spec.py only; bench.plain_step alone writes them,
    being the chapter's own code as its readers type it (the benchmarks' yardstick)."""
    import ast
    import re

    from common import backends
    for pkg in backends.packages():
        for f in (ROOT / pkg).glob("*.py"):
            text = f.read_text()
            plain = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "plain_step"]
            if plain and f.name == "bench.py":
                lines = text.splitlines()
                text = "\n".join(lines[:plain[0].lineno - 1] + lines[plain[0].end_lineno:])
            found = re.findall(r"\b(96|160|192|256|384|224)\b", text)
            assert not found, f"{f.relative_to(ROOT)} writes {found}; channel counts and sizes belong in common/spec.py"


def test_extra_backends_come_from_one_json_line_and_a_bad_one_is_named():
    """$NIN_EXTRA_BACKENDS (common.backends.extra_backends): Backend's fields as JSON; tests/test_add_backend.py
    registers a whole backend so."""
    from common import backends

    line = ('[{"name": "torch2", "package": "nin_torch2", "requires": ["torch"], "venv": ".venv", "title": "T", '
            '"compile_modes": ["eager"], "env": {"A": "1"}}]')
    (b,) = backends.extra_backends(line)
    assert b == backends.Backend("torch2", "nin_torch2", ("torch",), ".venv", "T", ("eager",), (("A", "1"),))
    assert backends.extra_backends("") == ()
    with pytest.raises(backends.BackendError, match="NIN_EXTRA_BACKENDS: not JSON"):
        backends.extra_backends("[{")
    with pytest.raises(backends.BackendError, match="with the fields"):
        backends.extra_backends('[{"name": "x", "package": "nin_x"}]')
    with pytest.raises(backends.BackendError, match="'torch' is registered already"):
        backends._registry(backends.extra_backends(line.replace('"torch2"', '"torch"')))
