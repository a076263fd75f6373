# The two commands a developer needs: `make demo` and `make test`.
# Each creates the virtualenv, installs the project from the locks, makes sure RabbitMQ
# answers, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
IMAGE ?= localhost/do-db-provisioner:dev
IMAGE_ID := build/image-id
RUNTIME_LOCK := requirements/runtime.txt
DEV_LOCK := requirements/dev.txt
BUILD_LOCK := requirements/build.txt
# One resolution for every platform and Python >= 3.11, with the hash of every file.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command 'make lock'

.PHONY: demo test test-latest lock lock-upgrade lint typecheck unit broker prometheus iptables node chaos \
	chaos-cluster chaos-partition bench \
	bench-quick image image-test clean

# A new virtualenv each time the locks change, so nothing outside them stays installed.
# The project itself is built without isolation by the locked setuptools: nothing unlocked
# is fetched.
$(INSTALLED): pyproject.toml $(DEV_LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(NODE_INSTALLED): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the AsyncAPI parser: apt-get install -y nodejs npm" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Regenerate the locks from pyproject.toml, keeping the locked versions where they still fit.
# The image installs the runtime lock and builds the package with the build lock.
lock: $(INSTALLED)
	$(LOCK) pyproject.toml -o $(RUNTIME_LOCK)
	$(LOCK) pyproject.toml --extra dev --extra demo -o $(DEV_LOCK)
	$(LOCK) requirements/build.in -o $(BUILD_LOCK)

# The same, moving every dependency to its newest version.
lock-upgrade: $(INSTALLED)
	$(LOCK) --upgrade pyproject.toml -o $(RUNTIME_LOCK)
	$(LOCK) --upgrade pyproject.toml --extra dev --extra demo -o $(DEV_LOCK)
	$(LOCK) --upgrade requirements/build.in -o $(BUILD_LOCK)

node: $(NODE_INSTALLED)

broker:
	scripts/ensure-rabbitmq.sh

# promtool for the alert rules' unit tests, the server for the scrape test.
prometheus:
	scripts/ensure-prometheus.sh

# iptables for the network-partition tests (installed with apt where root may).
iptables:
	scripts/ensure-iptables.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

typecheck: $(INSTALLED)
	$(BIN)/mypy

demo: $(INSTALLED) broker
	$(BIN)/provisioner demo

test: $(INSTALLED) $(NODE_INSTALLED) broker prometheus iptables lint typecheck image
	PROVISIONER_IMAGE="$$(cat $(IMAGE_ID))" $(BIN)/pytest

# The image, with docker or podman (podman installed with apt where neither is there), on the
# official Python base or, without a registry, on a Debian base made once with debootstrap.
image:
	scripts/build-image.sh $(IMAGE) $(IMAGE_ID)

# The image run against the local RabbitMQ and the simulator (tests/image).
image-test: $(INSTALLED) broker image
	PROVISIONER_IMAGE="$$(cat $(IMAGE_ID))" $(BIN)/pytest -m image tests/image

# The whole test suite against the newest release of every Python and Node dependency, in a
# throwaway copy of the working tree: an upgrade is a decision, not a surprise.
test-latest: broker prometheus iptables
	scripts/test-latest.sh $(PYTHON)

# The full chaos run (several replicas, faults, kills, broker cuts); `make test` runs a
# reduced one.
chaos: $(INSTALLED) broker
	$(BIN)/python -m tests.chaos.run --requests 300

# The same on a three-node RabbitMQ cluster of its own: nodes killed in turn, leaders moved,
# and the command queue's leader cut off from the others for a while (iptables on the nodes'
# own loopback addresses; needs root, else the partition is skipped with the reason printed).
# `make test` runs a reduced one. chaos-partition is the same run, under its earlier name.
chaos-cluster chaos-partition: $(INSTALLED) broker iptables
	$(BIN)/python -m tests.chaos.run --cluster --partition --requests 300 --replicas 3

# Every benchmark at full size, then at --quick size; each prints a JSON line last.
bench: $(INSTALLED) broker
	for b in api_economy throughput memory latency watch_cost flood scale; do $(BIN)/python -m bench.$$b || exit 1; done

bench-quick: $(INSTALLED) broker
	for b in api_economy throughput memory latency watch_cost flood scale; do $(BIN)/python -m bench.$$b --quick || exit 1; done

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis $(IMAGE_ID)
