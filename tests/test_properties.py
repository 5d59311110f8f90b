"""Properties, with generated input (Hypothesis): every command either succeeds with a correct result
or exits 2 with one line naming what is wrong, never a traceback, never 'internal error', never a
worker started for input that cannot work, and never a folder left behind.

    specs            `nin summary --spec` on generated specs, mostly valid, some damaged in one field:
                     a success is checked against the sizes followed here independently
    records          `nin compare` on a valid record whose metadata is damaged in one place: a FAIL
                     line naming the file, and never a pass when a field that decides the checks changed
    run settings     `nin train / lr-find / sweep / record / conformance / bench` on generated flags:
                     refused in one line, or the worker is reached with settings inside every range and
                     the memory estimate inside the limit (the worker itself is replaced: nothing runs)

Time and memory are bounded by construction, not measured: a fixed budget of examples
(max_examples, derandomize=True: the same examples on every run, no database), small generated
sizes (inputs of at most 40x40, a few layers), commands in this process; the one memory bound is an
address-space limit on a subprocess given the largest inputs a file may hold.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402 - after the skip
from hypothesis import strategies as st  # noqa: E402
from test_bad_inputs import ROOT, damaged  # noqa: E402
from tiny_records import metadata, tiny  # noqa: E402

from conformance import sweep  # noqa: E402
from harness import processes  # noqa: E402
from nin import cli  # noqa: E402
from training import cli as training_cli  # noqa: E402
from training import recipe as recipes  # noqa: E402

pytestmark = pytest.mark.main_env  # Hypothesis is pinned in the main environment (requirements/main.txt)

BUDGET = dict(derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
MEMORY_LIMIT = 8 * 2**30  # NIN_MEMORY_LIMIT for every example: the same answers on every machine


class Reached(BaseException):  # noqa: N818 - not an error: the command got as far as its worker
    """Raised by the stand-in worker; a BaseException, so that no command's handler turns it into a line."""

    def __init__(self, call: tuple):
        super().__init__(call)
        self.call = call


def run(argv: list) -> tuple[int | None, str, str, tuple | None]:
    """(exit status, stdout, stderr, the worker call when one was reached) of `nin ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    reached = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        except Reached as r:
            code, reached = None, r.call
    return code, out.getvalue(), err.getvalue(), reached


def lines(err: str) -> list[str]:
    """stderr without progress (indented lines, carriage-return bars)."""
    return [x for x in err.replace("\r", "\n").splitlines() if x.strip() and not x.startswith(" ")
            and "config/s" not in x and "record/s" not in x]


def refused(code, out: str, err: str, *words) -> str:
    """Exit 2 with exactly one line on stderr naming every word, no traceback, nothing on stdout."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    got = lines(err)
    assert len(got) == 1, err
    for w in words:
        assert str(w) in got[0], (w, got[0])
    return got[0]


@pytest.fixture(autouse=True)
def isolated(cache, tmp_path_factory, monkeypatch):
    """A fixed memory limit, the module's cache, and an empty working folder for relative default outputs."""
    monkeypatch.setenv("NIN_MEMORY_LIMIT", str(MEMORY_LIMIT))
    monkeypatch.setenv("NIN_CACHE_DIR", str(cache))
    monkeypatch.delenv("NIN_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# === specs ========================================================================================
HUGE = st.sampled_from([10**400, -(10**400), 2**1024])  # past float: math.isfinite raises OverflowError for them
JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-(2**70), 2**70), HUGE, st.lists(st.integers(0, 3), max_size=2), st.just({"a": 1}))


