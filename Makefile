# One front door: `make help` lists every task.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint format chaos bench tools clean

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py builds invoice_batch/_avro_rows.c: a change to it reinstalls (recompiles).
$(STAMP): pyproject.toml setup.py invoice_batch/_avro_rows.c | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test tools

tools: ## install the Debian prometheus package (server + promtool) when absent
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

run: install ## run the demo: broker, emulator, consumer, collector and the article's five invoices
	$(BIN)/invoice-batch demo

lint: install ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Most test time is spent waiting on real services (group joins, batch processing), so
# three workers fit two cores; each test file runs in one worker (module fixtures).
TEST_WORKERS ?= 3

test: install tools lint ## everything CI runs: lint, unit, integration, e2e, short chaos and bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

chaos: install ## the long runs: slow tests (20,000-invoice scale-out, 100k emulator) and the full chaos run (200+ kills per store)
	$(BIN)/python -m pytest -q -m slow
	$(BIN)/python -m tests.chaos.harness --full

bench: install ## the benchmark suite; writes bench/results.json
	$(BIN)/python -m bench --full

clean: ## remove the venv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
