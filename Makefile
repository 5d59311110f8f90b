# The two commands of the README, and what they need. Every target is idempotent: an environment is
# (re)built only when its requirements file changes.
#   make conformance   the main job: summaries of every variant, then the four backends' conformance matrix
#   make test          the test suite, each backend in its own environment
PYTHON ?= python3
VENV := .venv
MXVENV := .venv-mxnet
PYTEST_ARGS ?=
# Fashion-MNIST: a copy beside the checkout (as on the project's CI machines) is used as is;
# otherwise the loader downloads it into ~/.cache/nin and verifies it (sha256).
NIN_DATA_DIR ?= $(if $(wildcard ../shared/data/fashion-mnist/*.gz),$(abspath ../shared/data/fashion-mnist),)
export NIN_DATA_DIR

.PHONY: setup conformance test bench clean

setup: $(VENV)/.installed $(MXVENV)/.installed

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
		$(VENV)/bin/nin summary --variant $$v || exit 1; echo; done
	$(VENV)/bin/nin conformance --report records/matrix.md

# Tests run twice: the main environment runs common, torch, tf and jax; .venv-mxnet runs common again
# (on numpy 1.23) and mxnet. NIN_REQUIRE turns a missing framework into a failure, not a skip.
test: setup
	NIN_REQUIRE=torch,tf,jax $(VENV)/bin/python -m pytest $(PYTEST_ARGS) --backends torch,tf,jax
	NIN_REQUIRE=mxnet $(MXVENV)/bin/python -m pytest $(PYTEST_ARGS) --backends mxnet -m "not main_env"

bench: setup
	$(VENV)/bin/nin bench

clean:
	rm -rf $(VENV) $(MXVENV) records