@st.composite
def spec_dicts(draw) -> tuple[dict, bool]:
    """(a spec as JSON data, whether it was damaged): blocks and pools on a small input, then global
    pooling and flatten, the last block's channels the class count; sometimes one field replaced by
    anything JSON can hold, or a layer added or dropped."""
    size = draw(st.integers(1, 40))
    layers = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            k = draw(st.integers(1, 5))
            layers.append({"type": "nin_block", "out_channels": draw(st.integers(1, 8)), "kernel_size": k,
                           "stride": draw(st.integers(1, 3)), "padding": draw(st.integers(0, k // 2)),
                           "mlp": draw(st.lists(st.integers(1, 8), max_size=3)),
                           "batch_norm": draw(st.booleans()), "relu_last": True})
        elif layers:
            k = draw(st.integers(1, 3))
            layers.append({"type": "max_pool", "kernel_size": k, "stride": draw(st.integers(1, 2)),
                           "padding": draw(st.integers(0, k // 2))})
    classes = draw(st.integers(1, 12))
    layers += [{"type": "nin_block", "out_channels": classes, "kernel_size": 1, "stride": 1, "padding": 0,
                "mlp": [], "relu_last": draw(st.booleans())}, {"type": "dropout", "rate": 0.5},
               {"type": "global_avg_pool"}, {"type": "flatten"}]
    d = {"name": draw(st.sampled_from(["net", "a.b_c-1", "x+y"])), "input_shape": [draw(st.integers(1, 3)), size,
                                                                                   size],
         "num_classes": classes, "layers": layers}
    damage = draw(st.integers(0, 3))
    if damage == 1:  # one field of one layer, or of the spec, replaced
        target = draw(st.sampled_from(layers + [d]))
        target[draw(st.sampled_from(sorted(target)))] = draw(JUNK)
    elif damage == 2:
        layers.insert(draw(st.integers(0, len(layers))), draw(st.sampled_from(
            [{"type": "flatten"}, {"type": "global_avg_pool"}, {"type": "max_pool", "kernel_size": 9, "stride": 1}])))
    return d, damage in (1, 2)


def expected_summary(d: dict) -> tuple[int, int, list[int]]:
    """(parameters, multiply-accumulates per image, output shape) followed here, independently of
    common.spec and common.calc: floor((n + 2p - k) / s) + 1, a bias unless batch norm (gamma and beta
    instead), global pooling to 1x1, flatten to (C,)."""
    c, h, w = d["input_shape"]
    params = macs = 0
    for layer in d["layers"]:
        if layer["type"] == "nin_block":
            convs = [(layer["out_channels"], layer["kernel_size"], layer["stride"], layer["padding"])]
            convs += [(m, 1, 1, 0) for m in layer["mlp"]]
            for oc, k, s, p in convs:
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
                params += oc * c * k * k + (2 * oc if layer.get("batch_norm") else oc)
                macs += oc * h * w * c * k * k
                c = oc
        elif layer["type"] == "max_pool":
            k, s, p = layer["kernel_size"], layer["stride"], layer.get("padding", 0)
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif layer["type"] == "global_avg_pool":
            h = w = 1
    return params, macs, [c]


@settings(max_examples=150, **BUDGET)
@given(case=spec_dicts())
def test_summary_of_any_spec_is_right_or_one_line(tmp_path_factory, case):
    d, was_damaged = case
    path = tmp_path_factory.getbasetemp() / "spec.json"
    path.write_text(json.dumps(d))
    code, out, err, _ = run(["summary", "--spec", path, "--json"])
    event(f"exit {code}")  # --hypothesis-show-statistics: how many were refused
    if code == 0:
        result = json.loads(out)
        assert (result["total_params"], result["total_macs"], result["layers"][-1]["output_shape"]) == \
            expected_summary(d), d
        assert result["layers"][-1]["output_shape"] == [d["num_classes"]]
    else:
        refused(code, out, err, "nin: bad spec:", path)
        assert was_damaged or "does not fit" in err, err  # an undamaged spec fails only where a window cannot fit


# === records ====================================================================================
META = metadata(tiny())
PATHS = sorted({(k,) for k in META} | {(k, j) for k in ("cases", "versions", "numerics") for j in META[k]}
               | {("variants", "tiny", j) for j in META["variants"]["tiny"]}
               | {("variants", "tiny", "spec", j) for j in META["variants"]["tiny"]["spec"]}
               | {("float64_limits",), ("host",), ("command",)})
DECIDING = {"format", "cases", "variants", "float64_limits"}  # a change in these must never pass, but for
UNUSED = {("variants", "tiny", "spec", f) for f in ("init_std", "bn_eps", "bn_momentum")}  # what tiny never uses
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), HUGE, st.floats(),
                              st.text(max_size=6), st.sampled_from(["fp64", "gpu", "compiled", "jax", "unbiased"])),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=3)), max_leaves=6)


def _edit(meta: dict, path: tuple, value, delete: bool) -> None:
    node = meta
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@settings(max_examples=40, **BUDGET)
@given(path=st.sampled_from(PATHS), value=JSON, delete=st.booleans())
def test_compare_of_any_damaged_metadata_fails_naming_it_or_passes_rightly(good, tmp_path_factory, path, value,
                                                                        delete):
    meta = json.loads(json.dumps(META))
    _edit(meta, path, value, delete)
    changed = meta != META
    bad = damaged(tmp_path_factory.getbasetemp() / "bad.safetensors", good, meta=lambda m: meta)
    code, out, err, _ = run(["compare", bad])
    event(f"exit {code}")
    assert code in (0, 1) and "Traceback" not in out + err and "internal error" not in err, (code, out, err)
    if code == 1:
        assert any(line.strip().startswith("FAIL") and str(bad) in line for line in out.splitlines()), out
    else:
        assert " 0 failed" in out
        assert not (changed and path[0] in DECIDING and path not in UNUSED), (path, value, delete)


# === run settings ==============================================================================
VALUES = st.one_of(st.sampled_from(["nan", "inf", "-1", "0", "1", "2", "", " ", "1e308", "1" + "0" * 30, "abc",
                                    "0.5", "64", "65536", "100000", "4096", "1e-3", "-0"]),
                   st.integers(-3, 70_000).map(str), st.floats(-1e3, 1e6).map(repr))
NUMERIC = {  # command -> its numeric flags
    "train": ["--lr", "--momentum", "--warmup", "--weight-decay", "--batch-size", "--epochs", "--resize",
              "--train-limit", "--test-limit", "--seed", "--max-loss", "--eval-every", "--timeout", "--devices"],
    "lr-find": ["--lr", "--batch-size", "--resize", "--steps", "--min-lr", "--max-lr", "--seed", "--timeout",
                "--train-limit"],
    "sweep": ["--batch-size", "--epochs", "--resize", "--seeds", "--margin", "--timeout"],
    "record": ["--timeout"],
    "conformance": ["--timeout", "--jobs"],
    "bench": ["--batch-size", "--warmup", "--windows", "--steps", "--timeout", "--devices"],
}
START = {"train": ["--backend", "torch"], "lr-find": ["--backend", "torch"], "sweep": ["--backend", "torch"],
         "record": ["--backend", "torch", "--variant", "paper"], "bench": ["--backend", "torch", "--variant", "paper"],
         "conformance": ["--backend", "torch", "--variant", "paper", "--precision", "fp32", "--compile", "eager"]}
OUT_FLAG = {"record": "--out", "conformance": "--out-dir", "bench": "--out"}


def _floats(low: float, high: float):
    return st.floats(low, high).map(repr)


def _ints(low: int, high: int):
    return st.integers(low, high).map(str)


IN_RANGE = {  # a value each flag accepts, on a small run
    "--lr": _floats(1e-4, 1.0), "--momentum": _floats(0, 0.99), "--warmup": _ints(0, 3),
    "--weight-decay": _floats(0, 0.01), "--batch-size": _ints(1, 256), "--epochs": _ints(1, 5),
    "--resize": _ints(67, 128), "--train-limit": _ints(0, 60_000), "--test-limit": _ints(0, 10_000),
    "--seed": _ints(0, 100), "--max-loss": _floats(1, 1e3), "--eval-every": _ints(1, 5), "--timeout": _floats(1, 1e5),
    "--steps": _ints(1, 1000), "--min-lr": _floats(1e-5, 1e-3), "--max-lr": _floats(0.1, 10), "--seeds": _ints(1, 5),
    "--margin": _floats(0.1, 5), "--jobs": _ints(1, 4), "--windows": _ints(1, 10), "--devices": _ints(1, 4)}


@st.composite
def command_lines(draw) -> tuple[str, list[str]]:
    command = draw(st.sampled_from(sorted(NUMERIC)))
    chosen = draw(st.lists(st.sampled_from(NUMERIC[command]), max_size=4, unique=True))
    argv = [command, *START[command]]
    for flag in chosen:
        argv += [flag, draw(IN_RANGE[flag] if draw(st.integers(0, 3)) else VALUES)]  # 3 in 4 in range
    return command, argv


def _stand_in(monkeypatch) -> None:
    """Every worker replaced by one that raises Reached with what it was given."""
    monkeypatch.setattr(sweep, "run_record", lambda *a, **k: (_ for _ in ()).throw(Reached(("record", a, k))))
    monkeypatch.setattr(training_cli, "run_worker", lambda *a, **k: (_ for _ in ()).throw(Reached(("train", a, k))))
    monkeypatch.setattr(processes, "call", lambda *a, **k: (_ for _ in ()).throw(Reached(("bench", a, k))))
    monkeypatch.setattr(sweep, "references_ahead", lambda *a, **k: None)  # no reference thread left running


def _check_reached(command: str, call: tuple) -> None:
    """What a worker was given lies inside every range, and inside the memory limit."""
    kind, args, kwargs = call
    if kind == "train":
        mode, s, out = args
        recipes.Settings(**s.to_dict())  # every setting in its range (SettingsError otherwise)
        steps = int(kwargs["extra"][kwargs["extra"].index("--steps") + 1]) if mode == "lr-find" else None
        assert recipes.memory_bytes(s, range_test_steps=steps) <= MEMORY_LIMIT
        assert kwargs["timeout"] is None or 0 < kwargs["timeout"] < 7 * 24 * 3600
        assert steps is None or 1 <= steps <= 100_000
        extra = list(kwargs["extra"])
        devices = int(extra[extra.index("--devices") + 1]) if "--devices" in extra else 1
        recipes.check_devices(s, devices, s.train_limit or 60_000)  # every batch splits over the replicas
    elif kind == "record":
        assert 0 < kwargs["timeout"] < 7 * 24 * 3600 and str(kwargs["out"]).strip()
    else:
        timeout = args[3] if len(args) > 3 else kwargs.get("timeout")
        assert 0 < timeout < 7 * 24 * 3600


@settings(max_examples=150, **BUDGET)
@given(case=command_lines())
def test_any_run_settings_reach_the_worker_in_range_or_are_refused_in_one_line(monkeypatch, case):
    command, argv = case
    _stand_in(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        target = out / "r.json" if command == "bench" else out / "r.safetensors" if command == "record" else out
        code, stdout, err, reached = run(argv + [OUT_FLAG.get(command, "--out"), target])
        event(f"{command}: {'worker reached' if reached else f'exit {code}'}")
        if reached is None:
            line = refused(code, stdout, err)
            assert "--" in line or "NIN_MEMORY_LIMIT" in line, line  # it names the flag
        else:
            _check_reached(command, reached)
        assert not out.exists(), sorted(out.rglob("*"))  # refused or not, no worker ran: nothing left behind


# === the largest inputs, in bounded memory =====================================================
def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """`python -m nin ARGV` under an address-space limit of `limit` bytes."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "nin", *argv], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=cap, env={**os.environ, "PYTHONPATH": str(ROOT), "NIN_MEMORY_LIMIT": "1000"})


@pytest.mark.parametrize("name, content, words", [
    ("a block of 300,000 convs", '{"name": "x", "input_shape": [1, 8, 8], "num_classes": 10, "layers": '
     '[{"type": "nin_block", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1, "mlp": ['
     + ",".join(["1"] * 300_000) + "]}]}", ["mlp", "at most 1024"]),
    ("nesting a megabyte deep", "[" * 999_999, ["nested too deeply"]),
    ("an integer of 900,000 digits", '{"num_classes": 1' + "0" * 900_000 + "}", ["number too large"]),
])
def test_the_largest_spec_files_are_refused_in_bounded_memory(tmp_path, name, content, words):
    path = tmp_path / "spec.json"
    path.write_text(content)
    r = _limited(["summary", "--spec", str(path)], 512 * 2**20)
    refused(r.returncode, r.stdout, r.stderr, path, *words)
