"""Bad input, given as a user gives it: to `nin summary`, `nin record`, `nin compare`,
`nin conformance` and `nin bench`, through `nin.cli.main` (in this process, for speed) and through
`python -m nin` (a subprocess, as typed) for a representative part.

Every case asserts the contract of docs/bad-inputs.md:
* input the command cannot work with at all (a flag, a spec, a data file, an output path, no GPU):
  exit status 2 and exactly one line on stderr that names the file or flag and the field;
* a record that cannot be read or is not what it says: exit status 1 and a FAIL line on stdout that
  names the file and the field (a bad record is a failed 'record' row: the matrix goes on);
* never a traceback; a record that checks nothing, or would check with the wrong tolerances, never
  passes; an interrupted write leaves the old file or the new one and no temporary.

The records are synthetic and tiny (an 8x8 network whose float64 reference takes a second),
written with conformance.records.write_record from the reference's own values: a valid record that
passes, which each case then damages in one place.
"""

import contextlib
import copy
import gzip
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_S
from tiny_records import CASES, metadata, synthetic_tensors, tiny

from common import backends, data
from common import spec as specs
from common.fsio import OutputError, atomic_path, check_writable, stale_temporaries
from common.spec import Flatten, GlobalAvgPool, NetSpec, NiNBlock
from conformance import compare, records, sweep
from conformance.cases import Cases, reference_results
from harness import processes
from nin import cli

ROOT = Path(__file__).resolve().parent.parent
# --- running `nin` ---------------------------------------------------------------------------
class Run:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def messages(self) -> list[str]:
        """stderr without progress lines (indented) and progress bars (carriage returns)."""
        return [line for line in self.err.replace("\r", "\n").splitlines()
                if line.strip() and not line.startswith(" ") and not line.startswith("nin bench:  ")
                and "config/s" not in line and "record/s" not in line]

    def __repr__(self):
        return f"exit {self.code}\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}"


def nin(*args) -> Run:
    """`nin ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return Run(code, out.getvalue(), err.getvalue())


def nin_process(*args, env: dict | None = None, python: str = sys.executable, timeout: float = HANG_S) -> Run:
    """`python -m nin ARGS`, as typed, from the repository."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    r = subprocess.run([python, "-m", "nin", *map(str, args)], cwd=ROOT, env=full, capture_output=True, text=True,
                       timeout=timeout)
    return Run(r.returncode, r.stdout, r.stderr)


def usage_error(r: Run, *words: str) -> str:
    """Exit status 2, no traceback, exactly one line on stderr, naming every word given."""
    assert r.code == 2, r
    assert "Traceback" not in r.err + r.out, r
    assert len(r.messages) == 1, r
    line = r.messages[0]
    for w in words:
        assert str(w) in line, f"{w!r} not in {line!r}"
    return line


def failed_check(r: Run, *words: str) -> str:
    """Exit status 1 (a check failed), no traceback, and a FAIL line on stdout naming every word."""
    assert r.code == 1, r
    assert "Traceback" not in r.err + r.out, r
    fails = [line for line in r.out.splitlines() if line.strip().startswith("FAIL")]
    match = [line for line in fails if all(str(w) in line for w in words)]
    assert match, f"no FAIL line names {words}:\n{r}"
    return match[0]


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def env(cache, monkeypatch):
    monkeypatch.setenv("NIN_CACHE_DIR", str(cache))  # a test may point it elsewhere; the next gets it back


@pytest.fixture(scope="module")
def reference(cache, data_dir):
    return {spec.name: reference_results(spec, CASES) for spec in (tiny(), tiny("tiny-b", mlp=(6,)))}


