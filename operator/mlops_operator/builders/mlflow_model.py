"""The model package a ModelVersion is registered with: an MLflow Model (MLflow's own layout, so
`mlflow.onnx.load_model` and `mlflow.pyfunc.load_model` load it), built from what the trainer and
the compile stage recorded (their metadata.json), never from the model's bytes.

Layout (paths inside the package):
    MLmodel                      the onnx and python_function flavours, signature, input example
    model.onnx                   the trained ONNX model (copied from the tenant's bucket)
    input_example.json           one held-out sample, when the trainer wrote one
    serving_input_example.json   the same as a serving request ({"inputs": …})
    requirements.txt, python_env.yaml, conda.yaml   what pyfunc needs to recreate an environment
    compiled/metadata.json       the compile stage's record (format, precision, profiles, GPU)
    compiled/model.plan          the TensorRT engine, when one was built (not an MLflow flavour:
                                 it runs on the GPU product and compute capability it was built for)

The provider fills in what only the registry knows (the logged model's id, the run's id, where its
artifacts live) in MLmodel (integrations/registry/mlflow.py `_with_registry_ids`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ..integrations.registry.base import PackageFile

MLMODEL = "MLmodel"
ONNX_FILE = "model.onnx"
INPUT_EXAMPLE = "input_example.json"
SERVING_INPUT_EXAMPLE = "serving_input_example.json"
COMPILED_METADATA = "compiled/metadata.json"
COMPILED_PLAN = "compiled/model.plan"
# The providers MLflow's onnx flavour tries in order (its own default).
ONNX_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_REQUIREMENTS = ("mlflow", "numpy", "onnx", "onnxruntime")


@dataclass(frozen=True)
class ModelPackage:
    files: tuple[PackageFile, ...]
    signature: Mapping[str, Any]  # {"inputs": [...], "outputs": [...]}: MLflow's tensor specs
    has_input_example: bool


def _prefix(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"


def _tensor_specs(tensors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """MLflow's tensor-spec JSON of the trainer's {name, dtype, shape} (-1: any size)."""
    return [
        {
            "name": str(t["name"]),
            "type": "tensor",
            "tensor-spec": {"dtype": str(t["dtype"]), "shape": [int(d) for d in t["shape"]]},
        }
        for t in tensors
    ]


def signature_of(compiled: Mapping[str, Any], trained: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ONNX model's inputs and outputs: the trainer's record of them (what the ONNX graph
    takes), else the compile stage's (the same graph for an ONNX target)."""
    if trained and isinstance(trained.get("input"), Mapping) and isinstance(trained.get("output"), Mapping):
        inputs: Sequence[Mapping[str, Any]] = [trained["input"]]
        outputs: Sequence[Mapping[str, Any]] = [trained["output"]]
    else:
        inputs, outputs = compiled.get("inputs") or [], compiled.get("outputs") or []
    return {"inputs": _tensor_specs(inputs), "outputs": _tensor_specs(outputs)}


def _python_version(trained: Mapping[str, Any] | None) -> str | None:
    versions = (trained or {}).get("versions")
    return str(versions["python"]) if isinstance(versions, Mapping) and versions.get("python") else None


def _mlmodel(
    *,
    signature: Mapping[str, Any],
    python_version: str | None,
    has_input_example: bool,
    size_bytes: int,
    created: str,
    mlflow_version: str,
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    python_function: dict[str, Any] = {
        "data": ONNX_FILE,
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        "loader_module": "mlflow.onnx",
    }
    if python_version:
        python_function["python_version"] = python_version
    document: dict[str, Any] = {
        "flavors": {
            "onnx": {
                "code": None,
                "data": ONNX_FILE,
                "onnx_session_options": None,
                "providers": list(ONNX_PROVIDERS),
            },
            "python_function": python_function,
        },
        "mlflow_version": mlflow_version,
        "model_size_bytes": size_bytes,
        "signature": {
            # MLflow keeps each side as a JSON string inside the YAML.
            "inputs": json.dumps(signature["inputs"]),
            "outputs": json.dumps(signature["outputs"]),
            "params": None,
        },
        "utc_time_created": created,
        "metadata": dict(metadata),
    }
    if has_input_example:
        document["saved_input_example_info"] = {
            "artifact_path": INPUT_EXAMPLE,
            "serving_input_path": SERVING_INPUT_EXAMPLE,
            "type": "ndarray",
        }
    return document


def _environment(python_version: str | None) -> dict[str, bytes]:
    python = python_version or "3.11"
    requirements = "".join(f"{name}\n" for name in _REQUIREMENTS)
    python_env = {
        "python": python,
        "build_dependencies": ["pip", "setuptools", "wheel"],
        "dependencies": ["-r requirements.txt"],
    }
    conda = {
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": list(_REQUIREMENTS)}],
        "name": "mlflow-env",
    }
    return {
        "requirements.txt": requirements.encode(),
        "python_env.yaml": yaml.safe_dump(python_env, sort_keys=False).encode(),
        "conda.yaml": yaml.safe_dump(conda, sort_keys=False).encode(),
    }


def model_package(
    *,
    engine: Mapping[str, Any],
    compiled: Mapping[str, Any],
    trained: Mapping[str, Any] | None,
    mlflow_version: str,
    metadata: Mapping[str, Any],
) -> ModelPackage:
    """The package of a compiled ModelVersion.

    `engine` is the ModelVersion's status.engine (uri, metadataURI, format…), `compiled` the compile
    stage's metadata.json, `trained` the trainer's metadata.json next to the ONNX model (None when
    the source was not written by this operator's trainer: no input example, no Python version).
    """
    source: Mapping[str, Any] = compiled.get("source") or {}
    onnx_uri = str(source.get("uri") or "") or str(engine.get("uri") or "")
    trained_onnx: Mapping[str, Any] = (trained or {}).get("onnx") or {}
    onnx_size = int(trained_onnx.get("sizeBytes") or 0) or None
    if engine.get("format") == "onnx" and not onnx_size:
        onnx_size = int((compiled.get("artifact") or {}).get("sizeBytes") or 0) or None
    files: list[PackageFile] = [PackageFile(ONNX_FILE, uri=onnx_uri, size_bytes=onnx_size)]
    example: Mapping[str, Any] = (trained or {}).get("inputExample") or {}
    has_example = bool(example.get("key") and example.get("servingKey"))
    if has_example:
        files += [
            PackageFile(INPUT_EXAMPLE, uri=_prefix(onnx_uri) + str(example["key"])),
            PackageFile(SERVING_INPUT_EXAMPLE, uri=_prefix(onnx_uri) + str(example["servingKey"])),
        ]
    if engine.get("metadataURI"):
        files.append(PackageFile(COMPILED_METADATA, uri=str(engine["metadataURI"])))
    if engine.get("format") == "tensorrt" and engine.get("uri"):
        files.append(PackageFile(COMPILED_PLAN, uri=str(engine["uri"]), size_bytes=engine.get("sizeBytes")))
    python_version = _python_version(trained)
    files += [PackageFile(path, content=content) for path, content in _environment(python_version).items()]
    signature = signature_of(compiled, trained)
    document = _mlmodel(
        signature=signature,
        python_version=python_version,
        has_input_example=has_example,
        size_bytes=sum(f.size_bytes or len(f.content or b"") for f in files),
        created=str(compiled.get("createdAt") or ""),
        mlflow_version=mlflow_version,
        metadata=metadata,
    )
    files.insert(0, PackageFile(MLMODEL, content=yaml.safe_dump(document, sort_keys=True).encode()))
    return ModelPackage(tuple(files), signature, has_example)
