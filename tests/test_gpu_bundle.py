"""The GPU session's bundle (gpu/bundle.py, gpu/wheels.py), without a GPU and without network: what it
carries and its limits, the error model's spreads it brings, and the wheels (pins, the download command,
an offline install for real). The one test that downloads from PyPI skips when PyPI cannot be reached.
"""

import subprocess
from pathlib import Path

import pytest

from common import spec as specs
from common import weights
from gpu import bundle, plan, report, wheels
from training import recipe, runs


def _opt(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_a_d2l_training_run_comes_back_in_one_file_and_one_fits_in_the_bundle(tmp_path):
    """The checkpoint of the d2l network (weights and momentum, float32) under the tool's 16 MiB a file;
    the bundle with one run to resume under its 60 MiB (wheels and data as `make gpu-bundle` measured)."""
    init = weights.init(specs.get("d2l"), 0)
    settings = recipe.from_recipe("tuned", "torch", device="gpu", precision="fast").to_dict()
    runs.write_checkpoint(tmp_path, weights=init, optimizer={f"momentum/{k}": v for k, v in init.items()},
                          meta={"backend": "torch", "settings": settings, "epoch": 20, "step": 18760,
                                "rng": {"seed": 0, "next_epoch": 20, "note": ""}, "records": [{"epoch": 1}] * 20})
    (tmp_path / "metrics.jsonl").write_text("{}\n" * 2000)
    payload = report.run_tar(tmp_path)
    assert len(payload) < report.OUT_LIMITS["file_bytes"]
    assert 39.4 * bundle.MIB + len(payload) < bundle.BUNDLE_LIMIT < 39.4 * bundle.MIB + 2 * len(payload)


def test_the_bundle_refuses_more_than_60_mib(tmp_path, monkeypatch):
    (tmp_path / "big").write_bytes(b"\0" * (bundle.BUNDLE_LIMIT + 1))
    with pytest.raises(wheels.WheelhouseError, match="over the bundle's 60 MiB limit"):
        bundle.check_size(tmp_path)
    (tmp_path / "big").write_bytes(b"\0" * (bundle.BUNDLE_LIMIT - 1))
    monkeypatch.setattr(bundle, "checkout_bytes", lambda: 8 * bundle.MIB)
    with pytest.raises(wheels.WheelhouseError, match="over the 64 MiB that travel"):
        bundle.check_size(tmp_path)


def test_the_fast_spreads_of_the_session_s_variants_are_in_the_store():
    """`make gpu-bundle` measured them once: the session then runs no error model on the device."""
    assert bundle.missing_spreads(list(plan.VARIANTS), "fast") == []
    assert bundle.missing_spreads(list(plan.VARIANTS), "fp32") == []


# --- the wheels ------------------------------------------------------------------------------------------
def test_every_bundled_distribution_has_main_txt_s_version():
    pins = wheels.read_pins()
    reqs = wheels.pinned(wheels.read_names(), pins)
    assert "keras==" + pins["keras"] in reqs and any(r.startswith("optree==") for r in reqs)
    assert not any(r.split("==")[0].lower() in ("numpy", "torch", "jax", "jaxlib", "tensorflow") for r in reqs)
    with pytest.raises(wheels.WheelhouseError, match="not pinned"):
        wheels.pinned(["no-such-dist"], pins)


def test_download_command_asks_for_cpython_312_manylinux_wheels_only(tmp_path):
    cmd = wheels.download_command(["keras==3.15.1"], tmp_path, python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"] and {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert _opt(cmd, "--python-version") == "3.12" and _opt(cmd, "--implementation") == "cp"
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert "manylinux2014_x86_64" in platforms and "manylinux_2_28_x86_64" in platforms


def test_two_versions_of_one_wheel_are_refused(tmp_path):
    w = wheels.parse_wheel(Path("typing_extensions-4.16.0-py3-none-any.whl"))
    assert (w.name, w.version) == ("typing-extensions", "4.16.0")
    for name in ("rich-15.0.0-py3-none-any.whl", "rich-14.0.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(wheels.WheelhouseError, match="more than one wheel of rich"):
        wheels.wheels(tmp_path)


def test_download_from_pypi(tmp_path):
    """The real download of the smallest wheel of the list; skipped where PyPI cannot be reached."""
    req = wheels.pinned(["namex"], wheels.read_pins())
    proc = subprocess.run(wheels.download_command(req, tmp_path), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"PyPI is not reachable here: {proc.stderr.strip()[-200:]}")
    (wheel,) = wheels.wheels(tmp_path)
    assert (wheel.name, wheel.version) == ("namex", req[0].split("==")[1])