def damaged(path: Path, source: Path, *, meta=None, tensors=None, raw_meta: str | None = None) -> Path:
    """A copy of `source` with its metadata and/or tensors changed by the functions given."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(source), framework="numpy") as f:
        m = json.loads(f.metadata()["record"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    if meta:
        changed = meta(copy.deepcopy(m))
        m = m if changed is None else changed
    if tensors:
        changed = tensors(dict(t))
        t = t if changed is None else changed
    save_file(t, str(path), metadata={"record": raw_meta if raw_meta is not None else json.dumps(m)})
    return path


def setting(*keys_and_value):
    """meta -> meta with meta[k1][k2]... = value."""
    *keys, value = keys_and_value

    def change(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return m
    return change


def removing(*keys):
    def change(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
        return m
    return change


# === specs ===================================================================================
PAPER = specs.get("paper").to_dict()


def _layer(i, field, value):
    def change(d):
        d["layers"][i][field] = value
    return change


def _top(field, value):
    def change(d):
        d[field] = value
    return change


BAD_SPECS = [  # (id, change to the paper's spec, words the one line must hold)
    ("batch_norm string", _layer(0, "batch_norm", "false"), ["layers[0].batch_norm", "true or false"]),
    ("relu_last null", _layer(0, "relu_last", None), ["layers[0].relu_last", "null"]),
    ("bn_momentum string", _top("bn_momentum", "x"), ["bn_momentum", "number"]),
    ("bn_eps negative", _top("bn_eps", -1), ["bn_eps", "-1"]),
    ("init_std string", _top("init_std", "big"), ["init_std", "big"]),
    ("conv padding 5 with kernel 3", _layer(6, "padding", 5), ["layer 6", "padding 5", "kernel_size 3"]),
    ("num_classes 10**400", _top("num_classes", 10 ** 400), ["num_classes", "integer from 1"]),
    ("out_channels a float", _layer(0, "out_channels", 192.0), ["layers[0].out_channels", "192.0"]),
    ("stride negative", _layer(0, "stride", -1), ["layers[0].stride", "-1"]),
    ("kernel_size zero", _layer(0, "kernel_size", 0), ["layers[0].kernel_size"]),
    ("kernel_size past the bound", _layer(0, "kernel_size", 65), ["layers[0].kernel_size", "64"]),
    ("mlp a string", _layer(0, "mlp", "160"), ["layers[0].mlp", "list"]),
    ("mlp entry negative", _layer(0, "mlp", [160, -1]), ["layers[0].mlp[1]", "-1"]),
    ("dropout rate 1", _layer(2, "rate", 1.0), ["layers[2].rate", "[0, 1)"]),
    ("dropout rate a string", _layer(2, "rate", "0.5"), ["layers[2].rate"]),
    ("unknown layer type", _layer(0, "type", "conv"), ["layers[0].type", "nin_block"]),
    ("layer type a list", _layer(0, "type", ["nin_block"]), ["layers[0].type", "nin_block"]),
    ("layer type an object", _layer(0, "type", {"a": 1}), ["layers[0].type"]),
    ("name with a letter outside ASCII", _top("name", "päper"), ["name", "letters"]),
    ("num_classes a string", _top("num_classes", "10"), ["num_classes", '"10"']),
    ("input height a boolean", _top("input_shape", [3, True, 32]), ["input_shape[1]", "true"]),
    ("unknown layer field", _layer(0, "dilation", 2), ["layers[0]", "dilation"]),
    ("unknown top-level field", _top("optimizer", "sgd"), ["optimizer", "unknown"]),
    ("layers missing", lambda d: d.pop("layers") and None, ["missing", "layers"]),
    ("layers empty", _top("layers", []), ["at least one layer"]),
    ("layers an object", _top("layers", {"a": 1}), ["layers", "list"]),
    ("layer null", lambda d: d["layers"].__setitem__(0, None), ["layers[0]", "null"]),
    ("input_shape of two", _top("input_shape", [3, 32]), ["input_shape", "[C, H, W]"]),
    ("input_shape a string", _top("input_shape", "3x32x32"), ["input_shape"]),
    ("input height past the bound", _top("input_shape", [3, 100000, 32]), ["input_shape[1]", "4096"]),
    ("name empty", _top("name", ""), ["name", "non-empty"]),
    ("name a number", _top("name", 5), ["name"]),
    ("name a path", _top("name", "../../etc/x"), ["name", "letters"]),
    ("name with a newline", _top("name", "a\nb"), ["name", "letters"]),
    ("init unknown", _top("init", "he"), ["init", "xavier_uniform"]),
    ("num_classes not the last layer's", _top("num_classes", 11), ["num_classes is 11", "10 features"]),
    ("pool padding past half", _layer(1, "padding", 2), ["layer 1 (max_pool)", "padding 2"]),
    ("kernel larger than the input", _layer(0, "kernel_size", 37), ["layer 0", "does not fit"]),
    ("flatten without pooling", lambda d: d["layers"].pop(7), ["flatten", "global_avg_pool"]),
    ("no flatten at the end", lambda d: d["layers"].pop(), ["must end with flatten"]),
    ("a layer after flatten", lambda d: d["layers"].append({"type": "max_pool", "kernel_size": 1, "stride": 1}),
     ["comes after flatten"]),
    ("padded pool after a linear head", lambda d: (d["layers"][3].__setitem__("relu_last", False),
                                                    d["layers"].insert(4, d["layers"][1])),
     ["post-ReLU"]),
    ("a JSON list", lambda d: [d], ["a JSON object (the spec)"]),
]


@pytest.mark.parametrize("change, words", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_field(tmp_path, change, words):
    d = copy.deepcopy(PAPER)
    out = change(d)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(out if isinstance(out, list) else d))
    usage_error(nin("summary", "--spec", spec), spec, *words)


BAD_SPEC_FILES = [  # (id, file content, words)
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
    ("deeply nested objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, ["nested too deeply"]),
    ("integer of 5000 digits", json.dumps(PAPER).replace('"num_classes": 10', '"num_classes": 1' + "0" * 5000).encode(),
     ["number too large"]),
    ("not UTF-8", b'\xff\xfe{"name": 1}', ["not UTF-8"]),
    ("empty", b"", ["not valid JSON"]),
    ("trailing garbage", json.dumps(PAPER).encode() + b"\n}", ["not valid JSON"]),
    ("a field given twice", json.dumps(PAPER).replace('"num_classes": 10', '"num_classes": 10, "num_classes": 11').encode(),
     ["num_classes", "twice"]),
    ("NaN", json.dumps(PAPER).replace('"init_std": 0.05', '"init_std": NaN').encode(), ["init_std", "nan"]),
    ("Infinity", json.dumps(PAPER).replace('"bn_eps": 1e-05', '"bn_eps": Infinity').encode(), ["bn_eps", "inf"]),
    ("a float past double", json.dumps(PAPER).replace('"init_std": 0.05', '"init_std": 1e400').encode(), ["init_std"]),
    ("larger than a spec can be", b" " * 1_100_000 + json.dumps(PAPER).encode(), ["bytes", "not a spec"]),
]


@pytest.mark.parametrize("content, words", [b[1:] for b in BAD_SPEC_FILES], ids=[b[0] for b in BAD_SPEC_FILES])
def test_bad_spec_file(tmp_path, content, words):
    spec = tmp_path / "spec.json"
    spec.write_bytes(content)
    usage_error(nin("summary", "--spec", spec), spec, *words)


def test_spec_file_that_is_missing_a_directory_or_a_device(tmp_path):
    usage_error(nin("summary", "--spec", tmp_path / "nope.json"), "nope.json", "does not exist")
    (tmp_path / "dir.json").mkdir()
    usage_error(nin("summary", "--spec", tmp_path / "dir.json"), "dir.json", "is a directory")
    if Path("/dev/null").exists():
        usage_error(nin("summary", "--spec", "/dev/null"), "/dev/null", "not a regular file")


def test_spec_with_a_byte_order_mark_is_read(tmp_path):
    spec = tmp_path / "bom.json"
    spec.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAPER).encode())
    r = nin("summary", "--spec", spec)
    assert r.code == 0 and "966,986" in r.out, r


def test_bad_spec_is_refused_by_every_command_before_any_work(tmp_path):
    d = copy.deepcopy(PAPER)
    d["layers"][0]["batch_norm"] = "false"
    spec = tmp_path / "bn.json"
    spec.write_text(json.dumps(d))
    for args in (["record", "--backend", "torch", "--variant", spec, "--out", tmp_path / "r.safetensors"],
                 ["conformance", "--backend", "torch", "--variant", spec, "--out-dir", tmp_path / "records"],
                 ["bench", "--backend", "torch", "--variant", spec, "--out", tmp_path / "b.json"],
                 ["error-model", "--variant", spec]):
        usage_error(nin(*args), spec, "layers[0].batch_norm")
    assert not (tmp_path / "r.safetensors").exists() and not list(tmp_path.glob(".*.tmp"))


def test_two_networks_under_one_name_in_one_record(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(tiny("same").to_json())
    b.write_text(tiny("same", mlp=(5,)).to_json())
    usage_error(nin("record", "--backend", "torch", "--variant", a, b, "--out", tmp_path / "r.safetensors"),
                "--variant", "same")


def test_a_spec_that_cannot_train_on_fashion_mnist():
    with pytest.raises(data.DataError, match="num_classes is 3"):
        data.fixed_batches(tiny("three", classes=3), 1, 1)


# === records =================================================================================
META_DAMAGE = [  # (id, change, words of the FAIL line); the file's path is asserted too
    ("precision null", setting("precision", None), ["metadata.precision", "null"]),
    ("precision FP32", setting("precision", "FP32"), ["metadata.precision", "FP32"]),
    ("precision a number", setting("precision", 32), ["metadata.precision"]),
    ("device unknown", setting("device", "tpu"), ["metadata.device", "tpu"]),
    ("device null", setting("device", None), ["metadata.device"]),
    ("compile unknown", setting("compile", "jit"), ["metadata.compile", "jit"]),
    ("format unknown", setting("format", "x"), ["metadata.format"]),
    ("backend unknown", setting("backend", "theano"), ["metadata.backend", "theano"]),
    ("backend empty", setting("backend", ""), ["metadata.backend"]),
    ("backend with a newline", setting("backend", "torch\nFAKE"), ["metadata.backend"]),
    ("backend a number", setting("backend", 5), ["metadata.backend", "a number"]),
    ("versions a list", setting("versions", []), ["metadata.versions", "a list"]),
    ("versions value a number", setting("versions", "torch", 2), ["metadata.versions.torch"]),
    ("numerics a string", setting("numerics", "x"), ["metadata.numerics"]),
    ("created a number", setting("created", 5), ["metadata.created"]),
    ("host with a newline", setting("host", "a\nb"), ["metadata.host", "one line"]),
    ("an extra key", setting("extra", 1), ["unknown field(s) ['extra']"]),
    ("cases null", setting("cases", None), ["metadata.cases", "null"]),
    ("cases a string", setting("cases", "x"), ["metadata.cases"]),
    ("cases.steps 1e9", setting("cases", "steps", 10 ** 9), ["metadata.cases.steps", "1000000000"]),
    ("cases.steps a string", setting("cases", "steps", "8"), ["metadata.cases.steps", "'8'"]),
    ("cases.steps a float", setting("cases", "steps", 1.5), ["metadata.cases.steps"]),
    ("cases.batch zero", setting("cases", "batch", 0), ["metadata.cases.batch"]),
    ("cases.lr NaN", setting("cases", "lr", float("nan")), ["metadata.cases.lr", "nan"]),
    ("cases.momentum a boolean", setting("cases", "momentum", True), ["metadata.cases.momentum"]),
    ("cases.weights_seed negative", setting("cases", "weights_seed", -1), ["metadata.cases.weights_seed"]),
    ("cases with an extra key", setting("cases", "extra", 1), ["metadata.cases", "unknown ['extra']"]),
    ("cases missing a key", removing("cases", "lr"), ["metadata.cases", "missing ['lr']"]),
    ("variants a list", setting("variants", []), ["metadata.variants", "a list"]),
    ("variants null", setting("variants", None), ["metadata.variants", "null"]),
    ("variants empty", setting("variants", {}), ["metadata.variants is empty", "checks nothing"]),
    ("variant null", setting("variants", "tiny", None), ["metadata.variants.tiny", "null"]),
    ("variant with an extra key", setting("variants", "tiny", "x", 1), ["metadata.variants.tiny", "fields"]),
    ("layer_shapes integers", setting("variants", "tiny", "layer_shapes", [1, 2, 3]),
     ["metadata.variants.tiny.layer_shapes", "lists of integers"]),
    ("layer_shapes a string", setting("variants", "tiny", "layer_shapes", "x"), ["metadata.variants.tiny.layer_shapes"]),
    ("layer_shapes with a boolean", setting("variants", "tiny", "layer_shapes", [[True, 8, 8]]),
     ["metadata.variants.tiny.layer_shapes"]),
    ("param_count a string", setting("variants", "tiny", "param_count", "5"), ["metadata.variants.tiny.param_count"]),
    ("spec null", setting("variants", "tiny", "spec", None), ["metadata.variants.tiny.spec", "JSON object"]),
    ("spec field of the wrong type", lambda m: m["variants"]["tiny"]["spec"]["layers"][0].__setitem__(
        "batch_norm", "false") or m, ["metadata.variants.tiny.spec", "layers[0].batch_norm"]),
    ("spec named otherwise", setting("variants", "tiny", "spec", "name", "other"), ["metadata.variants.tiny.spec.name"]),
]


@pytest.mark.parametrize("change, words", [d[1:] for d in META_DAMAGE], ids=[d[0] for d in META_DAMAGE])
def test_damaged_record_metadata_fails_naming_file_and_field(good, tmp_path, change, words):
    bad = damaged(tmp_path / "bad.safetensors", good, meta=change)
    failed_check(nin("compare", bad), "record", bad, *words)


@pytest.mark.parametrize("field", records.REQUIRED)
def test_record_without_a_required_field(good, tmp_path, field):
    bad = damaged(tmp_path / f"no-{field}.safetensors", good, meta=removing(field))
    failed_check(nin("compare", bad), "record", bad, f"missing field(s) ['{field}']")


RAW_META = [  # (id, the metadata's JSON text, words)
    ("a number", "5", ["metadata: expected an object, got a number"]),
    ("null", "null", ["metadata: expected an object, got null"]),
    ("a string", '"x"', ["metadata: expected an object, got a string"]),
    ("a list", "[]", ["metadata: expected an object, got a list"]),
    ("not JSON", "{", ["metadata is not valid JSON"]),
    ("nested too deeply", "[" * 100_000, ["metadata is nested too deeply"]),
    ("an integer of 5000 digits", '{"format": 1' + "0" * 5000 + "}", ["metadata holds a number too large"]),
    ("a key given twice", '{"format": "a", "format": "b"}', ["metadata", "'format' is given twice"]),
]


@pytest.mark.parametrize("text, words", [d[1:] for d in RAW_META], ids=[d[0] for d in RAW_META])
def test_record_metadata_that_is_not_an_object(good, tmp_path, text, words):
    bad = damaged(tmp_path / "bad.safetensors", good, raw_meta=text)
    failed_check(nin("compare", bad), "record", bad, *words)


def _retype(dtype):
    return lambda t: {k: v.astype(dtype) for k, v in t.items()}


def _set(key, value):
    def change(t):
        t[key] = value(t) if callable(value) else value
        return t
    return change


TENSOR_DAMAGE = [
    ("float16 in an fp32 record", _retype(np.float16), ["is float16; a fp32 record holds float32"]),
    ("float64 in an fp32 record", _retype(np.float64), ["is float64; a fp32 record holds float32"]),
    ("an integer loss", _set("tiny/loss", np.array([1], dtype=np.int32)), ["tiny/loss is int32"]),
    ("a tensor missing", lambda t: {k: v for k, v in t.items() if k != "tiny/loss"}, ["missing tensor(s) ['tiny/loss']"]),
    ("no tensors at all", lambda t: {}, ["missing tensor(s)"]),
    ("an extra tensor", _set("tiny/extra", np.zeros(1, np.float32)), ["'tiny/extra'", "belong to no variant"]),
    ("a variant the metadata does not list", _set("other/logits", np.zeros(1, np.float32)), ["'other/logits'"]),
    ("logits of the wrong shape", _set("tiny/logits", lambda t: t["tiny/logits"][:, :3].copy()),
     ["tiny/logits has shape (2, 3)", "(2, 10)"]),
    ("a scalar loss", _set("tiny/loss", np.array(1.0, np.float32)), ["tiny/loss has shape ()"]),
]


@pytest.mark.parametrize("change, words", [d[1:] for d in TENSOR_DAMAGE], ids=[d[0] for d in TENSOR_DAMAGE])
def test_record_tensors_are_checked_against_the_metadata_before_any_value(good, tmp_path, change, words):
    bad = damaged(tmp_path / "bad.safetensors", good, tensors=change)
    line = failed_check(nin("compare", bad), "record", bad, *words)
    assert "reference]" not in line  # refused as a record, before any comparison


def test_nan_record_fails_and_with_no_variants_checks_nothing(good, tmp_path):
    """The issue's first case: all-NaN tensors pass when the metadata lists no variants."""
    nan = damaged(tmp_path / "nan.safetensors", good, tensors=lambda t: {k: np.full_like(v, np.nan)
                                                                          for k, v in t.items()})
    failed_check(nin("compare", nan), "logits", "NaN", nan)
    assert json.loads(nin("compare", nan, "--json").out)["passed"] is False
    empty = damaged(tmp_path / "empty.safetensors", nan, meta=setting("variants", {}),
                    tensors=lambda t: {k: v for k, v in t.items()})
    r = nin("compare", empty, "--json")
    assert r.code == 1 and json.loads(r.out)["passed"] is False, r
    failed_check(nin("compare", empty), "variants is empty", "checks nothing")
    nothing = damaged(tmp_path / "nothing.safetensors", good, meta=setting("variants", {}), tensors=lambda t: {})
    r = nin("compare", nothing)
    failed_check(r, "checks nothing")
    assert "0 failed" not in r.out


