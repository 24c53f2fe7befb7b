# The README's two commands: `make demo` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK := $(CURDIR)/.work

# Flower: keep its home inside the ignored work area, never install runtime deps, never phone home.
export FLWR_HOME := $(WORK)/flwr
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_TMPDIR := /tmp/fedadapt-ray
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test check lint typecheck pytest test-containers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	mkdir -p $(WORK) $(FLWR_HOME)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fedadapt simulate --preset demo --out results/demo --overwrite

lint: install
	$(BIN)/ruff check cli common client server simulations deployment serving tests
	$(BIN)/hadolint docker/*Dockerfile

typecheck: install
	$(BIN)/mypy cli common client server simulations deployment serving

pytest: install
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The fast suite (a few minutes on 2 cores): lint and every test not marked slow (real Flower processes, the real
# MiniLM, long training). `make test` still runs everything.
check: install
	$(BIN)/ruff check cli common client server simulations deployment serving tests
	$(BIN)/python -m pytest -q -m "not slow"

# docker/compose.yaml in real containers (tests/test_containers.py): podman, runc and mmdebstrap from Debian's
# packages (root), a local Debian base and flwr image (no registry needed); images are kept between runs.
test-containers: install
	command -v podman >/dev/null && command -v mmdebstrap >/dev/null || apt-get install -y podman runc mmdebstrap
	$(BIN)/python -m pytest -q -rs tests/test_containers.py

clean:
	rm -rf $(VENV) $(WORK) results
