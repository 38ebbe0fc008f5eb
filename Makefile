# Keel: the two commands are `make run` and `make test`; each installs what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test check lint typecheck fmt unit integration e2e chaos bench schemas clean

help:
	@echo "make run    - install, start Keel on this machine (nats-server + services) and run the demo"
	@echo "make test   - install, then lint, type-check and run every test"
	@echo "make bench  - measure Keel against the raw JetStream floor of the same server (prints ratios)"
	@echo "make chaos  - 1,000 runs while services and nats-server are killed at random; checks and prints counts"
	@echo "make fmt | lint | typecheck | unit | integration | e2e | schemas | clean"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The venv is rebuilt whenever the lock file changes; --frozen refuses a lock that is out of date.
$(BIN)/keel: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet
	@touch $@

install: $(BIN)/keel

run: install
	$(BIN)/keel up --demo

check: lint typecheck

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy contracts/keel_contracts shared/keel_shared services/*/keel_* bench

test: check
	$(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install
	$(BIN)/pytest -q tests/e2e

# 1,000 runs of the example workflows under fault injection while a monkey kills services and restarts
# nats-server (docs/chaos.md). The reduced version (60 runs) is part of `make test`. CHAOS_RUNS=200 is
# quicker; KEEL_CHAOS_SEED=N replays the workload, faults and strikes of an earlier run.
CHAOS_RUNS ?= 1000
chaos: install
	KEEL_CHAOS_RUNS=$(CHAOS_RUNS) $(BIN)/pytest -q -s -m chaos tests/chaos

# A benchmark, not a test: prints figures and ratios, writes bench/results/*.json. SCALE=0.3 is quicker.
SCALE ?= 1
bench: install
	$(BIN)/python -m bench --scale $(SCALE)

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: install
	$(BIN)/python -m keel_contracts.schema
	$(BIN)/python -m keel_router.workflow.schema
	$(BIN)/python -m keel_dashboard.asyncapi
	$(BIN)/python -m keel_approval.openapi > docs/approval-openapi.json

clean:
	rm -rf $(VENV) $(TOOLS) .keel .mypy_cache .ruff_cache .pytest_cache
