"""Every `nin ...` command that README.md and docs/*.md show runs as written, and every command that
a cited result file says produced it still parses.

The examples are read from the Markdown code blocks (a line that starts with `nin <command>`, with
its `\\` continuations). Each runs through `nin.cli.main`, in document order (an example may use what
an earlier one made: `nin compare records/*.safetensors` after `nin record`), in the small form that
SMALL states for it: flags appended (argparse keeps the last value, so they override) and paths
moved into a temporary folder, so that nothing in the checkout is written. An example that SMALL
does not know fails: a new example in the docs needs its small form here. Examples that need a GPU
are parsed only, and skipped with the reason where no GPU is visible.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tiny_records

from nin import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
TINY_EPOCH = "--resize 96 --train-limit 64 --test-limit 64 --batch-size 32 --epochs 1 --eval-every 1 --quiet"


@dataclass(frozen=True)
class Small:
    """How an example runs in the test: `extra` flags appended, `moved` path prefixes replaced
    ({tmp} is the test's folder, {tiny} a 1x8x8 spec file), and why (when it is not run as written)."""

    extra: str = ""
    moved: dict = field(default_factory=dict)
    why: str = ""
    gpu: bool = False
    elsewhere: str = ""  # run by that test instead (an example that needs another machine): parsed only here


RUNS = {"runs/": "{tmp}/runs/"}
NODES = "tests/test_two_machines.py (node 0 and node 1 together, on loopback, one device each)"
SMALL = {
    # README.md
    "nin summary --variant d2l --batch-size 128": Small(),
    "nin summary --spec my_net.json --json": Small(moved={"my_net.json": "{tiny}"}, why="a spec file of our own"),
    "nin summary --variant d2l-bn --depth 2": Small(),
    "nin record --backend torch --precision fp64": Small(
        "--variant {tiny} --out {tmp}/records/torch-cpu-fp64-eager.safetensors",
        why="a 1x8x8 network instead of all six (minutes), written into the test's folder"),
    "nin compare records/*.safetensors": Small(moved={"records/": "{tmp}/records/"}, why="the record just made"),
    "nin conformance": Small("--quick --backend torch --precision fp32 --out-dir {tmp}/quick",
                             why="the quick tier of one backend, instead of the main job (15 minutes)"),
    "nin conformance --quick": Small("--backend torch --precision fp32 --out-dir {tmp}/quick",
                                     why="one backend in fp32 (every backend is `make conformance`'s)"),
    "nin error-model": Small("--precision fp32 fp64", why="the stored spreads; `fast` would be measured (minutes)"),
    "nin bench --backend torch jax --mode train": Small(
        "--variant paper --batch-size 2 --warmup 0 --windows 1 --steps 1 --compile eager --out {tmp}/bench.json",
        why="one tiny step per backend"),
    "nin train --backend torch --variant d2l": Small(f"{TINY_EPOCH} --out {{tmp}}/runs/torch-d2l",
                                                     why="one epoch of 64 images at 96x96"),
    "nin plot runs/*": Small(moved=RUNS, why="the run just made"),
    "nin lr-find --backend torch --out runs/lr-find": Small(
        "--resize 96 --train-limit 64 --batch-size 16 --steps 3 --quiet", moved=RUNS, why="3 steps"),
    "nin idioms --topic block": Small(),
    "nin data": Small("--no-download", why="the tests never download"),
    # docs/idioms.md
    "nin idioms --list": Small(),
    "nin idioms --json": Small(),
    "nin idioms --html docs/idioms.html": Small(moved={"docs/idioms.html": "{tmp}/idioms.html"},
                                                why="written into the test's folder"),
    "nin idioms --check docs/idioms.html": Small(),
    # docs/training.md
    "nin train --backend torch --recipe tuned": Small(f"{TINY_EPOCH} --out {{tmp}}/runs/tuned",
                                                      why="one epoch of 64 images at 96x96"),
    "nin train --backend jax --recipe chapter --resize 96 --train-limit 4096 --epochs 2 --out runs/try": Small(
        "--train-limit 64 --test-limit 64 --epochs 1 --quiet", moved=RUNS, why="one epoch of 64 images"),
    "nin train --backend jax --out runs/try --resume": Small(moved=RUNS, why="the run above, complete"),
    "nin plot runs/try": Small(moved=RUNS),
    "nin sweep --backend mxnet torch jax keras-tf --variant d2l-bn --seeds 5 --resize 72 --train-limit 2048 "
    "--test-limit 2000 --batch-size 32 --epochs 4 --eval-every 4 --out runs/agree": Small(
        "--backend torch --seeds 2 --train-limit 64 --test-limit 64 --epochs 1 --eval-every 1", moved=RUNS,
        why="one backend, two seeds, one epoch of 64 images"),
    "nin lr-find --backend mxnet --variant-list d2l d2l-linear-head --recipe chapter --resize 96 --out DIR": Small(
        "--train-limit 64 --batch-size 16 --steps 3 --quiet", moved={"DIR": "{tmp}/lr"}, why="3 steps"),
    "nin sweep --backend mxnet torch jax keras-tf --variant d2l-bn --recipe tuned --resize 72 --batch-size 32 "
    "--train-limit 2048 --test-limit 2000 --epochs 4 --eval-every 4 --seeds 5 --out results/training/agreement-bn":
        Small("--backend torch --seeds 1 --train-limit 64 --test-limit 64 --epochs 1 --eval-every 1",
              moved={"results/training/agreement-bn": "{tmp}/agreement"},
              why="one backend, one seed, one epoch, into the test's folder"),
    "nin report results/training/agreement-bn --margin 0.5 --power-out results/training/agreement-bn "
    "--out results/training/agreement-bn": Small(
        "--out {tmp}/report --power-out {tmp}/power", why="the committed runs, reported into the test's folder"),
    "nin sweep --backend all --variant d2l-bn --recipe tuned --resize 72 --batch-size 32 --train-limit 2048 "
    "--test-limit 2000 --epochs 4 --eval-every 4 --seeds 46 --margin 0.5 --out results/training/agreement-all":
        Small("--backend torch --seeds 1 --train-limit 64 --test-limit 64 --epochs 1 --eval-every 1",
              moved={"results/training/agreement-all": "{tmp}/agreement-all"},
              why="one backend, one seed, one epoch (the full sweep is 14 hours), into the test's folder"),
    "nin train --backend jax --devices 2": Small(TINY_EPOCH + " --out {tmp}/jax-dp2", why="one epoch of 64 images"),
    # docs/distributed.md
    "nin record --backend torch --variant paper --precision fp64 --devices 2": Small(
        "--variant {tiny} --out {tmp}/data-parallel/torch-dp2.safetensors",
        why="a 1x8x8 network instead of paper, written into the test's folder"),
    "nin record --backend keras-tf --variant d2l-bn --precision fp64 --devices 4 --sync-batch-norm": Small(
        "--variant {tiny} --devices 2 --out {tmp}/data-parallel/keras-tf-dp2.safetensors",
        why="a 1x8x8 network on 2 replicas, written into the test's folder"),
    "nin compare records/data-parallel/*.safetensors": Small(moved={"records/data-parallel/": "{tmp}/data-parallel/"},
                                                             why="the two records just made"),
    "nin train --backend torch --devices 2 --out runs/dp": Small(
        TINY_EPOCH + " --epochs 2", moved={"runs/dp": "{tmp}/dp"}, why="two epochs of 64 images at 96x96"),
    "nin train --backend jax --devices 4 --device gpu": Small(gpu=True),
    "nin train --backend torch --devices 8 --nodes 2 --node-rank 0 --rendezvous node0.example:29500 --out runs/big":
        Small(elsewhere=NODES),
    "nin train --backend torch --devices 8 --nodes 2 --node-rank 1 --rendezvous node0.example:29500 --out runs/big":
        Small(elsewhere=NODES),
    "nin train --backend torch --out runs/dp --resume --devices 1": Small(
        TINY_EPOCH + " --epochs 2", moved={"runs/dp": "{tmp}/dp"},
        why="the run just made (complete: it says so), with the flags it was made with"),
    "nin bench --backend torch jax mxnet --devices 1 2 --batch-size 16 --compile compiled": Small(
        "--backend torch --variant paper --batch-size 2 --compile eager --warmup 1 --windows 2 --steps 1 "
        "--out {tmp}/scaling.json", why="PyTorch alone, the paper net, batch 2, two windows of one step"),
    "nin conformance --devices 2 4": Small("--quick --backend mxnet --precision fp64 --devices 2 --out-dir {tmp}/dpq",
                                           why="the quick tier of one backend on 2 replicas (the full job: hours)"),
    # docs/gpu.md
    "nin conformance --device gpu --precision fp32 fast --compile eager --backend torch jax keras-jax keras-torch "
    "--variant d2l paper d2l-bn --report records/matrix-gpu.md --json-out records/matrix-gpu.json": Small(gpu=True),
    "nin bench --device gpu --backend torch jax keras-jax keras-torch --mode train infer --precision fp32 bf16 "
    "--compile eager compiled --batch-size 64 256 512 --verify": Small(gpu=True),
}


def _commands() -> set[str]:
    return {name for action in cli.parser()._actions if hasattr(action, "choices") and isinstance(action.choices, dict)
            for name in action.choices}


def examples() -> list[tuple[str, str]]:
    """(file, command) for every `nin <command>` line of the docs' code blocks, in document order."""
    known, out = _commands(), []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if not line.startswith("nin "):
                    continue
                words = shlex.split(line, comments=True)
                if len(words) >= 2 and words[0] == "nin" and words[1] in known:
                    out.append((str(doc.relative_to(ROOT)), " ".join(words)))
    return out


def test_the_docs_show_examples_and_each_has_its_small_form():
    found = examples()
    assert len(found) >= 20, found
    unknown = [cmd for _, cmd in found if cmd not in SMALL]
    assert not unknown, f"examples without a small form in tests/test_examples.py SMALL: {unknown}"


def _has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


def _argv(command: str, small: Small, tmp: Path, tiny: Path) -> list[str]:
    fill = lambda text: text.replace("{tmp}", str(tmp)).replace("{tiny}", str(tiny))  # noqa: E731
    words = shlex.split(command)[1:] + shlex.split(fill(small.extra))
    for old, new in small.moved.items():
        words = [fill(new) + w[len(old):] if w.startswith(old) else w for w in words]
    return [w2 for w in words for w2 in (sorted(glob.glob(w)) or [w] if "*" in w else [w])]


@pytest.fixture(scope="module")
def ran(tmp_path_factory, data_dir):
    """Every example, run once in document order: command -> (exit status, stdout + stderr)."""
    tmp = tmp_path_factory.mktemp("examples")
    tiny = tmp / "tiny.json"
    tiny.write_text(tiny_records.tiny().to_json())
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        for _, command in examples():
            small = SMALL.get(command)
            if small is None or small.gpu or small.elsewhere or command in results:
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    code = cli.main(_argv(command, small, tmp, tiny))
                except SystemExit as e:
                    code = e.code
            results[command] = (code, out.getvalue())
    return results


@pytest.mark.main_env
@pytest.mark.parametrize("where, command", examples(), ids=[f"{w}: {c[:60]}" for w, c in examples()])
def test_example_runs_as_written(ran, where, command):
    small = SMALL[command]
    argv = shlex.split(command)[1:]
    parsed = cli.parser().parse_args(argv)  # as written, whatever its small form adds
    assert parsed.func
    if small.gpu:
        if not _has_gpu():
            pytest.skip(f"{where}: needs a GPU (parsed, not run)")
        pytest.skip(f"{where}: a GPU run, made by docs/gpu.md's session, not by the tests")
    if small.elsewhere:
        pytest.skip(f"{where}: needs its other machines; parsed here, run by {small.elsewhere}")
    code, output = ran[command]
    assert code == 0, f"{where}: `{command}` exited {code}\n{output[-3000:]}"