def test_a_comparison_of_nothing_cannot_pass():
    result = compare.compare([])
    assert not result.passed and any("no record was given" in r.detail for r in result.rows)
    assert not compare.Comparison().passed  # 0 rows: 0 checks ran, which is not a pass


def test_one_bad_value_fails_its_check(good, tmp_path):
    bumped = damaged(tmp_path / "bumped.safetensors", good, tensors=_set("tiny/logits", lambda t: t["tiny/logits"] + 1))
    failed_check(nin("compare", bumped), "tiny logits", "reference", bumped)


@pytest.mark.parametrize("cut", ["half", "8 bytes", "3 bytes", "empty", "garbage", "gzip", "huge header",
                                 "offsets past the end"])
def test_truncated_or_foreign_record_file(good, tmp_path, cut):
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10 ** 12]
    moved = json.dumps(header).encode()
    content = {"half": raw[:len(raw) // 2], "8 bytes": raw[:8], "3 bytes": raw[:3], "empty": b"",
               "garbage": b"\xff" * 1000, "gzip": gzip.compress(raw[:1000]),
               "huge header": struct.pack("<Q", 2 ** 62) + raw[8:],
               "offsets past the end": struct.pack("<Q", len(moved)) + moved + raw[8 + n:]}[cut]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    failed_check(nin("compare", bad), "record", bad, "not a readable record")


def test_record_path_that_is_missing_a_directory_or_has_no_record_metadata(good, tmp_path):
    from safetensors.numpy import save_file

    # a path that is not a file at all: one line, exit 2, before any work (no matrix of FAIL rows)
    usage_error(nin("compare", good, tmp_path / "nope.safetensors"), "nope.safetensors", "no such file")
    usage_error(nin("compare", tmp_path), str(tmp_path), "a directory")
    if Path("/dev/null").exists():
        usage_error(nin("compare", "/dev/null"), "/dev/null", "not a regular file")
    plain = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(plain), metadata={"x": "y"})
    failed_check(nin("compare", plain), plain, "has no 'record' metadata")


