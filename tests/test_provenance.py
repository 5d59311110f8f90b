"""The matrix names where it came from: date, git commit, command, the CPU and its ISA flags, and the
frameworks' versions (records/matrix.md and records/matrix.json; README, "Nothing stated without a
file"). A comparison of two synthetic records: no framework, no reference is computed."""

import json
import re
from pathlib import Path

from common import provenance
from conformance import compare, matrix
from conformance.cases import Cases
from conformance.records import Record

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_bf16 rdrand

processor\t: 1
model name\t: something else
"""

VERSIONS = {"torch": {"torch": "2.13.0+cpu", "numpy": "2.4.6"}, "jax": {"jax": "0.10.2", "flax": "0.12.8"}}


def _fake_records(tmp_path, monkeypatch) -> list[str]:
    """Two files that read as records of torch and jax holding no variant."""
    paths = []
    for name in VERSIONS:
        path = tmp_path / f"{name}.safetensors"
        path.write_text(name)  # different bytes: not a copy of each other
        paths.append(str(path))

    def read(p):
        backend = Path(p).stem
        meta = {"backend": backend, "compile": "eager", "device": "cpu", "precision": "fp32",
                "device_name": "x86_64", "versions": VERSIONS[backend]}
        return Record(path=Path(p), meta=meta, tensors={}, cases=Cases(), specs={})

    monkeypatch.setattr(compare, "read_record", read)
    return paths


def test_cpu_names_the_model_and_the_isa_flags_that_matter():
    c = provenance.cpu(CPUINFO)
    assert c["model"] == "Intel(R) Xeon(R) Platinum 8480+" and c["family"] == "6" and c["model_number"] == "143"
    assert c["isa_flags"].split() == sorted(["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                             "avx512_bf16", "amx_tile", "amx_bf16"])
    assert c["avx512"] == "yes" and c["amx"] == "yes"
    assert provenance.cpu("")["isa_flags"] == "unknown"  # no /proc/cpuinfo: said, not guessed


def test_the_matrix_names_date_commit_command_cpu_and_versions(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/some/where/bin/nin", "compare", "records/a.safetensors"])
    result = compare.compare(_fake_records(tmp_path, monkeypatch))
    text = matrix.render(result)
    head = text.split("Records:")[0]
    assert re.search(r"Date: \d{4}-\d{2}-\d{2}T", head)
    assert re.search(r"Commit: ([0-9a-f]{40}|unknown)", head)
    assert "Command: nin compare records/a.safetensors" in head
    assert f"CPU {provenance.cpu()['model']}" in head and "ISA flags: " in head
    assert "torch: torch 2.13.0+cpu, numpy 2.4.6" in head and "jax: jax 0.10.2, flax 0.12.8" in head
    prov = json.loads(json.dumps(matrix.to_json(result)))["provenance"]
    for key in ("date", "commit", "command", "cpu", "python", "platform", "versions"):
        assert prov[key], key
    assert {"model", "family", "model_number", "cpus", "isa_flags"} <= set(prov["cpu"])
    assert prov["versions"] == VERSIONS
    assert prov["command"] == "nin compare records/a.safetensors"


def test_two_versions_of_one_framework_are_both_named(tmp_path, monkeypatch):
    paths = _fake_records(tmp_path, monkeypatch)
    other = tmp_path / "old" / "torch.safetensors"
    other.parent.mkdir()
    other.write_text("torch, older")
    real_read = compare.read_record

    def read(p):
        rec = real_read(p)
        if Path(p) == other:
            rec.meta["versions"] = {"torch": "2.12.0+cpu", "numpy": "2.4.6"}
        return rec

    monkeypatch.setattr(compare, "read_record", read)
    versions = compare.compare([paths[0], str(other)]).provenance["versions"]
    assert sorted(v["torch"] for v in versions.values()) == ["2.12.0+cpu", "2.13.0+cpu"]


def test_the_commit_is_unknown_outside_a_repository(tmp_path):
    assert provenance.git_commit(tmp_path) == "unknown"
