"""The shared pytest fixtures: every backend's tests are held to these same cases.

Options:
    --backends torch,keras-tf   which backends to test (default: all)
    --variants d2l,paper        which variants (default: all)
    --device cpu|gpu|all        where (default cpu; gpu tests skip with a reason when no GPU is seen)
Environment:
    NIN_REQUIRE=torch,jax,data a listed backend whose framework is absent, or Fashion-MNIST when `data`
                               is listed, FAILS instead of skipping (`make test` sets it, so that a
                               missing install cannot pass silently)
    NIN_DATA_DIR               where Fashion-MNIST is (the tests never download)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from common import backends, data, weights
from common import spec as specs
from harness import processes

ROOT = Path(__file__).resolve().parent.parent
# A limit that only ends a hang: far beyond what any machine takes for the work it bounds (seconds to
# minutes). No test asserts how fast something ran (CI's machines differ: see docs/architecture.md).
HANG_S = 3600


def pytest_addoption(parser):
    group = parser.getgroup("nin")
    group.addoption("--backends", default=",".join(backends.BACKENDS), help="comma-separated backends to test")
    group.addoption("--variants", default=",".join(specs.VARIANTS), help="comma-separated variants to test")
    group.addoption("--device", default="cpu", choices=("cpu", "gpu", "all"), help="devices to test on")


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def pytest_generate_tests(metafunc):
    """Parametrise `backend`, `variant` and `device` with ids such as [torch-d2l-cpu]; `backend` and
    `mutant` together where a test takes both ([torch-lr-x1.01-cpu])."""
    opts = metafunc.config.option
    if "backend" in metafunc.fixturenames and "mutant" in metafunc.fixturenames:
        # tests/test_mutations.py: each backend with the planted bugs of its own catalogue entry
        from mutations import for_backend  # tests/mutations.py: planted bugs import frameworks
        pairs = [(b, m) for b in _csv(opts.backends) for m in for_backend(b)]
        metafunc.parametrize(("backend", "mutant"), pairs, ids=[f"{b}-{m}" for b, m in pairs], scope="module")
    elif "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _csv(opts.backends), scope="module")
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", _csv(opts.variants), scope="module")
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", "gpu"] if opts.device == "all" else [opts.device], scope="module")


def require_installed(name: str) -> None:
    """For a test that runs the backend in its own interpreter: skip (fail under NIN_REQUIRE) where that
    interpreter is this one and lacks the backend's modules; another interpreter answers for itself."""
    missing = processes.missing_here(name) if processes.python_for(name) == sys.executable else []
    if missing:
        reason = f"{name}: {', '.join(missing)} not installed"
        if name in _csv(os.environ.get("NIN_REQUIRE", "")):
            pytest.fail(f"NIN_REQUIRE lists {name}, but {reason}")
        pytest.skip(reason)


def require_backend(name: str):
    """Import the backend's model module here, or skip (fail under NIN_REQUIRE) with the reason."""
    b = backends.get(name)
    missing = processes.missing_here(name)
    if not missing:
        for key, value in b.env:
            if os.environ.get(key, value) != value:
                missing = [f"{key}={value} (this process has {key}={os.environ[key]})"]
    if missing:
        msg = (f"{', '.join(missing)} not available in this process ({b.name} runs from {b.venv}"
               f"{' with ' + ' '.join(f'{k}={v}' for k, v in b.env) if b.env else ''}; `make test` runs it there)")
        if name in _csv(os.environ.get("NIN_REQUIRE", "")):
            pytest.fail(f"NIN_REQUIRE lists {name}, but {msg}")
        pytest.skip(msg)
    return processes.load(name, "model")


@pytest.fixture(scope="module")
def bk(backend, device):
    """The backend's (model, train) modules, configured for conformance numerics on `device`."""
    model = require_backend(backend)
    train = processes.load(backend, "train")
    train.configure(device, "fp32")  # first: XLA reads its determinism flag when its GPU backend starts
    if device == "gpu":
        try:
            model.default_device("gpu")
        except RuntimeError as e:
            pytest.skip(f"no GPU for {backend}: {e}")
    return model, train


@pytest.fixture(scope="module")
def spec(variant):
    return specs.get(variant)


@pytest.fixture(scope="module")
def canonical_weights(spec):
    """Random in every tensor (biases and batch-norm statistics too), seeded, float32."""
    return weights.random_weights(spec, seed=11)


def make_images(spec, n: int = 2, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).random((n,) + spec.input_shape, dtype=np.float32)


def make_labels(spec, n: int = 2, seed: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, spec.num_classes, size=n).astype(np.int32)


@pytest.fixture(scope="module")
def images(spec):
    return make_images(spec)


@pytest.fixture(scope="module")
def labels(spec):
    return make_labels(spec)


@pytest.fixture(scope="session")
def data_dir():
    """Where Fashion-MNIST is. Tests never download it: `make setup` does (`nin data`). Missing, it
    skips, or fails when NIN_REQUIRE lists `data`, as `make test` does: a fresh clone without the
    data must not pass with most numeric tests skipped."""
    d = data.default_dir()
    if data.missing_files(d):
        msg = (f"Fashion-MNIST is not on this machine (looked in {', '.join(map(str, data.search_dirs()))}); "
               "tests never download: `make setup` (or `nin data`) fetches it")
        if "data" in _csv(os.environ.get("NIN_REQUIRE", "")):
            pytest.fail(f"NIN_REQUIRE lists data, but {msg}")
        pytest.skip(msg)
    return d


# --- a tiny valid record: test_bad_inputs.py, test_reliability.py and test_properties.py damage it --
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A reference and error-model cache of the module's own (the tiny record's fill it in seconds),
    with no NIN_TRACEBACK or NIN_MEMORY_LIMIT of the caller's to change what the commands print."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIN_CACHE_DIR", str(path))
        mp.delenv("NIN_TRACEBACK", raising=False)
        mp.delenv("NIN_MEMORY_LIMIT", raising=False)
        yield path


@pytest.fixture(scope="module")
def good(tmp_path_factory, cache, data_dir):
    """A valid record of tiny_records.tiny() that passes `nin compare`; tests damage copies of it."""
    import contextlib
    import io

    from tiny_records import CASES, metadata, synthetic_tensors, tiny

    from conformance import records
    from conformance.cases import reference_results
    from nin import cli

    path = tmp_path_factory.mktemp("good") / "torch.safetensors"
    spec = tiny()
    records.write_record(path, synthetic_tensors(spec, reference_results(spec, CASES)), metadata(spec))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["compare", str(path)])
    assert code == 0 and "0 failed" in out.getvalue(), out.getvalue()
    return path