def test_a_record_compared_with_itself_or_a_copy_is_refused(good, tmp_path):
    failed_check(nin("compare", good, good), "given twice", "checks nothing")
    other_spelling = good.parent / ".." / good.parent.name / good.name
    failed_check(nin("compare", good, other_spelling), "given twice")
    copy_ = tmp_path / "copy.safetensors"
    shutil.copy(good, copy_)
    failed_check(nin("compare", good, copy_), "same bytes as", str(good), "checks nothing")


def test_different_networks_under_one_name_are_refused(good, tmp_path):
    other = tiny(mlp=(5,))  # named "tiny" too
    path = tmp_path / "other.safetensors"
    records.write_record(path, synthetic_tensors(other), metadata(other, backend="jax"))
    failed_check(nin("compare", good, path), "other.safetensors built a different network", "'tiny'")


def test_records_of_different_variants_say_that_none_was_compared_with_another(good, reference, tmp_path):
    spec = tiny("tiny-b", mlp=(6,))
    path = tmp_path / "b.safetensors"
    records.write_record(path, synthetic_tensors(spec, reference["tiny-b"]), metadata(spec, backend="jax"))
    r = nin("compare", good, path)
    assert r.code == 0, r  # each agrees with the reference: that passes, and the matrix says what it was
    assert "no variant is held by two of these records" in r.out and "Record against record" not in r.out


