# The two commands a developer needs: `make demo` and `make test`.
# Each creates the virtualenv, installs the project, makes sure RabbitMQ answers, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed

.PHONY: demo test lint typecheck unit broker node chaos bench bench-quick clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(NODE_INSTALLED): package.json
	@command -v npm >/dev/null || { echo "npm is needed for the AsyncAPI parser: apt-get install -y nodejs npm" >&2; exit 1; }
	npm install --no-audit --no-fund --no-package-lock --loglevel=error
	touch $@

node: $(NODE_INSTALLED)

broker:
	scripts/ensure-rabbitmq.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(INSTALLED)
	$(BIN)/mypy

demo: $(INSTALLED) broker
	$(BIN)/provisioner demo

test: $(INSTALLED) $(NODE_INSTALLED) broker lint typecheck
	$(BIN)/pytest

# The full chaos run (several replicas, faults, kills, broker cuts); `make test` runs a
# reduced one.
chaos: $(INSTALLED) broker
	$(BIN)/python -m tests.chaos.run --requests 300

# Every benchmark at full size, then at --quick size; each prints a JSON line last.
bench: $(INSTALLED) broker
	for b in api_economy throughput memory latency watch_cost; do $(BIN)/python -m bench.$$b || exit 1; done

bench-quick: $(INSTALLED) broker
	for b in api_economy throughput memory latency watch_cost; do $(BIN)/python -m bench.$$b --quick || exit 1; done

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
