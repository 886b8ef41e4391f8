"""The operator and the real trainer agree: `mlops-trainer train` (CPU, tiny epochs) runs as the Job's
workload through the local pod runner, and the operator reads its real result from the termination
message. Nothing about the contract is assumed: the env the operator builds is what the trainer reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.runner import LocalPodRunner
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"
TRAINER = Path(__file__).resolve().parents[2] / ".venv-trainer" / "bin" / "mlops-trainer"


@pytest.fixture(scope="module")
def trainer() -> Path:
    if not os.access(TRAINER, os.X_OK):
        pytest.fail(f"{TRAINER} is missing: `make trainer` (part of `make test`) installs it")
    return TRAINER


def _s3_env(s3: LocalS3) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3.endpoint_url,
        "AWS_REGION": DEV_REGION,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
    }


def test_real_trainer_runs_as_the_workload_and_its_result_reaches_status(
    trainer: Path,
    operator: OperatorProcess,
    s3: LocalS3,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    subprocess.run(
        [str(trainer), "write-demo-data", "--dataset-uri", f"s3://{bucket}/datasets/digits/v1"],
        env={**_s3_env(s3), "MLOPS_TERMINATION_MESSAGE_PATH": str(tmp_path / "demo.json")},
        check=True,
        capture_output=True,
        timeout=120,
    )
    create_s3_secret(core, namespace)
    source = {
        "uri": f"s3://{bucket}/datasets/digits/v1/",
        # The data set's own manifest (with sha256 per object): operator and trainer fingerprint it alike.
        "manifestURI": f"s3://{bucket}/datasets/digits/v1/manifest.jsonl",
        "endpointURL": s3.endpoint_url,
        "region": DEV_REGION,
        "credentialsSecretRef": {"name": "s3-credentials"},
    }
    dataset: dict[str, Any] = {
        "apiVersion": f"{G}/{V}",
        "kind": "Dataset",
        "metadata": {"name": "digits"},
        "spec": {"source": source},
    }
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", dataset)
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
    runner = LocalPodRunner(api, namespace, executables={"mlops-trainer": str(trainer)})
    runner.start()
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)

        def finished() -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", "digits-real")
            return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        obj = wait_for(finished, "the real training to finish", 300, interval=1)
    finally:
        runner.stop()
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
