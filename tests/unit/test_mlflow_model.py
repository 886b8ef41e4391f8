"""The MLflow Model package of a ModelVersion (builders/mlflow_model.py) and the request built
around it (handlers/modelversion/package.py), as data. That MLflow itself loads what these build
is checked against a real server in tests/integration/test_registry_mlflow_models.py."""

from __future__ import annotations

import json
from typing import Any

import yaml

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.builders.mlflow_model import (
    COMPILED_METADATA,
    COMPILED_PLAN,
    MLMODEL,
    model_package,
    signature_of,
)
from mlops_operator.handlers.modelversion.package import params_of

COMPILED: dict[str, Any] = {
    "format": "onnx",
    "source": {"uri": "s3://b/models/run-1/model.onnx"},
    "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
    "artifact": {"key": "model.onnx", "sizeBytes": 1000},
    "createdAt": "2026-12-01T10:00:00Z",
}
TRAINED: dict[str, Any] = {
    "input": {"name": "images", "dtype": "float32", "shape": [-1, 1, 8, 8]},
    "output": {"name": "logits", "dtype": "float32", "shape": [-1, 10]},
    "onnx": {"key": "model.onnx", "sizeBytes": 1000},
    "inputExample": {"key": "input_example.json", "servingKey": "serving_input_example.json"},
    "versions": {"python": "3.11.9"},
}
ENGINE = {
    "uri": "s3://b/engines/mv/model.onnx",
    "metadataURI": "s3://b/engines/mv/metadata.json",
    "format": "onnx",
}


def _package(engine: dict[str, Any] = ENGINE, trained: dict[str, Any] | None = TRAINED) -> Any:
    return model_package(
        engine=engine, compiled=COMPILED, trained=trained, mlflow_version="3.18.0", metadata={"uid": "u-1"}
    )


def _mlmodel(package: Any) -> dict[str, Any]:
    (mlmodel,) = [f for f in package.files if f.path == MLMODEL]
    return yaml.safe_load(mlmodel.content)  # type: ignore[no-any-return]


def test_the_package_is_an_onnx_mlflow_model_with_signature_and_input_example() -> None:
    package = _package()
    paths = {f.path: f for f in package.files}
    # The ONNX model the trainer wrote (not the compiled engine), the examples next to it.
    assert paths["model.onnx"].uri == "s3://b/models/run-1/model.onnx"
    assert paths["model.onnx"].size_bytes == 1000
    assert paths["input_example.json"].uri == "s3://b/models/run-1/input_example.json"
    assert paths["serving_input_example.json"].uri == "s3://b/models/run-1/serving_input_example.json"
    assert paths[COMPILED_METADATA].uri == ENGINE["metadataURI"]
    assert COMPILED_PLAN not in paths
    assert {"requirements.txt", "python_env.yaml", "conda.yaml"} <= set(paths)
    assert b"onnxruntime" in (paths["requirements.txt"].content or b"")
    document = _mlmodel(package)
    assert document["flavors"]["onnx"]["data"] == "model.onnx"
    assert document["flavors"]["python_function"]["loader_module"] == "mlflow.onnx"
    assert document["flavors"]["python_function"]["python_version"] == "3.11.9"
    assert json.loads(document["signature"]["inputs"]) == [
        {"name": "images", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}
    ]
    assert json.loads(document["signature"]["outputs"])[0]["tensor-spec"]["shape"] == [-1, 10]
    assert document["saved_input_example_info"]["artifact_path"] == "input_example.json"
    assert document["metadata"] == {"uid": "u-1"}
    assert document["mlflow_version"] == "3.18.0"


def test_a_model_not_from_this_trainer_has_no_input_example_and_the_compile_records_signature() -> None:
    package = _package(trained=None)
    paths = {f.path for f in package.files}
    assert "input_example.json" not in paths
    document = _mlmodel(package)
    assert "saved_input_example_info" not in document
    assert "python_version" not in document["flavors"]["python_function"]
    assert json.loads(document["signature"]["inputs"])[0]["name"] == "images"
    assert package.signature == signature_of(COMPILED, None)


def test_a_tensorrt_engine_travels_next_to_the_onnx_model() -> None:
    engine = ENGINE | {"uri": "s3://b/engines/mv/model.plan", "format": "tensorrt", "sizeBytes": 5000}
    package = _package(engine)
    paths = {f.path: f for f in package.files}
    assert paths[COMPILED_PLAN].uri == "s3://b/engines/mv/model.plan"
    assert paths[COMPILED_PLAN].size_bytes == 5000
    # What mlflow.onnx / pyfunc load stays the ONNX model: a plan is no MLflow flavour.
    assert paths["model.onnx"].uri == "s3://b/models/run-1/model.onnx"
    assert set(_mlmodel(package)["flavors"]) == {"onnx", "python_function"}
    assert _mlmodel(package)["model_size_bytes"] >= 6000


def test_params_are_the_hyperparameters_the_trainer_ran_with_flattened_and_how_it_was_compiled() -> None:
    spec = ModelVersionSpec.model_validate(
        {
            "modelName": "digits",
            "source": {"trainingRunRef": {"name": "run-1"}},
            "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 8},
        }
    )
    trained = {
        "model": "digits-cnn",
        "hyperparameters": {
            "epochs": 3,
            "optimizer": {"lr": 0.01, "betas": [0.9, 0.99]},
            "amp": False,
            "tracking": {"project": "p", "entity": "e"},
            "seed": None,
        },
    }
    assert params_of(trained, spec) == {
        "epochs": "3",
        "optimizer.lr": "0.01",
        "optimizer.betas": "[0.9, 0.99]",
        "amp": "false",
        "model": "digits-cnn",
        "compile.target": "onnx",
        "compile.precision": "fp32",
        "compile.maxBatchSize": "8",
    }
    assert set(params_of(None, spec)) == {"compile.target", "compile.precision", "compile.maxBatchSize"}
