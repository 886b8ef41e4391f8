"""The operator and the real trainer agree: `mlops-trainer train` (CPU, tiny epochs), then `compile`
and `evaluate` run as the Jobs' workloads through the local pod runner, the operator reads their
real results from the termination messages, and registers the version in a real MLflow server.
Nothing about the contract is assumed: the env the operator builds is what the trainer reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from mlflow import MlflowClient

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.runner import LocalPodRunner
from mlops_operator.dev.s3 import (
    LOOPBACK_ENDPOINTS,
    LocalS3,
)
from tests.integration.conftest import start_operator
from tests.integration.digits_engine import create_demo_dataset
from tests.integration.mlflow_models import load_as_a_user, reference
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"
TRAINER = Path(__file__).resolve().parents[2] / ".venv-trainer" / "bin" / "mlops-trainer"


@pytest.fixture(scope="module")
def trainer() -> Path:
    if not os.access(TRAINER, os.X_OK):
        pytest.fail(f"{TRAINER} is missing: `make trainer` (part of `make test`) installs it")
    return TRAINER


def test_real_trainer_trains_compiles_and_evaluates_and_the_version_is_registered(
    trainer: Path,
    control_plane: ControlPlane,
    mlflow_server: LocalMlflow,
    s3: LocalS3,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    bucket = create_demo_dataset(s3, core, custom, namespace, tmp_path)
    run = {
        "apiVersion": f"{G}/{V}",
        "kind": "TrainingRun",
        "metadata": {"name": "digits-real"},
        "spec": {
            "datasetRef": {"name": "digits"},
            "model": "digits-cnn",
            "hyperparameters": {"epochs": 3, "batchSize": 64, "numWorkers": 0},
            "resources": {"gpusPerWorker": 0},
            "checkpoint": {"uri": f"s3://{bucket}/checkpoints/digits-real/", "intervalSteps": 20},
            "output": {"uri": f"s3://{bucket}/models/digits-real/"},
            "tracking": {"wandb": {"project": "digits", "mode": "offline"}},
        },
    }
    operator = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {"MLOPS_REGISTRY_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS)},
    )
    runner = LocalPodRunner(api, namespace, executables={"mlops-trainer": str(trainer)})
    runner.start()
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
        obj = _wait_settled(custom, namespace, "trainingruns", "digits-real", ("Succeeded", "Failed"), 300)
        _check_training(obj, s3, custom, namespace, bucket)
        model = f"digits-{uuid.uuid4().hex[:8]}"
        custom.create_namespaced_custom_object(
            G, V, namespace, "modelversions", _modelversion(model, mlflow_server)
        )
        mv = _wait_settled(
            custom, namespace, "modelversions", "digits-v1", ("Ready", "Rejected", "Failed"), 300
        )
        requests = _registry_requests(operator.metrics())
    finally:
        runner.stop()
        operator.stop()
    _check_modelversion(mv, obj, requests, model, mlflow_server, s3, custom, namespace, bucket, tmp_path)


def _wait_settled(
    custom: client.CustomObjectsApi,
    namespace: str,
    plural: str,
    name: str,
    phases: tuple[str, ...],
    timeout: float,
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(G, V, namespace, plural, name)
        return obj if obj.get("status", {}).get("phase") in phases else None

    return wait_for(settled, f"{plural}/{name} to reach one of {phases}", timeout, interval=1)  # type: ignore[no-any-return]


def _check_training(
    obj: dict[str, Any], s3: LocalS3, custom: client.CustomObjectsApi, namespace: str, bucket: str
) -> None:
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    # Real numbers from a real training, read from the trainer's termination message.
    assert status["metrics"]["accuracy"] >= 0.85
    assert status["modelURI"] == f"s3://{bucket}/models/digits-real/"
    assert status["checkpointURI"].startswith(f"s3://{bucket}/checkpoints/digits-real/")
    assert status["wandbRun"]
    dataset_status = custom.get_namespaced_custom_object(G, V, namespace, "datasets", "digits")["status"]
    assert status["datasetFingerprint"] == dataset_status["fingerprint"]
    keys = {
        o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="models/digits-real/")["Contents"]
    }
    assert {
        "models/digits-real/model.onnx",
        "models/digits-real/model.pt",
        "models/digits-real/metadata.json",
    } <= keys
    metadata = json.loads(
        s3.client().get_object(Bucket=bucket, Key="models/digits-real/metadata.json")["Body"].read()
    )
    # Lineage travels into the artifact too: the trained model names the data it saw.
    assert metadata["dataset"]["fingerprint"] == dataset_status["fingerprint"]


def _modelversion(model: str, mlflow: LocalMlflow) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelVersion",
        "metadata": {"name": "digits-v1"},
        "spec": {
            "modelName": "digits-cnn",
            "source": {"trainingRunRef": {"name": "digits-real"}},
            "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 32},
            "evaluation": {"split": "test", "batchSize": 32, "latencyBatches": 50},
            "gates": {
                "metrics": [{"name": "accuracy", "op": ">=", "threshold": 0.8}],
                "maxLatencyP95Ms": 500,
                "maxSizeMB": 10,
            },
            "registry": {
                "provider": "mlflow",
                "project": f"experiment-{model}",  # new: the count of requests below creates it
                "trackingURI": mlflow.tracking_uri,
                "collection": model,
                "aliases": ["candidate"],
            },
        },
    }


def _registry_requests(metrics: str) -> dict[str, int]:
    """Registry requests the operator made, by `operation/result`."""
    found: dict[str, int] = {}
    for line in metrics.splitlines():
        if line.startswith("mlops_registry_requests_total{"):
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            key = f"{labels['operation'].strip(chr(34))}/{labels['result'].strip(chr(34))}"
            found[key] = found.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return found


def _check_modelversion(
    mv: dict[str, Any],
    run: dict[str, Any],
    registry_requests: dict[str, int],
    model: str,
    mlflow: LocalMlflow,
    s3: LocalS3,
    custom: client.CustomObjectsApi,
    namespace: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    status = mv["status"]
    assert status["phase"] == "Ready", json.dumps(status, indent=1)
    # Real evaluation of the really compiled model on the held-out split.
    metrics = status["metrics"]
    assert metrics["accuracy"] >= 0.8
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"] <= metrics["latency_p99_ms"]
    assert metrics["size_bytes"] > 1000
    assert all(g["passed"] for g in status["gates"])
    assert [g["name"] for g in status["gates"]] == ["accuracy", "maxLatencyP95Ms", "maxSizeMB"]
    engine = status["engine"]
    assert engine["format"] == "onnx"
    assert engine["runtime"].startswith("onnxruntime")
    assert engine["uri"] == status["pinned"]["engineURI"] + "model.onnx"
    engine_key = engine["uri"].removeprefix(f"s3://{bucket}/")
    assert s3.client().head_object(Bucket=bucket, Key=engine_key)["ContentLength"] == engine["sizeBytes"]
    assert status["compileSeconds"] > 0
    assert status["evaluationSeconds"] > 0
    print(
        f"compile {status['compileSeconds']}s, evaluate {status['evaluationSeconds']}s, "
        f"registry requests {sum(registry_requests.values())}"
    )
    # Lineage, in status and as tags of the registry version.
    dataset = custom.get_namespaced_custom_object(G, V, namespace, "datasets", "digits")
    hyperparameters = run["spec"]["hyperparameters"]
    expected = {
        "trainingRun": "digits-real",
        "trainingRunUID": run["metadata"]["uid"],
        "dataset": "digits",
        "datasetFingerprint": dataset["status"]["fingerprint"],
        "trainerImage": run["status"]["pinned"]["image"],
        "hyperparametersSha256": hashlib.sha256(
            json.dumps(hyperparameters, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest(),
        "sourceURI": run["status"]["modelURI"],
    }
    assert status["lineage"] == expected
    version = MlflowClient(mlflow.tracking_uri).get_model_version(model, status["registry"]["version"])
    assert version.tags["mlops.dev/uid"] == mv["metadata"]["uid"]
    assert version.tags["mlops.dev/trainingrun"] == "digits-real"
    assert version.tags["mlops.dev/dataset-fingerprint"] == dataset["status"]["fingerprint"]
    assert version.tags["mlops.dev/hyperparameters-sha256"] == expected["hyperparametersSha256"]
    assert version.tags["mlops.dev/trainer-image"] == expected["trainerImage"]
    assert version.source.startswith("models:/m-")
    assert sorted(version.aliases) == ["candidate", "staging"]
    # One of each, in a new experiment and a new registered model; anything more would be a retry or
    # a second registration. The package: MLmodel, model.onnx, the two input examples, the compile
    # record and the three environment files.
    assert registry_requests == {
        "search_model_versions/ok": 2,  # the handler's lookup, then register()'s own
        "get_experiment_by_name/ok": 1,  # (MLflow's store answers "none" for a not-found name)
        "create_experiment/ok": 1,
        "search_runs/ok": 1,
        "create_run/ok": 1,
        "search_logged_models/ok": 1,
        "create_logged_model/ok": 1,
        "log_batch/ok": 1,
        "upload_artifact/ok": 8,
        "log_outputs/ok": 1,
        "finalize_logged_model/ok": 1,
        "update_run/ok": 1,
        "create_model_version/notfound": 1,
        "create_registered_model/ok": 1,
        "create_model_version/ok": 1,
        "get_model_version/ok": 2,
        "set_registered_model_alias/ok": 2,
    }
    # The run has what the trainer ran with, and the model loads with MLflow's client as a data
    # scientist would, answering as ONNX Runtime does on the trained model.
    mlflow_client = MlflowClient(mlflow.tracking_uri)
    mlflow_run = mlflow_client.get_run(version.run_id)
    assert mlflow_run.data.params["epochs"] == str(run["spec"]["hyperparameters"]["epochs"])
    assert mlflow_run.data.metrics["accuracy"] == metrics["accuracy"]
    assert "Trained by TrainingRun" in version.description
    assert dataset["status"]["fingerprint"][:19] in version.description
    onnx_key = f"{run['status']['modelURI'].removeprefix(f's3://{bucket}/').rstrip('/')}/model.onnx"
    onnx = s3.client().get_object(Bucket=bucket, Key=onnx_key)["Body"].read()
    inputs = np.random.default_rng(5).random((3, 1, 8, 8), dtype=np.float32)
    loaded = load_as_a_user(mlflow, f"models:/{model}@candidate", inputs, tmp_path)
    np.testing.assert_allclose(np.asarray(loaded["pyfunc"]), reference(onnx, inputs), atol=1e-5)
    assert np.asarray(loaded["inputExample"]).shape == (1, 1, 8, 8)  # a held-out sample
