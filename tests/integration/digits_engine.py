"""A really trained and compiled digits model in the local S3, for tests that serve it.

The real trainer CLI (.venv-trainer) writes the demo data, trains digits-cnn on CPU for a couple of
epochs and compiles it to ONNX (`compile --target onnx`), exactly as the ModelVersion's Jobs do; what
comes back is what a Ready ModelVersion's status points at: the engine's URI and its metadata.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, LocalS3

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / ".venv-trainer" / "bin" / "mlops-trainer"
# Accuracy is not the point here: enough epochs for a model that answers sensibly, no more.
HYPERPARAMETERS = {"epochs": 2, "batchSize": 64, "numWorkers": 0}


@dataclass(frozen=True)
class CompiledEngine:
    bucket: str
    uri: str  # the engine object (ModelVersion status.engine.uri)
    metadata: dict[str, Any]  # its metadata.json
    onnx: bytes


def trainer_env(s3: LocalS3, termination: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AWS_", "WANDB_"))}
    return env | {
        "AWS_ENDPOINT_URL_S3": s3.endpoint_url,
        "AWS_REGION": DEV_REGION,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
        "WANDB_MODE": "disabled",
        "MLOPS_TERMINATION_MESSAGE_PATH": str(termination),
    }


def run_trainer(s3: LocalS3, args: list[str], work_dir: Path, timeout: float = 300) -> dict[str, Any]:
    """One `mlops-trainer` command; its result summary (the termination message)."""
    if not os.access(TRAINER, os.X_OK):
        raise AssertionError(f"{TRAINER} is missing: `make trainer` (part of `make test`) installs it")
    work_dir.mkdir(parents=True, exist_ok=True)
    termination = work_dir / f"{args[0]}.json"
    done = subprocess.run(
        [str(TRAINER), *args],
        env=trainer_env(s3, termination),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary: dict[str, Any] = json.loads(termination.read_bytes()) if termination.exists() else {}
    if done.returncode != 0:
        raise AssertionError(
            f"mlops-trainer {args[0]} exited {done.returncode}: {summary}\n{done.stderr[-3000:]}"
        )
    return summary


def train_and_compile(
    s3: LocalS3, bucket: str, work_dir: Path, *, max_batch_size: int = 16
) -> CompiledEngine:
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    base = f"s3://{bucket}"
    run_trainer(s3, ["write-demo-data", "--dataset-uri", f"{base}/datasets/digits/v1/"], work_dir)
    run_trainer(
        s3,
        [
            "train",
            "--model", "digits-cnn",
            "--dataset-uri", f"{base}/datasets/digits/v1/",
            "--output-uri", f"{base}/models/digits/",
            "--hyperparameters", json.dumps(HYPERPARAMETERS),
            "--device", "cpu",
            "--work-dir", str(work_dir / "train"),
        ],
        work_dir,
    )  # fmt: skip
    compiled = run_trainer(
        s3,
        [
            "compile",
            "--model-uri", f"{base}/models/digits/",
            "--output-uri", f"{base}/engines/digits/",
            "--target", "onnx",
            "--precision", "fp32",
            "--max-batch-size", str(max_batch_size),
        ],
        work_dir,
    )  # fmt: skip
    uri = compiled["artifacts"]["engine"]
    metadata = json.loads(client.get_object(Bucket=bucket, Key="engines/digits/metadata.json")["Body"].read())
    onnx = client.get_object(Bucket=bucket, Key="engines/digits/model.onnx")["Body"].read()
    return CompiledEngine(bucket, uri, metadata, onnx)


def create_digits_dataset(custom: Any, s3: LocalS3, engine: CompiledEngine, namespace: str) -> None:
    """The `digits` Dataset over the engine's demo data, read with the namespace's `s3-credentials`
    Secret (which the caller creates). `custom` is a CustomObjectsApi."""
    dataset = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "digits"},
        "spec": {
            "source": {
                "uri": f"s3://{engine.bucket}/datasets/digits/v1/",
                "endpointURL": s3.endpoint_url,
                "region": DEV_REGION,
                "credentialsSecretRef": {"name": "s3-credentials"},
            }
        },
    }
    custom.create_namespaced_custom_object("mlops.dev", "v1alpha1", namespace, "datasets", dataset)


def create_demo_dataset(s3: LocalS3, core: Any, custom: Any, namespace: str, work_dir: Path) -> str:
    """A fresh bucket with the trainer's digits demo data, the namespace's `s3-credentials` Secret and
    the Dataset `digits` over the data, with the data set's own manifest (sha256 per object: operator
    and trainer fingerprint it alike). Returns the bucket. `core`/`custom`: CoreV1Api/CustomObjectsApi."""
    from tests.integration.conftest import create_s3_secret

    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    run_trainer(s3, ["write-demo-data", "--dataset-uri", f"s3://{bucket}/datasets/digits/v1"], work_dir, 120)
    create_s3_secret(core, namespace)
    source = {
        "uri": f"s3://{bucket}/datasets/digits/v1/",
        "manifestURI": f"s3://{bucket}/datasets/digits/v1/manifest.jsonl",
        "endpointURL": s3.endpoint_url,
        "region": DEV_REGION,
        "credentialsSecretRef": {"name": "s3-credentials"},
    }
    dataset = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "digits"},
        "spec": {"source": source},
    }
    custom.create_namespaced_custom_object("mlops.dev", "v1alpha1", namespace, "datasets", dataset)
    return bucket


def copy_trained_model(s3: LocalS3, engine: CompiledEngine, bucket: str) -> str:
    """The engine's trained model directory (model.onnx, metadata.json, input examples, state dict),
    as the trainer wrote it, copied to a fresh prefix of `bucket`; its s3:// prefix."""
    client = s3.client()
    prefix = f"models/{uuid.uuid4().hex[:8]}/"
    listed = client.list_objects_v2(Bucket=engine.bucket, Prefix="models/digits/")["Contents"]
    for item in listed:
        name = item["Key"].removeprefix("models/digits/")
        client.copy_object(
            Bucket=bucket, Key=prefix + name, CopySource={"Bucket": engine.bucket, "Key": item["Key"]}
        )
    return f"s3://{bucket}/{prefix}"


def write_compile_output(s3: LocalS3, engine: CompiledEngine, source: str) -> str:
    """What the compile stage writes for the trained model at `source` (a prefix from
    copy_trained_model): the engine's model.onnx and its metadata.json naming `source`, in a fresh
    prefix of the same bucket; the engine's URI, as a compile Job's result names it."""
    bucket = source.removeprefix("s3://").partition("/")[0]
    prefix = f"engines/{uuid.uuid4().hex[:8]}/"
    named = dict(engine.metadata["source"]) | {"uri": f"{source}model.onnx"}
    record = dict(engine.metadata) | {"source": named}
    client = s3.client()
    client.put_object(Bucket=bucket, Key=prefix + "model.onnx", Body=engine.onnx)
    client.put_object(Bucket=bucket, Key=prefix + "metadata.json", Body=json.dumps(record).encode())
    return f"s3://{bucket}/{prefix}model.onnx"
