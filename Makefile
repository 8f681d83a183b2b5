# fitserve: `make run` starts the service, `make test` runs the suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU wheel of torch on this machine's disk satisfies this pin; installing it first
# keeps pip from pulling a multi-GB CUDA build for the unpinned dependency.
TORCH_PIN ?= torch==2.13.*

.PHONY: install run test lint clean

# `make test TESTS=tests/unit` runs one tier; empty runs all but the fuzz tier, which
# `make test TESTS="tests/fuzz -m fuzz"` runs (CI does, once).
TESTS ?=

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/fitserve db upgrade
	$(BIN)/fitserve serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest $(TESTS)

clean:
	rm -rf $(VENV) fitserve.db fitserve.db-wal fitserve.db-shm
