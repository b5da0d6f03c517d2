# homeserver: `make run` starts a server on SQLite, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SERVER_NAME ?= localhost:8448
DATA_DIR ?= ./data
# off, token (a random registration token, printed) or open; used when the config is written.
REGISTRATION ?= off
STAMP := $(VENV)/.installed

.PHONY: run test interop lint install config clean compose-test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DATA_DIR)/homeserver.yaml: | $(STAMP)
	$(BIN)/homeserver generate-config --server-name $(SERVER_NAME) --data-dir $(DATA_DIR) --registration $(REGISTRATION)

config: $(DATA_DIR)/homeserver.yaml
	@# Creates the signing key and TLS certificate too, when they are missing.
	$(BIN)/homeserver generate-config --server-name $(SERVER_NAME) --data-dir $(DATA_DIR) --registration $(REGISTRATION)

run: $(STAMP) config
	$(BIN)/homeserver run -c $(DATA_DIR)/homeserver.yaml

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# A real Synapse beside two of ours; the first run installs it into ~/.cache/homeserver-interop.
interop: $(STAMP)
	$(BIN)/pytest -m interop tests/interop $(PYTEST_ARGS)

# The docker-compose stack started for real: engine, locally built base images, the image,
# `up --wait`, the amplification and ban scenarios, `down -v` (docs/testbed.md). Needs root
# when it must install the engine.
compose-test:
	bash tools/compose/compose-test.sh

lint: $(STAMP)
	$(BIN)/ruff check homeserver tests bench tools
	$(BIN)/mypy homeserver
	@# The house's shape: SQL and engine tests only in storage/, modules within 600 lines,
	@# no import cycle between packages (docs/architecture.md, "The map: layers").
	$(BIN)/python tools/check_layout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
