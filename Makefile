# mailadmin: `make run` starts the whole product, `make test` runs the suite.
# Everything installs itself into $(VENV) on first use; later runs only check a stamp.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Extension-less Python scripts, which ruff and mypy do not discover on their own.
SCRIPTS := bin/run bin/with-redis bin/proof

.DEFAULT_GOAL := help
.PHONY: help install run test proof lint typecheck fmt clean

help:
	@echo "make run        keys, migrate, collect static, ensure an admin, run every process (Ctrl-C stops)"
	@echo "make test       run pytest with a real Redis (PYTEST_ARGS=... passes arguments)"
	@echo "make proof      run the proof suites (tests/proof, long ones too) and print one table"
	@echo "make lint       ruff check, ruff format --check, import contracts (lint-imports), mypy"
	@echo "make fmt        ruff check --fix, ruff format"
	@echo "make install    create $(VENV) and install requirements-dev.txt"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "mailadmin needs Python >= 3.11; set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installs when either requirements file changes; the order-only prerequisite keeps a
# fresh venv's mtime from forcing a reinstall on every run.
$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(STAMP)

run: $(STAMP)
	@# bin/run generates the keys into var/ first, then migrates and collects static files.
	$(BIN)/python bin/run

test: $(STAMP)
	$(BIN)/python bin/with-redis $(BIN)/python -m pytest $(PYTEST_ARGS)

proof: $(STAMP)
	$(BIN)/python bin/with-redis $(BIN)/python bin/proof $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . $(SCRIPTS)
	$(BIN)/ruff format --check . $(SCRIPTS)
	@# The layering contracts in pyproject.toml ([tool.importlinter]).
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP)
	$(BIN)/mypy --scripts-are-modules mailadmin smtpworker bin $(SCRIPTS)

fmt: $(STAMP)
	$(BIN)/ruff check --fix . $(SCRIPTS)
	$(BIN)/ruff format . $(SCRIPTS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache staticfiles