def test_records_with_one_label_are_told_apart_by_path(good, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = damaged(tmp_path / "a" / "torch.safetensors", good, meta=setting("created", "2026-01-02T00:00:00+00:00"))
    b = damaged(tmp_path / "b" / "torch.safetensors", good, meta=setting("created", "2026-01-03T00:00:00+00:00"))
    r = nin("compare", a, b)
    assert r.code == 0, r
    header = next(line for line in r.out.splitlines() if line.startswith("variant"))
    assert f"torch/eager ({a})" in header and f"torch/eager ({b})" in header
    bad_a = damaged(tmp_path / "a" / "x.safetensors", good, meta=setting("precision", None))
    bad_b = damaged(tmp_path / "b" / "x.safetensors", good, meta=setting("device", None))
    r = nin("compare", bad_a, bad_b)
    failed_check(r, f"[{bad_a} vs -]", "metadata.precision")
    failed_check(r, f"[{bad_b} vs -]", "metadata.device")


def test_records_of_different_cases_are_not_comparable(good, tmp_path):
    spec = tiny()
    path = tmp_path / "steps3.safetensors"
    cases = {**asdict(CASES), "steps": 3}
    rng = np.random.default_rng(1)
    shapes = records.expected_tensors(spec, Cases(**cases))
    records.write_record(path, {f"tiny/{k}": rng.normal(size=s).astype(np.float32) for k, s in shapes.items()},
                         metadata(spec, cases=cases, backend="jax"))
    failed_check(nin("compare", good, path), "different cases", "not comparable")


def test_a_record_cannot_ask_for_days_of_reference_work(tmp_path, monkeypatch):
    """A 4096x4096 input through 4096 channels: small tensors, 4e13 multiply-adds of float64 work."""
    spec = NetSpec(name="huge", input_shape=(1, 4096, 4096), num_classes=10, layers=(
        NiNBlock(4096, kernel_size=3, stride=1, padding=1, mlp=(10,)), GlobalAvgPool(), Flatten()))
    path = tmp_path / "huge.safetensors"
    records.write_record(path, synthetic_tensors(spec), metadata(spec))

    def no_reference_work(*args, **kwargs):
        raise AssertionError("the reference was started for a record that asks for days of work")

    monkeypatch.setattr(compare, "reference_results", no_reference_work)  # refused before, by construction
    monkeypatch.setattr(compare.errormodel, "spreads", no_reference_work)
    failed_check(nin("compare", path), "metadata.variants.huge.spec", "multiply-adds", "a record may ask for")


def test_a_record_of_a_network_that_cannot_train_on_fashion_mnist(tmp_path):
    spec = tiny("three", classes=3)
    path = tmp_path / "three.safetensors"
    records.write_record(path, synthetic_tensors(spec), metadata(spec))
    failed_check(nin("compare", path), "metadata.variants.three.spec", "num_classes 3", "10 classes")


# === data files ==============================================================================
TRAIN = "train-images-idx3-ubyte"


def _deflate(raw: bytes) -> bytes:
    b = bytearray(raw)
    for i in range(100, 200):
        b[i] ^= 0x55
    return bytes(b)


def _crc(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[-6] ^= 1
    return bytes(b)


def _content(raw: bytes) -> bytes:
    b = bytearray(gzip.decompress(raw))
    b[5000] ^= 1
    return gzip.compress(bytes(b))


LABELS = "train-labels-idx1-ubyte"
DATA_DAMAGE = [  # (id, file, change to its bytes, words)
    ("damaged deflate stream", TRAIN, _deflate, ["cannot be decompressed"]),
    ("truncated gzip", TRAIN, lambda raw: raw[:50_000], ["cannot be decompressed", "end-of-stream"]),
    ("gzip CRC", TRAIN, _crc, ["cannot be decompressed", "CRC"]),
    ("one byte of content", LABELS, _content, ["sha256", "corrupt or not Fashion-MNIST"]),
    ("wrong magic", TRAIN, lambda raw: gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 100), ["sha256"]),
    ("empty file", LABELS, lambda raw: b"", ["is empty"]),
]


@pytest.mark.parametrize("name, change, words", [d[1:] for d in DATA_DAMAGE], ids=[d[0] for d in DATA_DAMAGE])
def test_damaged_data_file_is_named(good, data_dir, tmp_path, monkeypatch, name, change, words):
    """The reference trains on Fashion-MNIST: a fresh cache makes `nin compare` read it."""
    copy_dir = tmp_path / "fashion-mnist"
    copy_dir.mkdir()
    for source in Path(data_dir).iterdir():
        if source.name.removesuffix(".gz") in data.FILES:
            shutil.copy(source, copy_dir / source.name)
    target = copy_dir / f"{name}.gz"
    if not target.is_file():
        pytest.skip(f"{data_dir} holds no {name}.gz to damage")
    target.write_bytes(change(target.read_bytes()))
    monkeypatch.setenv("NIN_DATA_DIR", str(copy_dir))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    usage_error(nin("compare", good), target, *words)


def test_missing_data_says_where_it_looked_in_one_line(good, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BESIDE_CHECKOUT", tmp_path / "beside")
    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/",))  # refused at once: no download
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NIN_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    line = usage_error(nin("compare", good), "is in none of", tmp_path / "mine", tmp_path / "beside",
                       "could not download", "NIN_DATA_DIR")
    assert str(tmp_path / "home" / ".cache" / "nin" / "fashion-mnist") in line


def test_the_copy_beside_the_checkout_is_found_without_nin_data_dir(monkeypatch):
    if data.missing_files(data.BESIDE_CHECKOUT):
        pytest.skip(f"no Fashion-MNIST at {data.BESIDE_CHECKOUT}")
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)
    assert data.search_dirs()[0] == data.BESIDE_CHECKOUT
    assert data.default_dir() == data.BESIDE_CHECKOUT
    images, labels = data.load("train", download=False)
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)


