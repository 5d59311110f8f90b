"""Adding a backend is one package and one registry line (docs/architecture.md, "A new backend").

A copy of nin_torch under a new name (nin_torch2, in a temporary folder on PYTHONPATH) is registered
as backend `torch2` by one line, $NIN_EXTRA_BACKENDS, with nothing of the checkout edited; then it
goes through what a person adding a backend would run, in that order, each as the `nin` command in a
process of its own (the drivers start the backend's workers, which inherit the registration):
the contract (tests/test_mirror.py), a quick conformance record compared with the float64 reference,
the plain benchmark (one tiny step), the idioms page, and one training step.
"""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import HANG_S

from common import backends

pytestmark = [pytest.mark.main_env,
              pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed here")]

NAME, PACKAGE = "torch2", "nin_torch2"
ROOT = backends.ROOT


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    """(folder, environment): the copied package, and this environment with the package on PYTHONPATH
    and the one registry line."""
    where = tmp_path_factory.mktemp("added")
    shutil.copytree(ROOT / "nin_torch", where / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    line = json.dumps([{**dataclasses.asdict(backends.get("torch")), "name": NAME, "package": PACKAGE,
                        "title": "PyTorch, a copy"}])
    path = os.pathsep.join(filter(None, [str(where), str(ROOT), os.environ.get("PYTHONPATH")]))
    return where, {**os.environ, "PYTHONPATH": path, backends.EXTRA: line}


def run(env: dict, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_S)


def nin(env: dict, *argv) -> subprocess.CompletedProcess:
    return run(env, "-m", "nin", *argv)


def test_the_one_line_registers_it_everywhere(added):
    _, env = added
    out = run(env, "-c", "from common import backends; print(backends.get('torch2').package, backends.packages())")
    assert out.returncode == 0 and out.stdout.split()[0] == PACKAGE and "'nin_torch2'" in out.stdout, out.stderr
    assert NAME in nin(env, "record", "--help").stdout  # the drivers' choices come from the registry


def test_the_drivers_backend_lists_take_it_in(added):
    """The drivers keep no backend list of their own: the portability paths, the idioms columns, the GPU
    session's groups and the mirror test's packages all come from the registry, so the new line reaches them."""
    _, env = added
    code = ("import json; from conformance import portability; from gpu import plan; from idioms import topics\n"
            "import sys; sys.path.insert(0, 'tests'); import test_mirror\n"
            "print(json.dumps({'paths': {k: list(v[1]) for k, v in portability.PATHS.items()}, 'gpu': list(plan.BACKENDS),"
            " 'own': list(plan.OWN), 'idioms': topics.PACKAGES, 'mirror': test_mirror.PACKAGES}))")
    out = run(env, "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    lists = json.loads(out.stdout.splitlines()[-1])
    torch_paths = {k for k, v in lists["paths"].items() if "torch" in v}
    assert torch_paths and torch_paths == {k for k, v in lists["paths"].items() if NAME in v}, lists["paths"]
    assert NAME in lists["gpu"] and NAME in lists["own"], (lists["gpu"], lists["own"])
    assert lists["idioms"].get(PACKAGE) == "PyTorch, a copy" and PACKAGE in lists["mirror"], lists


def test_it_fulfils_the_contract(added):
    _, env = added
    out = run(env, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_mirror.py",
              "-k", f"{PACKAGE} or same_files")
    passed = {line.split("::", 1)[1] for line in out.stdout.splitlines() if line.startswith("PASSED ")}
    wanted = {f"test_every_registered_package_fulfils_the_contract[{PACKAGE}-{m}]" for m in backends.CONTRACT}
    assert wanted | {"test_backends_have_the_same_files"} <= passed, out.stdout[-3000:]


def test_its_quick_record_matches_the_reference(added):
    where, env = added
    record = where / "torch2-quick.safetensors"
    out = nin(env, "record", "--backend", NAME, "--quick", "--precision", "fp32", "--out", record)
    assert out.returncode == 0 and record.is_file(), out.stderr[-3000:]
    out = nin(env, "compare", record, "--json-out", where / "matrix.json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert NAME in (where / "matrix.json").read_text()


def test_its_plain_benchmark_runs(added):
    where, env = added
    result = where / "bench.json"
    out = nin(env, "bench", "--backend", NAME, "--compile", "plain", "--mode", "train", "--batch-size", "1",
              "--warmup", "0", "--windows", "1", "--steps", "1", "--device", "cpu", "--out", result)
    assert out.returncode == 0, out.stderr[-3000:]
    (r,) = json.loads(result.read_text())["results"]
    assert (r["backend"], r["compile"], r["status"]) == (NAME, "plain", "ok") and r["images_per_second"] > 0


def test_the_idioms_page_gives_it_a_column(added):
    pytest.importorskip("jinja2")
    where, env = added
    page = where / "idioms.html"
    out = nin(env, "idioms", "--html", page)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'data-package="{PACKAGE}"' in page.read_text() and "PyTorch, a copy" in page.read_text()
    out = nin(env, "idioms", "--check", page)
    assert out.returncode == 0, out.stderr[-3000:]


def test_it_trains_a_step(added, data_dir):
    where, env = added
    run_dir = where / "run"
    out = nin(env, "train", "--backend", NAME, "--resize", "72", "--train-limit", "16", "--test-limit", "16",
              "--batch-size", "16", "--epochs", "1", "--out", run_dir, "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    header = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert NAME in json.dumps(header)
