# mlops-operator: every install and check step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install tools crds lint format typecheck unit test dev clean

## install: create .venv and install the operator with its dev/test extras
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## tools: build (once, then cached) the Go control plane: kube-apiserver, etcd, kwok, helm ...
tools:
	hack/build-tools.sh >/dev/null

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

## test: lint, typecheck, unit and integration tests (integration runs on the local control plane)
test: lint typecheck tools
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

## dev: the sample pipeline on a local control plane (DEV_ARGS=--keep leaves it running)
dev: install tools
	$(BIN)/mlopsctl dev $(DEV_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
