"""A framework that fails inside a training run is said in one line, and a sweep counts it as failed: it
is neither a divergence (exit status 1 too, with its result saying so) nor a run left out of the report
without a word (training/worker.py, training/cli.py)."""

import json

import pytest

from harness import processes
from training import cli, worker
from training.recipe import Settings

KERAS_INDUCTOR = ("Exception encountered when calling Sequential.call().\n\n\x1b[1mTypeError: cannot determine truth "
                  "value of Relational: 1 < s69\x1b[0m\n\nArguments received by Sequential.call():\n  • training=True")


def test_a_failure_is_one_line_naming_the_error():
    assert worker.failure_line(ValueError("bad shape\n  C++ frame 1\n  C++ frame 2")) == "ValueError: bad shape"
    assert worker.failure_line(RuntimeError(KERAS_INDUCTOR)) == (
        "RuntimeError: Exception encountered when calling Sequential.call(). TypeError: cannot determine truth "
        "value of Relational: 1 < s69")
    assert worker.failure_line(KeyError()) == "KeyError"


@pytest.mark.parametrize("code, result, failed", [
    (0, {"status": "done"}, False),
    (1, {"status": "diverged", "reason": "the loss exceeded 4x its smoothed minimum"}, False),
    (1, {"status": "error", "reason": "keras-torch failed: RuntimeError: ..."}, True),
    (1, {}, True),  # no result at all: a crash before the worker could say anything
    (2, {"status": "error"}, True),
    (124, {"status": "error", "reason": "timed out after 5 s"}, True),
])
def test_only_a_divergence_that_says_so_is_not_a_failure(code, result, failed):
    assert cli.failed(code, result) is failed


def test_the_worker_says_a_framework_failure_in_one_line(monkeypatch, tmp_path, capsys):
    if processes.missing_here("torch"):
        pytest.skip("PyTorch is not installed in this environment")

    def train(*args, **kwargs):
        raise RuntimeError(KERAS_INDUCTOR)

    monkeypatch.setattr(worker, "train", train)
    monkeypatch.delenv("NIN_TRACEBACK", raising=False)
    settings = json.dumps(Settings(backend="torch", variant="d2l-bn", epochs=1).to_dict())
    assert worker.main(["train", "--settings", settings, "--out", str(tmp_path / "run")]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nin train: torch failed: RuntimeError: Exception encountered when calling Sequential.call()."
                          " TypeError: cannot determine truth value")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "error" and cli.failed(1, result)
