"""The schema layer (common/schema.py): the pydantic models in front of a spec (common/spec.py), a
record's metadata (conformance/records.py) and a run's settings (training/runs.py). For each input a
wrong type, an unknown field and a missing field is one line naming the file, the field, what was
expected and what was there (never pydantic's own report of several lines), and a valid input
still loads."""

from __future__ import annotations

import copy
import json

import pytest
from tiny_records import metadata, synthetic_tensors, tiny

from common import schema
from common import spec as specs
from conformance import records
from nin import cli
from training import recipe, runs

PAPER = specs.get("paper").to_dict()


def one_line(error: Exception, *words: str) -> str:
    text = str(error)
    assert len(text.splitlines()) == 1, text
    assert "validation error" not in text and "errors.pydantic.dev" not in text, text  # not pydantic's report
    for w in words:
        assert str(w) in text, f"{w!r} not in {text!r}"
    return text


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _drop(*keys):
    def change(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


# === specs ========================================================================================
SPEC_CASES = [  # (id, change to the paper's spec, words of the one line besides the file's path)
    ("wrong type", _set("layers", 0, "kernel_size", "5"),
     ["layers[0].kernel_size: expected an integer from 1 to 64", 'got a string ("5")']),
    ("unknown field", _set("layers", 1, "dilation", 2),
     ["layers[1]: unknown field(s) ['dilation']", "expected some of the fields ['type', 'kernel_size'"]),
    ("missing field", _drop("num_classes"), ["missing field(s) ['num_classes']"]),
]


@pytest.mark.parametrize("change, words", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_a_bad_spec_file_is_one_line(tmp_path, change, words):
    d = copy.deepcopy(PAPER)
    change(d)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    with pytest.raises(specs.SpecError) as e:
        specs.NetSpec.from_json_file(path)
    one_line(e.value, f"{path}: ", *words)


def test_a_bad_spec_is_one_line_on_the_command_line(tmp_path, capsys):
    d = copy.deepcopy(PAPER)
    d["layers"][2]["rate"] = "half"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    assert cli.main(["summary", "--spec", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, str(path), "layers[2].rate: expected a number in [0, 1)", 'got a string ("half")')
    assert "Traceback" not in err


def test_a_valid_spec_file_loads(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(PAPER))
    assert specs.NetSpec.from_json_file(path) == specs.get("paper")
    for name in specs.VARIANTS:  # every layer kind and every optional field, through to_dict and back
        assert specs.NetSpec.from_dict(specs.get(name).to_dict()) == specs.get(name)


# === records' metadata ============================================================================
META_CASES = [  # (id, change to a valid record's metadata, words besides the file's path)
    ("wrong type", _set("precision", 32), ["metadata.precision: expected one of ['fp32', 'fp64', 'fast']",
                                           "got a number (32)"]),
    ("unknown field", _set("variants", "tiny", "flops", 5),
     ["metadata.variants.tiny: unknown field(s) ['flops']", "['spec', 'layer_shapes', 'param_count']"]),
    ("missing field", _drop("running_variance"), ["metadata: missing field(s) ['running_variance']"]),
]


def _record(path, change=None):
    spec = tiny()
    meta = metadata(spec)
    if change:
        change(meta)
    return records.write_record(path, synthetic_tensors(spec), meta)


@pytest.mark.parametrize("change, words", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_bad_record_metadata_is_one_line(tmp_path, change, words):
    path = _record(tmp_path / "bad.safetensors", change)
    with pytest.raises(records.RecordError) as e:
        records.read_record(path)
    one_line(e.value, f"{path}: ", *words)


def test_a_valid_record_loads(tmp_path):
    rec = records.read_record(_record(tmp_path / "good.safetensors"))
    assert rec.backend == "torch" and list(rec.specs) == ["tiny"] and rec.specs["tiny"] == tiny()


# === run settings ====================================================================================
SETTINGS_CASES = [  # (id, change to the settings of a run's metrics header, words besides the file:line)
    ("wrong type", _set("lr", "0.1"), ["settings.lr: expected a number", 'got a string ("0.1")']),
    ("unknown field", _set("learning_rate", 0.1),
     ["settings: unknown field(s) ['learning_rate']", "expected some of the fields ['backend', 'variant'"]),
    ("missing field", _drop("backend"), ["settings: missing field(s) ['backend']"]),
]


def _run(run, change=None):
    run.mkdir()
    settings = recipe.Settings(backend="torch", resize=72, epochs=2).to_dict()
    if change:
        change(settings)
    header = {"type": "header", "format": runs.METRICS_FORMAT, "backend": "torch", "variant": "d2l", "device": "cpu",
              "device_name": "cpu", "versions": {}, "settings": settings, "command": "nin train", "created": "now"}
    epoch = {"type": "epoch", "epoch": 1, "step": 4, "lr": 0.1, "train_loss": 2.3, "train_accuracy": 0.1,
             "test_loss": 2.2, "test_accuracy": float("nan"), "test_zero_logits": 0.0, "images_per_second": 10.0,
             "train_seconds": 1.0, "wall_seconds": 1.5}
    return runs.write_metrics(run, [header, epoch])


@pytest.mark.parametrize("change, words", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_bad_run_settings_are_one_line(tmp_path, change, words):
    path = _run(tmp_path / "run", change)
    with pytest.raises(runs.RunError) as e:
        runs.read_metrics(path)
    one_line(e.value, f"{path}:1: ", *words)
    with pytest.raises(runs.RunError) as e:  # the same settings as another file holds them
        runs.settings_from(json.loads(path.read_text().splitlines()[0])["settings"], "checkpoint.safetensors")
    one_line(e.value, "checkpoint.safetensors: settings", *words)


def test_valid_run_settings_load(tmp_path):
    header, epochs, others = runs.read_metrics(_run(tmp_path / "run"))
    assert runs.settings_from(header["settings"], "x") == recipe.Settings(backend="torch", resize=72, epochs=2)
    assert len(epochs) == 1 and others == []


def test_a_range_stays_the_settings_own_with_its_flag(tmp_path):
    """Types are the schema's; ranges stay recipe.Settings' (the command line's words, with the flag)."""
    path = _run(tmp_path / "run", _set("lr", -3))
    with pytest.raises(runs.RunError) as e:
        runs.read_metrics(path)
    one_line(e.value, f"{path}:1: settings: --lr: expected a number in (0, 100]", "got -3")


# === the converter itself ==========================================================================
def test_paths_leave_out_a_union_s_tag_and_quote_odd_keys():
    assert schema.path_of(("layers", 2, "nin_block", "mlp", 1), {"layers": [{}, {}, {"type": "nin_block"}]},
                          tags=specs.LAYER_TYPES) == "layers[2].mlp[1]"
    assert schema.path_of(("records", 0, "epoch"), {"records": [{"type": "epoch"}]}, root="checkpoint") == \
        "checkpoint.records[0].epoch"  # no tags named: a field named as its line's type stays
    assert schema.path_of(("versions", "a\nb", "[key]"), {"versions": {"a\nb": 1}}, root="metadata") == \
        'metadata.versions."a\\nb" (a key)'