# === flags ===================================================================================
BAD_FLAGS = [  # (arguments, words); out paths are made in tmp_path by the test
    (["summary", "--batch-size", "nan"], ["--batch-size", "'nan'"]),
    (["summary", "--batch-size", "-1"], ["--batch-size"]),
    (["summary", "--batch-size", "0"], ["--batch-size"]),
    (["summary", "--batch-size", "1e400"], ["--batch-size"]),
    (["summary", "--batch-size", "1" + "0" * 40], ["--batch-size"]),
    (["summary", "--batch-size", "1.5"], ["--batch-size"]),
    (["summary", "--variant", "nope"], ["--variant", "nope"]),
    (["summary", "--dtype", "float16"], ["--dtype", "float16"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "nan"], ["--timeout", "nan"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "-5"], ["--timeout", "-5"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "inf"], ["--timeout", "inf"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "0"], ["--timeout"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "1e10"], ["--timeout", "week"]),
    (["record", "--backend", "torch", "--variant", "paper", "--timeout", "abc"], ["--timeout", "abc"]),
    (["record", "--backend", "theano", "--variant", "paper"], ["--backend", "theano"]),
    (["record", "--variant", "paper"], ["--backend"]),
    (["record", "--backend", "torch", "--variant", "nope"], ["unknown variant 'nope'"]),
    (["record", "--backend", "torch", "--precision", "fp16"], ["--precision", "fp16"]),
    (["record", "--backend", "torch", "--device", "tpu"], ["--device", "tpu"]),
    (["conformance", "--timeout", "nan"], ["--timeout"]),
    (["conformance", "--backend", "torch", "nope"], ["--backend", "nope"]),
    (["conformance", "--backend", "torch", "--variant", "paper", "--compile-variants", "nope"],
     ["--compile-variants", "nope"]),
    (["bench", "--batch-size", "0"], ["--batch-size"]),
    (["bench", "--batch-size", "nan"], ["--batch-size"]),
    (["bench", "--batch-size", "-3"], ["--batch-size"]),
    (["bench", "--batch-size", "9" * 26], ["--batch-size"]),
    (["bench", "--batch-size", "1e9"], ["--batch-size"]),
    (["bench", "--warmup", "-1"], ["--warmup"]),
    (["bench", "--windows", "0"], ["--windows"]),
    (["bench", "--windows", "100000"], ["--windows"]),
    (["bench", "--steps", "1e9"], ["--steps"]),
    (["bench", "--steps", str(10 ** 9)], ["--steps"]),
    (["bench", "--timeout", "nan"], ["--timeout"]),
    (["bench", "--timeout", "-5"], ["--timeout"]),
    (["bench", "--backend", "nope"], ["--backend", "nope"]),
    (["bench", "--backend", "torch", "--variant", "nope"], ["unknown variant 'nope'"]),
    (["bench", "--backend", "torch", "--compile", "fast"], ["--compile", "fast"]),
    (["bench", "--mode", "fly"], ["--mode", "fly"]),
    (["error-model", "--variant", "nope"], ["unknown variant 'nope'"]),
    (["error-model", "--precision", "fp8"], ["--precision", "fp8"]),
    (["compare"], ["records"]),
    (["frobnicate"], ["frobnicate"]),
    ([], ["COMMAND"]),
]


@pytest.mark.parametrize("args, words", BAD_FLAGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_FLAGS])
def test_bad_flag(args, words):
    usage_error(nin(*args), *words)


def test_outputs_are_checked_before_any_work(good, tmp_path):
    file_ = tmp_path / "a-file"
    file_.write_text("x")
    for args, words in [
        (["record", "--backend", "torch", "--variant", "paper", "--out", tmp_path], ["--out", "is a directory"]),
        (["record", "--backend", "torch", "--variant", "paper", "--out", file_ / "r.safetensors"],
         ["--out", "is a file, not a folder"]),
        (["record", "--backend", "torch", "--variant", "paper", "--out", "/proc/nope/r.safetensors"], ["--out"]),
        (["record", "--backend", "torch", "--variant", "paper", "--out", tmp_path / ("x" * 300)],
         ["--out", "name too long"]),
        (["compare", good, "--report", tmp_path], ["--report", "is a directory"]),
        (["compare", good, "--json-out", file_ / "m.json"], ["--json-out", "not a folder"]),
        (["compare", good, "--report", tmp_path / "m.md", "--json-out", tmp_path / "m.md"], ["--report", "--json-out"]),
        (["compare", good, "--report", good], ["--report", "also an input"]),
        (["conformance", "--backend", "torch", "--variant", "paper", "--out-dir", file_], ["--out-dir", "not a folder"]),
        (["bench", "--backend", "torch", "--variant", "paper", "--out", tmp_path], ["--out", "is a directory"]),
        (["bench", "--backend", "torch", "--variant", "paper", "--out", tmp_path / "r.md"], ["--out", ".json"]),
        (["bench", "--backend", "torch", "--variant", "paper", "--out", file_ / "r.json"], ["--out"]),
    ]:
        usage_error(nin(*args), *words)
    (tmp_path / "beside.md").mkdir()
    usage_error(nin("bench", "--backend", "torch", "--variant", "paper", "--out", tmp_path / "beside.json"),
                "beside.md", "is a directory")
    records.read_record(good)  # the record given as --report was not overwritten
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_deep_output_folders_are_made(good, tmp_path):
    report = tmp_path / "a" / "b" / "c" / "m.md"
    r = nin("compare", good, "--report", report)
    assert r.code == 0 and report.read_text().startswith("# Conformance matrix"), r


# === the machine: no GPU =====================================================================
def _has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


FRAMEWORK_NAMES = {"torch": "PyTorch", "jax": "JAX", "keras-tf": "tensorflow", "keras-jax": "jax",
                   "keras-torch": "torch", "mxnet": "MXNet"}


@pytest.fixture(scope="module")
def gpu_records(tmp_path_factory):
    """`nin record --device gpu` for every backend at once (each imports its framework: seconds apiece)."""
    if _has_gpu():
        pytest.skip("this machine has a GPU")
    folder = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {name: subprocess.Popen([sys.executable, "-m", "nin", "record", "--backend", name, "--variant", "paper",
                                     "--device", "gpu", "--out", str(folder / name / "r.safetensors")],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in backends.BACKENDS}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=HANG_S)
        runs[name] = Run(proc.returncode, out, err)
    return folder, runs


@pytest.mark.main_env
@pytest.mark.parametrize("name", list(backends.BACKENDS))  # every one, whatever --backends says
def test_record_on_a_gpu_that_is_not_there(gpu_records, name):
    folder, runs = gpu_records
    r = runs[name]
    if r.code == 3:
        pytest.skip(f"{name}'s framework is not installed: {r.err.strip()}")
    line = usage_error(r, f"nin record: {name}", "no GPU is visible to", FRAMEWORK_NAMES[name])
    assert "RuntimeError" not in line  # the message, not an exception's name
    assert not any(p.is_file() for p in (folder / name).rglob("*"))


