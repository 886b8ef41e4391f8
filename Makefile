# mlops-operator: every install and check step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The trainer (torch, onnx, wandb) has a venv of its own: torch stays out of the operator's.
TRAINER_VENV ?= .venv-trainer
TRAINER_STAMP := $(TRAINER_VENV)/.installed
# The MLflow server of tests and `make dev` (the registry): its server dependencies stay out of .venv.
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
MLFLOW_VERSION := 3.17.2
# The real tritonserver of tests and `make dev` (bundled in nvidia-pytriton, python backend only) and the
# onnxruntime its python-backend models run on: numpy must stay < 2 there, so it has a venv of its own.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
PYTEST_ARGS ?=
# Test processes of `make test` (pytest-xdist, whole files per process): each starts its own local
# control plane, so tests never share a cluster. 2 halves the integration tests' wall time on 2 cores.
TEST_WORKERS ?= 2
# What the operator and the workloads agree on (stdlib only): installed, editable, into both venvs.
CONTRACT := contract
LINTED := operator tests trainer-image bench $(CONTRACT)

.PHONY: install trainer mlflow triton tools crds lint format typecheck unit test dev clean

## install: create .venv and install the operator with its dev/test extras
install: $(STAMP)

$(STAMP): pyproject.toml $(CONTRACT)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ./$(CONTRACT) -e '.[dev]'
	touch $(STAMP)

## trainer: the trainer's own venv (torch from PyPI, onnx, onnxruntime, wandb, moto)
trainer: $(TRAINER_STAMP)

$(TRAINER_STAMP): trainer-image/pyproject.toml $(CONTRACT)/pyproject.toml
	test -x $(TRAINER_VENV)/bin/python || $(PYTHON) -m venv $(TRAINER_VENV)
	$(TRAINER_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRAINER_VENV)/bin/python -m pip install -q -e ./$(CONTRACT) -e './trainer-image[dev]'
	touch $(TRAINER_STAMP)

## mlflow: the MLflow tracking server's own venv (mlflow server, its basic-auth app, boto3 for S3),
## which is also the data scientist's client of tests and `make dev` (onnx, onnxruntime: mlflow.onnx/pyfunc)
mlflow: $(MLFLOW_STAMP)

$(MLFLOW_STAMP): Makefile
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(MLFLOW_VENV)/bin/python -m pip install -q 'mlflow[auth]==$(MLFLOW_VERSION)' boto3 'onnx>=1.16,<2' 'onnxruntime>=1.18,<2'
	touch $(MLFLOW_STAMP)

## triton: tritonserver's own venv (nvidia-pytriton 0.7.0 = tritonserver 2.51, onnxruntime, tritonclient)
triton: $(TRITON_STAMP)

$(TRITON_STAMP): Makefile hack/triton-setup.sh
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' 'numpy>=1.26,<2' \
		'onnxruntime==1.32.0' 'tritonclient[http,grpc]==2.73.0'
	hack/triton-setup.sh $(TRITON_VENV) >/dev/null
	touch $(TRITON_STAMP)

## tools: build (once, then cached) the Go control plane: kube-apiserver, etcd, kwok, helm ...
tools:
	hack/build-tools.sh >/dev/null

## crds: regenerate crds/ from the API models
crds: install
	$(BIN)/mlopsctl crds --out crds && $(BIN)/mlopsctl crds --out charts/mlops-operator/crds

## lint: ruff lint and format check
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: install
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

## typecheck: mypy --strict on the operator, the trainer package and the contract they share
typecheck: install trainer
	$(BIN)/mypy --strict $(CONTRACT)/src
	$(BIN)/mypy --strict operator
	cd trainer-image && $(abspath $(TRAINER_VENV))/bin/mypy --strict mlops_trainer

## unit: unit tests only (no control plane)
unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## test: lint, typecheck, then the operator's unit and integration tests and the trainer's tests
test: lint typecheck tools trainer mlflow triton
	$(BIN)/python -m pytest tests --ignore=tests/trainer -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)
	$(TRAINER_VENV)/bin/python -m pytest tests/trainer $(PYTEST_ARGS)

## dev: the sample pipeline on a local control plane (DEV_ARGS=--keep leaves it running)
dev: install tools trainer mlflow triton
	$(BIN)/mlopsctl dev $(DEV_ARGS)

clean:
	rm -rf $(VENV) $(TRAINER_VENV) $(MLFLOW_VENV) $(TRITON_VENV) .mypy_cache .ruff_cache .pytest_cache
