# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONFIG ?= config.toml

.PHONY: run test lint bench bench-peers check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(VENV)/.lint-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[test,lint]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

run: $(VENV)/.run-installed
	$(BIN)/tollgate serve --config $(CONFIG)

check-config: $(VENV)/.run-installed
	$(BIN)/tollgate check-config --config $(CONFIG)

# The browser tests drive Debian's chromium (never a browser download).
$(VENV)/.chromium-installed: | $(BIN)/python
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $@

# The PostgreSQL ledger tests start a throwaway server from Debian's postgresql 15 binaries.
PG_BIN ?= /usr/lib/postgresql/15/bin
$(VENV)/.postgres-installed: | $(BIN)/python
	test -x $(PG_BIN)/initdb || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)
	touch $@

test: $(VENV)/.test-installed $(VENV)/.chromium-installed $(VENV)/.postgres-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-peers: $(VENV)/.bench-installed
	$(BIN)/python -m bench --peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
