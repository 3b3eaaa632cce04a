# Two entry points, both self-contained on a fresh machine (Python 3.11+, make, a C compiler):
#   make demo   - create/reuse .venv, install snakeden (its runtime dependencies only), run the demo
#   make test   - create/reuse .venv, install snakeden[test,bench,ray], run lint, types and the whole
#                 test suite (the benchmark smoke tests need the bench extras, tests/on_ray/ the ray
#                 extra: a local multi-node Ray cluster); where `node` is
#                 installed, also `npm ci` and the Node runtime's tests in node/ (skipped without)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
# One stamp per install, named after pyproject.toml's checksum: an edit re-installs.
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
DEV_STAMP := $(VENV)/.installed-dev-$(SUM)

.PHONY: demo test lint node bench bench-short clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	rm -f $(VENV)/.installed-run-* && touch $@

# The extras include snakeden itself: a dev install also satisfies the demo.
$(DEV_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,bench,ray]'
	rm -f $(VENV)/.installed-* && touch $@ $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/python -m snakeden demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# The Node.js worker runtime: its own tests, and node_modules for the Python tests that run Node
# workers (they skip themselves without it). package-lock.json pins what `npm ci` installs.
node:
	@if command -v node >/dev/null 2>&1; then \
		cd node && npm ci --no-audit --no-fund --loglevel=error && npm test; \
	else \
		echo "node not found: skipping the Node.js worker runtime and its tests"; \
	fi

test: lint node
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(DEV_STAMP)
	$(BIN)/python -m snakeden bench

bench-short: $(DEV_STAMP)
	$(BIN)/python -m snakeden bench --short

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info node/node_modules
