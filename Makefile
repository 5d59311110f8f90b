# The two commands of the README, and what they need. Every target is idempotent: an environment is
# (re)built only when its requirements file changes.
#   make conformance   the main job: summaries of every variant, then the conformance matrix of every
#                      backend (fp32 and fp64, eager for every variant, compiled for paper: compiling
#                      is slow on a CPU), written to records/matrix.md and .json; records are made
#                      two or more at a time (nin conformance --jobs; README: how long it takes); then
#                      the quick tier's matrix (the probe network, whose scheduled run replays every
#                      backend's dropout masks exactly: 5 minutes), written to records/quick-matrix.md
#   make test          ruff, then the test suite, each backend in its own environment
# Fashion-MNIST is found the same way by every command (common/data.py): $NIN_DATA_DIR, a copy beside
# the checkout (../shared/data/fashion-mnist), or ~/.cache/nin/fashion-mnist, where it is downloaded.
PYTHON ?= python3
VENV := .venv
MXVENV := .venv-mxnet
PYTEST_ARGS ?=
NIN := $(VENV)/bin/nin

.PHONY: setup data conformance test portability error-model bench clean

setup: $(VENV)/.installed $(MXVENV)/.installed data

# Fashion-MNIST, found ($NIN_DATA_DIR, ../shared/data/fashion-mnist, ~/.cache/nin/fashion-mnist) or
# downloaded once, and verified (sha256 of each file's content); offline with no copy, it stops with
# one line saying where to put the files. The tests never download; under `make test` a missing data
# set fails.
data: $(VENV)/.installed
	@$(NIN) data

$(VENV)/.installed: requirements/main.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements/main.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

$(MXVENV)/.installed: requirements/mxnet.txt pyproject.toml
	$(PYTHON) -m venv $(MXVENV)
	$(MXVENV)/bin/python -m pip install --quiet --upgrade pip
	$(MXVENV)/bin/python -m pip install --quiet -r requirements/mxnet.txt
	$(MXVENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

conformance: setup
	@for v in d2l paper d2l-single-1x1 d2l-gradual d2l-linear-head d2l-bn; do \
		$(NIN) summary --variant $$v || exit 1; echo; done
	$(NIN) conformance --compile-variants paper --report records/matrix.md --json-out records/matrix.json
	$(NIN) conformance --quick --report records/quick-matrix.md --json-out records/quick-matrix.json

# ruff, then pytest in each interpreter (scripts/test-all.sh: each Keras backend is a process of its own,
# KERAS_BACKEND being read once; the MXNet environment runs common's tests again and MXNet's). Every
# step runs even when an earlier one fails, then one summary line per step; NIN_REQUIRE turns a missing
# framework or missing data into a failure, not a skip. TEST_REPORT=FILE also writes the summary there.
test: setup
	VENV=$(VENV) MXVENV=$(MXVENV) PYTEST_ARGS="$(PYTEST_ARGS)" scripts/test-all.sh

# The CPU matrix under every numeric path a user's CPU may take that can be forced here (docs/conformance.md).
portability: setup
	$(VENV)/bin/python -m conformance.portability --report records/portability.md

# Measure the error model's spreads again (conformance/error_model.json); about an hour on two cores.
error-model: setup
	$(NIN) error-model --write --again

bench: setup
	$(NIN) bench

clean:
	rm -rf $(VENV) $(MXVENV) records/*.safetensors

# --- GPU (docs/gpu.md) ---------------------------------------------------------------------------
#   make setup GPU=1   .venv with PyTorch's and JAX's CUDA builds (requirements/gpu-*.txt), same versions
#   make setup-gpu     the same, on its own
#   make gpu-bundle    here, with PyPI: .whl/ = keras and what it needs (CPython 3.12, manylinux x86_64),
#                      Fashion-MNIST, the `fast` error-model spreads (into conformance/error_model.json: minutes
#                      of CPU, once) and the GPU training runs to resume; fails over 60 MiB
#   make gpu-session   on a CUDA machine that has PyTorch and JAX (no .venv there): the session in the
#                      order of value under GPU_BUDGET seconds; results in GPU_OUT (scripts/gpu_session.sh)
#   make gpu-dry-run   here: the same order on the CPU with a tiny network, from the bundle
#   make gpu-collect   here: a session's results from GPU_OUT into records/, benchmarks/results/, results/
GPU ?=
WHEELHOUSE ?= .whl
GPU_OUT ?= runs/gpu-session
GPU_BUDGET ?= 520

.PHONY: setup-gpu gpu-bundle gpu-session gpu-dry-run gpu-collect

ifeq ($(GPU),1)
setup: setup-gpu
endif

setup-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: $(VENV)/.installed requirements/gpu-torch.txt requirements/gpu-jax.txt
	$(VENV)/bin/python -m pip install --quiet -r requirements/gpu-torch.txt
	$(VENV)/bin/python -m pip install --quiet -r requirements/gpu-jax.txt
	touch $@

gpu-bundle: $(VENV)/.installed
	$(VENV)/bin/python -m gpu.bundle build --dest $(WHEELHOUSE)

gpu-session:
	WHEELHOUSE=$(WHEELHOUSE) bash scripts/gpu_session.sh $(GPU_OUT) $(GPU_BUDGET)

gpu-dry-run: $(VENV)/.installed
	PYTHON=$(VENV)/bin/python WHEELHOUSE=$(WHEELHOUSE) bash scripts/gpu_session.sh runs/gpu-dry-run 900 --dry-run

gpu-collect: $(VENV)/.installed
	$(VENV)/bin/python -m gpu collect $(GPU_OUT)