# === interruptions ===========================================================================
# A command held at a known point by construction, whatever the machine's speed: this prelude runs
# `python -m MODULE ARGS` unchanged, except that os.fsync, once it has flushed a temporary file whose
# name holds $NIN_TEST_HOLD (atomic_path's `.<target>.<pid>-<random>.tmp`), writes that name to
# $NIN_TEST_MARKER and waits for a signal. The temporary is then whole on disk and not yet renamed.
HOLD = r"""
import os, pathlib, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
marker, hold = pathlib.Path(os.environ["NIN_TEST_MARKER"]), os.environ["NIN_TEST_HOLD"]
real_fsync = os.fsync

def holding_fsync(fd):
    real_fsync(fd)
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if hold in name and name.endswith(".tmp") and not marker.exists():
        part = marker.with_name(marker.name + ".part")
        part.write_text(name)
        part.rename(marker)  # whole, or not there
        while True:
            signal.pause()  # SIGTERM and SIGINT raise here, and the command unwinds as it would anywhere

os.fsync = holding_fsync
assert sys.argv[1] == "-m", sys.argv
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def holding(tmp_path: Path, target: Path) -> tuple[Path, dict]:
    """(the hook's file, the environment that arms it for writes of `target`)."""
    hook, marker = tmp_path / "hold.py", tmp_path / "marker"
    hook.write_text(HOLD)
    return hook, {"NIN_TEST_MARKER": str(marker), "NIN_TEST_HOLD": f".{target.name}."}


def wait_for_hold(tmp_path: Path, proc: subprocess.Popen) -> Path:
    """The temporary file the held command is writing, once it is held. No deadline: how long the
    command takes to get there depends on the machine; if it ends first, the test fails at once."""
    marker = tmp_path / "marker"
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (exit {proc.returncode}) before it was held:\n{out}\n{err}")
        time.sleep(0.05)
    return Path(marker.read_text())


def _interrupted_write(tmp_path, good, sig) -> tuple[subprocess.Popen, Path, Path, str, str]:
    report = tmp_path / "m.md"
    report.write_text("old\n")
    hook, env = holding(tmp_path, report)
    proc = subprocess.Popen([sys.executable, str(hook), "-m", "nin", "compare", str(good), "--report", str(report)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    temporary = wait_for_hold(tmp_path, proc)
    assert temporary.exists()  # the temporary, full, beside the old report
    proc.send_signal(sig)
    out, err = proc.communicate()
    return proc, report, tmp_path / "marker", out, err


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file is being written")
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_interrupted_write_keeps_the_old_file_and_no_temporary(good, tmp_path, sig, status):
    proc, report, _, _, err = _interrupted_write(tmp_path, good, sig)
    assert proc.returncode == status, err
    assert "Traceback" not in err and len(Run(status, "", err).messages) == 1, err
    assert "interrupted" in err
    assert report.read_text() == "old\n"
    assert not list(tmp_path.glob(".m.md.*")), list(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file is being written")
def test_kill_9_leaves_the_old_file_and_the_next_write_removes_the_temporary(good, tmp_path):
    proc, report, marker, _, _ = _interrupted_write(tmp_path, good, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert report.read_text() == "old\n"  # never half a file
    left = Path(marker.read_text())
    assert left.exists() and stale_temporaries(report) == [left]
    r = nin("compare", good, "--report", report)
    assert r.code == 0 and report.read_text().startswith("# Conformance matrix"), r
    assert not left.exists() and not list(tmp_path.glob(".m.md.*"))


def test_atomic_path_removes_its_temporary_on_any_error(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    for error in (RuntimeError("disk on fire"), KeyboardInterrupt(), processes.Interrupted(signal.SIGTERM)):
        with pytest.raises(type(error)), atomic_path(target) as tmp:
            tmp.write_text("half")
            raise error
        assert target.read_text() == "old" and not list(tmp_path.glob(".t.txt.*"))


def test_check_writable_names_the_path_and_why(tmp_path):
    with pytest.raises(OutputError, match="name too long"):
        check_writable(tmp_path / ("x" * 300))
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path)


def _descendants(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.main_env
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file is being written")
def test_sigterm_to_nin_record_stops_its_worker_and_leaves_nothing(tmp_path):
    """The worker (its interpreter wrapped by NIN_PYTHON_TORCH, so that the hook runs in it) is held
    with its record computed and its temporary on disk; SIGTERM to `nin record` then stops it."""
    if processes.missing_here("torch"):
        pytest.skip("torch is not installed here")
    out = tmp_path / "out" / "r.safetensors"
    hook, env = holding(tmp_path, out)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{processes.python_for("torch")}" "{hook}" "$@"\n')
    wrapper.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "nin", "record", "--backend", "torch", "--variant", "paper",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "NIN_PYTHON_TORCH": str(wrapper), **env})
    temporary = wait_for_hold(tmp_path, proc)
    assert temporary.parent == out.parent and temporary.exists()
    workers = _descendants(proc.pid)
    assert workers, "the worker is not a child of nin record"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted (SIGTERM)" in err and len(Run(143, "", err).messages) == 1, err
    assert not any(Path(f"/proc/{w}").exists() for w in workers)  # stopped, not orphaned
    assert not out.parent.exists()  # no record, no temporary, not even the folder made for it


# === sweeps: one failure is recorded, the sweep goes on, the exit status says so ==================
def test_conformance_goes_on_after_a_backend_fails(good, tmp_path, monkeypatch):
    def fake_record(backend, variants, *, out, resume_from=None, **kw):
        if resume_from:  # `good` holds no checkpoint to resume: as when the framework is absent
            return subprocess.CompletedProcess([], 3, "", "no checkpoint in this fake")
        if backend == "mxnet":
            return subprocess.CompletedProcess([], 1, "", "  recording ...\nRuntimeError: the backend broke")
        shutil.copy(good, out)
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(sweep, "run_record", fake_record)
    r = nin("conformance", "--backend", "mxnet", "torch", "--variant", "paper", "--precision", "fp32",
            "--compile", "eager", "--out-dir", tmp_path / "records", "--report", tmp_path / "m.md")
    assert r.code == 1, r
    assert "nin conformance: recording failed: mxnet fp32 eager: RuntimeError: the backend broke" in r.err
    assert "0 failed" in r.out and (tmp_path / "m.md").is_file()  # the rest was compared and written



def test_conformance_records_in_parallel_and_lists_them_in_registry_order(good, tmp_path, monkeypatch):
    """--jobs 2: two workers at once, never more; the matrix lists the records in the registry's
    order, whichever finished first; each record's time is kept for the next sweep's order.
    Ordered by construction, not by sleeps: the first two records wait for each other (a barrier),
    and mxnet, first in the registry, finishes only after the other two have."""
    import threading

    running, most, lock = [0], [0], threading.Lock()
    started, others_done, done = [0], threading.Event(), []
    pair = threading.Barrier(2, timeout=HANG_S)  # the timeout only ends a hang if the two never run at once

    def fake_record(backend, variants, *, out, precision, compile, resume_from=None, **kw):
        if resume_from:  # the resume phase after the sweep: not what this test times
            return subprocess.CompletedProcess([], 3, "", "not in this test")
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            started[0] += 1
            first_two = started[0] <= 2
        if first_two:
            pair.wait()
        if backend == "mxnet":
            others_done.wait()
        shutil.copy(good, out)
        with lock:
            running[0] -= 1
            done.append(backend)
            if {"torch", "jax"} <= set(done):
                others_done.set()
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(sweep, "run_record", fake_record)
    compared = []
    monkeypatch.setattr(sweep, "compare_and_write", lambda args: compared.extend(args.records) or 0)
    r = nin("conformance", "--backend", "mxnet", "torch", "jax", "--variant", "paper", "--precision", "fp32",
            "--compile", "eager", "--jobs", "2", "--out-dir", tmp_path / "records")
    assert r.code == 0 and most[0] == 2 and done[-1] == "mxnet", (r, most, done)
    assert [Path(m).name for m in compared] == [sweep.record_name(b, device="cpu", precision="fp32", compile="eager")
                                                for b in ("mxnet", "torch", "jax")], compared
    took = json.loads((Path(os.environ["NIN_CACHE_DIR"]) / "record-seconds.json").read_text())
    assert all(took[f"{b} fp32 eager paper"] >= 0 for b in ("mxnet", "torch", "jax")), took


def test_stop_all_stops_the_workers_of_every_thread():
    """An interrupted parallel sweep: the interruption reaches the main thread only, which stops
    every worker the other threads are waiting for (processes.stop_all); their `run` calls return."""
    import threading

    results = []
    cmd = [sys.executable, "-c", "import signal; signal.pause()"]  # runs until it is signalled
    threads = [threading.Thread(target=lambda: results.append(processes.run(cmd, env=dict(os.environ))))
               for _ in range(2)]
    for t in threads:
        t.start()
    while len(processes._LIVE) < 2 and not results:  # both workers started (results: one failed to)
        time.sleep(0.05)
    processes.stop_all(grace=600)  # SIGTERM ends `sleep` at once; a kill after the grace would show as -SIGKILL
    for t in threads:
        t.join()
    assert len(results) == 2 and all(r.returncode == -signal.SIGTERM for r in results), results
    assert not processes._LIVE


def test_workers_share_xla_s_compilation_cache_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    env = processes.environment_for("jax")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xla")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert processes.environment_for("keras-jax")["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")

def _bench_args(tmp_path):
    return ["bench", "--backend", "torch", "mxnet", "--variant", "paper", "--mode", "infer", "--batch-size", "2",
            "--compile", "eager", "--device", "cpu", "--warmup", "0", "--windows", "1", "--steps", "1",
            "--out", tmp_path / "r.json"]


def test_bench_goes_on_after_a_failure_and_records_oom(tmp_path, monkeypatch):
    answers = {"torch": {"status": "error", "reason": "RuntimeError: boom\n  frame #0: c10::Error", "traceback": ""},
               "mxnet": {"status": "oom", "reason": "MXNetError: Failed to allocate CPU Memory"}}
    monkeypatch.setattr(processes, "call", lambda backend, module, args, timeout=None: dict(answers[backend]))
    r = nin(*_bench_args(tmp_path))
    assert r.code == 1, r
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [x["status"] for x in doc["results"]] == ["error", "oom"]
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert errors == ["error: torch infer batch 2 eager: RuntimeError: boom"], r  # one line, not the C++ frames


def test_interrupted_bench_keeps_what_it_measured(tmp_path, monkeypatch):
    def call(backend, module, args, timeout=None):
        if backend == "mxnet":
            raise processes.Interrupted(signal.SIGTERM)
        return {"status": "oom", "reason": "RuntimeError: DefaultCPUAllocator: can't allocate memory"}

    monkeypatch.setattr(processes, "call", call)
    r = nin(*_bench_args(tmp_path))
    assert r.code == 143 and "interrupted" in r.err, r
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["interrupted"] is True and [x["backend"] for x in doc["results"]] == ["torch"]


def test_host_out_of_memory_is_oom_in_every_framework_s_words():
    from benchmarks import worker

    for message in ("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                    "allocate 167772160000 bytes. Error code 12 (Cannot allocate memory)",
                    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB",
                    "std::bad_alloc", "Failed to allocate CPU Memory"):
        assert worker.out_of_memory(RuntimeError(message)), message
    assert worker.out_of_memory(MemoryError())
    assert not worker.out_of_memory(RuntimeError("shape mismatch"))


def _huge_bench(tmp_path) -> list:
    """65536 channels of 8x8 for 10000 images: 312 GiB by calc's estimate (168 GB the allocator asks for)."""
    spec = tmp_path / "huge.json"
    spec.write_text(NetSpec(name="huge", input_shape=(1, 8, 8), num_classes=10, layers=(
        NiNBlock(65536, kernel_size=3, stride=1, padding=1, mlp=(10,)), GlobalAvgPool(), Flatten())).to_json())
    return ["bench", "--backend", "torch", "--variant", spec, "--mode", "infer", "--batch-size", "10000",
            "--compile", "eager", "--device", "cpu", "--warmup", "0", "--windows", "1", "--steps", "1",
            "--out", tmp_path / "r.json"]


def test_bench_past_the_machine_s_memory_is_refused_before_any_worker(tmp_path, monkeypatch):
    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started for a configuration that cannot fit")

    monkeypatch.setattr(processes, "call", no_worker)
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(64 * 2**30))  # the same answer on every machine
    usage_error(nin(*_huge_bench(tmp_path)), "nin bench", "--variant", "huge.json", "--batch-size 10000",
                "312.5 GiB", "64.0 GiB", "NIN_MEMORY_LIMIT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.json"]  # no result file, no folder, no lock


@pytest.mark.main_env
def test_bench_records_a_real_cpu_out_of_memory_as_oom(tmp_path):
    """Let through (NIN_MEMORY_LIMIT past it), the allocator refuses it at once (never swapped)."""
    if processes.missing_here("torch"):
        pytest.skip("torch is not installed here")
    r = nin_process(*_huge_bench(tmp_path), env={"NIN_MEMORY_LIMIT": str(2**60)})
    assert r.code == 0 and "Traceback" not in r.err, r
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["status"] == "oom", result.get("reason")


# === as typed: the same contract through `python -m nin` =====================================
def test_as_typed_in_a_shell(good, tmp_path):
    d = copy.deepcopy(PAPER)
    d["relu_last"] = None
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps([d]))
    usage_error(nin_process("summary", "--spec", spec), spec, "JSON object")
    usage_error(nin_process("bench", "--timeout", "nan"), "--timeout", "nan")
    usage_error(nin_process("record", "--backend", "torch", "--out", tmp_path), "--out", "is a directory")
    bad = damaged(tmp_path / "fp32.safetensors", good, meta=setting("precision", "FP32"))
    failed_check(nin_process("compare", good, bad), "record", bad, "metadata.precision", "FP32")
