"""Registered versions are MLflow Models their users load: the MLflow provider against a real MLflow
3.17 server (proxied artifacts in moto S3), with a model really trained and compiled by the trainer.

What the provider wrote is read back the way a data scientist would: `mlflow_user.py` runs in the
MLflow server's own venv (mlflow, onnx, onnxruntime; none of the operator's code) and loads
`models:/<name>/<n>` and `models:/<name>@<alias>` with `mlflow.onnx.load_model` and
`mlflow.pyfunc.load_model`; their predictions are compared with ONNX Runtime's on the trained
model's bytes. Runs, params, metrics and logged models are read with `MlflowClient`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import mlflow.artifacts
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus

from mlops_operator.builders.mlflow_model import model_package
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, LocalS3
from mlops_operator.integrations.registry import (
    UID_TAG,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    VersionRequest,
    open_registry,
)
from mlops_operator.integrations.registry.mlflow import MlflowRegistry
from mlops_operator.integrations.s3 import Boto3ObjectStore, S3Config, S3Credentials, split_object_uri
from tests.integration.digits_engine import CompiledEngine
from tests.integration.mlflow_models import load_as_a_user, reference

METRICS = {"accuracy": 0.95, "latency_p95_ms": 0.8, "size_mb": 0.1}


def _store(s3: LocalS3) -> Boto3ObjectStore:
    creds = S3Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
    return Boto3ObjectStore(S3Config(s3.endpoint_url, DEV_REGION, creds))


def _record(store: Boto3ObjectStore, uri: str) -> dict[str, Any]:
    return json.loads(store.get_bytes(*split_object_uri(uri)))  # type: ignore[no-any-return]


def _registry(server: LocalMlflow, model: str, experiment: str) -> MlflowRegistry:
    target = RegistryTarget(
        provider="mlflow", model_name=model, project=experiment, tracking_uri=server.tracking_uri
    )
    registry = open_registry(target, timeout_seconds=10)
    assert isinstance(registry, MlflowRegistry)
    return registry


def _request(
    store: Boto3ObjectStore,
    engine_record: Mapping[str, Any],
    uid: str,
    *,
    read: Any = None,
    tags: Mapping[str, str] | None = None,
) -> VersionRequest:
    compiled = _record(store, engine_record["metadataURI"])
    source = compiled["source"]["uri"]
    trained = _record(store, source.rsplit("/", 1)[0] + "/metadata.json")
    package = model_package(
        engine=engine_record,
        compiled=compiled,
        trained=trained,
        mlflow_version="3.18.0",
        metadata={"lineage": {"trainingRun": "digits-run"}},
    )

    def reader(uri: str) -> tuple[BinaryIO, int]:
        return store.open_object(*split_object_uri(uri))

    return VersionRequest(
        uid=uid,
        source_uri=engine_record["uri"],
        tags={"mlops.dev/trainingrun": "digits-run", **(tags or {})},
        description="Trained by TrainingRun team-a/digits-run on Dataset digits",
        metrics=METRICS,
        run_name="team-a/digits",
        params={"epochs": "2", "batchSize": "64", "model": "digits-cnn"},
        files=package.files,
        metadata={},
        read=read or reader,
    )


def _onnx_engine(engine: CompiledEngine) -> dict[str, Any]:
    return {
        "uri": engine.uri,
        "metadataURI": engine.uri.rsplit("/", 1)[0] + "/metadata.json",
        "format": "onnx",
        "precision": "fp32",
    }


def _inputs(engine: CompiledEngine, count: int, seed: int) -> np.ndarray:
    """`count` samples of the shape the model takes (its first axis is the batch)."""
    shape = [int(d) for d in engine.metadata["inputs"][0]["shape"][1:]]
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def _input_spec(engine: CompiledEngine) -> dict[str, Any]:
    spec = engine.metadata["inputs"][0]
    return {
        "type": "tensor",
        "tensor-spec": {"dtype": "float32", "shape": spec["shape"]},
        "name": spec["name"],
    }


@pytest.fixture
def model() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def test_a_registered_version_is_an_mlflow_model_users_load_by_number_and_alias(
    mlflow_server: LocalMlflow, s3: LocalS3, engine: CompiledEngine, model: str, tmp_path: Path
) -> None:
    store = _store(s3)
    registry = _registry(mlflow_server, model, f"exp-{model}")
    uid = str(uuid.uuid4())
    registered = registry.register(_request(store, _onnx_engine(engine), uid))
    registry.set_aliases(registered.version, add=["champion"], remove=[])

    client = MlflowClient(mlflow_server.tracking_uri)
    version = client.get_model_version(model, registered.version)
    assert version.source.startswith("models:/m-"), version.source
    model_id = version.source.removeprefix("models:/")
    assert version.run_id
    assert version.description == "Trained by TrainingRun team-a/digits-run on Dataset digits"
    assert "mlops-operator" in (client.get_registered_model(model).description or "")

    # The run, in the experiment the spec names, with params and metrics MLflow charts.
    run = client.get_run(version.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"exp-{model}"
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "team-a/digits"
    assert run.data.params == {"epochs": "2", "batchSize": "64", "model": "digits-cnn"}
    assert run.data.metrics == METRICS
    assert run.data.tags[UID_TAG] == uid
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]

    # The logged model: READY, from that run, with the metrics linked to it.
    logged = client.get_logged_model(model_id)
    assert logged.status == LoggedModelStatus.READY
    assert logged.source_run_id == version.run_id
    assert logged.tags[UID_TAG] == uid
    assert {m.key: m.value for m in logged.metrics or []} == METRICS

    # A user loads it by number and by alias; both flavours answer as ONNX Runtime does.
    test_inputs = _inputs(engine, 5, seed=7)
    expected = reference(engine.onnx, test_inputs)
    for uri in (f"models:/{model}/{registered.version}", f"models:/{model}@champion"):
        loaded = load_as_a_user(mlflow_server, uri, test_inputs, tmp_path)
        np.testing.assert_allclose(np.asarray(loaded["onnx"]), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(loaded["pyfunc"]), expected, rtol=1e-5, atol=1e-5)
        assert loaded["modelId"] == model_id
        assert loaded["runId"] == version.run_id
        assert {"MLmodel", "model.onnx", "input_example.json", "compiled/metadata.json"} <= set(
            loaded["files"]
        )
        assert loaded["inputSchema"] == [_input_spec(engine)]
        # The input example is one held-out sample, as the model takes it.
        assert np.asarray(loaded["inputExample"]).shape == (1, *test_inputs.shape[1:])


def test_a_registration_cut_midway_resumes_into_one_run_one_model_one_version(
    mlflow_server: LocalMlflow, s3: LocalS3, engine: CompiledEngine, model: str
) -> None:
    store = _store(s3)
    registry = _registry(mlflow_server, model, f"exp-{model}")
    uid = str(uuid.uuid4())

    def bucket_down(uri: str) -> tuple[BinaryIO, int]:
        raise RegistryUnavailableError(f"cannot read {uri}: EndpointUnreachable")

    with pytest.raises(RegistryUnavailableError):
        registry.register(_request(store, _onnx_engine(engine), uid, read=bucket_down))
    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.get_experiment_by_name(f"exp-{model}")
    assert experiment is not None
    # Cut after the run and the logged model were created, before its files: nothing registered.
    assert client.search_model_versions(f"name = '{model}'") == []
    pending = client.search_logged_models([experiment.experiment_id])
    assert [m.status for m in pending] == [LoggedModelStatus.PENDING]

    first = registry.register(_request(store, _onnx_engine(engine), uid))
    again = registry.register(_request(store, _onnx_engine(engine), uid))
    assert first.version == again.version == "1"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.metrics == METRICS  # logged once, not once per attempt
    models = client.search_logged_models([experiment.experiment_id])
    assert [(m.model_id, m.status) for m in models] == [(pending[0].model_id, LoggedModelStatus.READY)]
    assert len(client.search_model_versions(f"name = '{model}'")) == 1


def test_a_tensorrt_engine_is_logged_next_to_the_onnx_model(
    mlflow_server: LocalMlflow, s3: LocalS3, engine: CompiledEngine, model: str, tmp_path: Path
) -> None:
    """No TensorRT runs here: the plan is stand-in bytes in the bucket with a compile record saying
    tensorrt; what is checked is that it travels, byte for byte, next to the ONNX model (which
    stays what mlflow.onnx/pyfunc load)."""
    store = _store(s3)
    client_s3 = s3.client()
    prefix = f"engines/trt-{uuid.uuid4().hex[:6]}/"
    plan = b"stand-in TensorRT plan " + uuid.uuid4().bytes
    record = dict(engine.metadata) | {
        "format": "tensorrt",
        "precision": "fp16",
        "gpu": {"name": "NVIDIA L4", "computeCapability": "8.9"},
        "artifact": {"key": "model.plan", "sizeBytes": len(plan)},
    }
    client_s3.put_object(Bucket=engine.bucket, Key=prefix + "model.plan", Body=plan)
    client_s3.put_object(Bucket=engine.bucket, Key=prefix + "metadata.json", Body=json.dumps(record).encode())
    engine_record = {
        "uri": f"s3://{engine.bucket}/{prefix}model.plan",
        "metadataURI": f"s3://{engine.bucket}/{prefix}metadata.json",
        "format": "tensorrt",
        "precision": "fp16",
        "gpuProduct": "NVIDIA-L4",
        "computeCapability": "8.9",
        "sizeBytes": len(plan),
    }
    registry = _registry(mlflow_server, model, f"exp-{model}")
    tags = {"mlops.dev/engine-gpu": "NVIDIA L4", "mlops.dev/engine-compute-capability": "8.9"}
    registered = registry.register(_request(store, engine_record, str(uuid.uuid4()), tags=tags))

    client = MlflowClient(mlflow_server.tracking_uri)
    version = client.get_model_version(model, registered.version)
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.tags["mlops.dev/engine-gpu"] == "NVIDIA L4"
    assert logged.tags["mlops.dev/engine-compute-capability"] == "8.9"
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{logged.artifact_location}/compiled/model.plan",
            dst_path=str(tmp_path),
            tracking_uri=mlflow_server.tracking_uri,
        )
    )
    assert downloaded.read_bytes() == plan
    inputs = _inputs(engine, 2, seed=3)
    loaded = load_as_a_user(mlflow_server, f"models:/{model}/{registered.version}", inputs, tmp_path)
    np.testing.assert_allclose(
        np.asarray(loaded["onnx"]), reference(engine.onnx, inputs), rtol=1e-5, atol=1e-5
    )
    assert "compiled/model.plan" in loaded["files"]


def test_an_experiment_whose_artifacts_the_server_does_not_proxy_is_refused_with_what_to_do(
    mlflow_server: LocalMlflow, s3: LocalS3, engine: CompiledEngine, model: str
) -> None:
    client = MlflowClient(mlflow_server.tracking_uri)
    client.create_experiment(f"direct-{model}", artifact_location="s3://somewhere-else/artifacts")
    registry = _registry(mlflow_server, model, f"direct-{model}")
    with pytest.raises(RegistryRejectedError, match="serve-artifacts"):
        registry.register(_request(_store(s3), _onnx_engine(engine), str(uuid.uuid4())))
    assert client.search_model_versions(f"name = '{model}'") == []
