# fitserve: `make run` starts the service, `make test` runs the suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU wheel of torch on this machine's disk satisfies this pin; installing it first
# keeps pip from pulling a multi-GB CUDA build for the unpinned dependency.
TORCH_PIN ?= torch==2.13.*

.PHONY: install run test check lint screenshots clean

# `make test TESTS=tests/unit` runs one tier; empty runs all but the fuzz and browser tiers,
# which `make test TESTS="tests/fuzz -m fuzz"` and `make test TESTS="tests/browser -m browser"`
# run (CI does, once each; the browser tier needs Debian's chromium).
TESTS ?=

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	# The pin again: while backtracking over other packages pip would otherwise move torch to
	# the newest allowed release, a CUDA build.
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH_PIN)"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/fitserve db upgrade
	$(BIN)/fitserve serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint check

# The suite alone, without ruff: what `make test` runs after it, and what CI runs for the
# passes after the first.
check: install
	$(BIN)/pytest $(TESTS)

# The browser tier writes its screenshots to build/screenshots; this copies them over the
# ones the docs show.
screenshots: install
	$(BIN)/pytest tests/browser -m browser
	cp build/screenshots/*.png docs/screenshots/

clean:
	rm -rf $(VENV) fitserve.db fitserve.db-wal fitserve.db-shm
