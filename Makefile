# mlops-operator: every install and check step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install crds lint format typecheck unit test dev clean

## install: create .venv and install the operator with its dev/test extras
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## crds: regenerate crds/ from the API models
crds: install
	$(BIN)/mlopsctl crds --out crds

## lint: ruff lint and format check
lint: install
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests

format: install
	$(BIN)/ruff format operator tests
	$(BIN)/ruff check --fix operator tests

## typecheck: mypy --strict on the operator package
typecheck: install
	$(BIN)/mypy --strict operator

## unit: unit tests only (no control plane)
unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## test: lint, typecheck and the whole test suite
test: lint typecheck
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

## dev: validate the sample pipeline against the API
dev: install
	$(BIN)/mlopsctl validate samples/*.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
