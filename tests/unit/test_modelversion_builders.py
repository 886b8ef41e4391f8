"""The compile and evaluate Jobs of a ModelVersion, and its acceptance gates, as plain data."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlops_contract import envvars

from mlops_operator.api.v1alpha1 import DatasetSpec, ModelVersionSpec
from mlops_operator.api.v1alpha1.modelversion import AcceptanceGates
from mlops_operator.builders.modelversion import (
    StageInputs,
    build_stage_job,
    check_gates,
    compile_hash,
    default_engine_uri,
    job_name,
)

DATASET = DatasetSpec.model_validate(
    {
        "source": {
            "uri": "s3://data/digits/v1/",
            "endpointURL": "http://minio.data:9000",
            "region": "eu-west-1",
            "credentialsSecretRef": {"name": "s3-creds"},
        }
    }
)


def _spec(**overrides: Any) -> ModelVersionSpec:
    base: dict[str, Any] = {
        "modelName": "digits",
        "source": {"trainingRunRef": {"name": "r1"}},
        "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
    }
    return ModelVersionSpec.model_validate({**base, **overrides})


def _inputs(spec: ModelVersionSpec, stage: str = "compile", **overrides: Any) -> StageInputs:
    values: dict[str, Any] = {
        "name": "digits-v1",
        "namespace": "team-a",
        "uid": "0f5a6f1e-1111-2222-3333-444455556666",
        "spec": spec,
        "stage": stage,
        "attempt": 1,
        "image": "trainer:1",
        "model_uri": "s3://data/models/r1/",
        "engine_uri": "s3://data/models/r1/compiled/digits-v1-0f5a6f1e/",
        "dataset": DATASET,
    }
    return StageInputs(**{**values, **overrides})


def _env(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_onnx_compile_job_is_a_hardened_cpu_job_running_the_trainers_compile():
    job = build_stage_job(_inputs(_spec()))
    assert job["metadata"]["name"] == "digits-v1-compile-a1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["mlops-trainer"]
    assert container["args"] == ["compile"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert all("sizeLimit" in v["emptyDir"] for v in pod["volumes"])
    env = _env(job)
    assert env[envvars.MODEL_URI] == "s3://data/models/r1/"
    assert env[envvars.OUTPUT_URI] == "s3://data/models/r1/compiled/digits-v1-0f5a6f1e/"
    assert env[envvars.COMPILE_TARGET] == "onnx"
    assert env[envvars.MAX_BATCH_SIZE] == "16"
    assert env[envvars.AWS_ENDPOINT_URL_S3] == "http://minio.data:9000"
    # Credentials only as references to the tenant's Secret.
    assert env[envvars.AWS_SECRET_ACCESS_KEY] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }


def test_tensorrt_stages_take_one_gpu_on_the_named_product():
    spec = _spec(compile={"target": "tensorrt", "precision": "fp16", "gpuProduct": "NVIDIA-L4"})
    job = build_stage_job(_inputs(spec, gpu_product="NVIDIA-L4"))
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    evaluate = build_stage_job(_inputs(spec, "evaluate", gpu_product="NVIDIA-A10G"))
    assert evaluate["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A10G"}


def test_evaluate_job_scores_the_datasets_split_at_the_configured_batch_size():
    spec = _spec(evaluation={"split": "holdout", "batchSize": 4, "latencyBatches": 7, "warmupBatches": 2})
    env = _env(build_stage_job(_inputs(spec, "evaluate", attempt=2)))
    assert env[envvars.ENGINE_URI] == "s3://data/models/r1/compiled/digits-v1-0f5a6f1e/"
    assert env[envvars.DATASET_URI] == "s3://data/digits/v1/"
    assert env[envvars.EVAL_SPLIT] == "holdout"
    assert env[envvars.EVAL_BATCH_SIZE] == "4"
    assert env[envvars.EVAL_LATENCY_BATCHES] == "7"
    assert env[envvars.EVAL_WARMUP_BATCHES] == "2"
    # Without a batch size, latency is measured at the engine's largest batch.
    assert _env(build_stage_job(_inputs(_spec(), "evaluate")))[envvars.EVAL_BATCH_SIZE] == "16"


def test_names_are_deterministic_labels_that_fit():
    assert job_name("digits-v1", "compile", 1) == "digits-v1-compile-a1"
    long = "m" * 63
    name = job_name(long, "evaluate", 3)
    assert len(name) <= 63
    assert name == job_name(long, "evaluate", 3)
    assert name != job_name(long, "evaluate", 2)
    assert default_engine_uri("s3://b/m/", "v1", "abcdef012345") == "s3://b/m/compiled/v1-abcdef01/"


def test_compile_hash_ignores_promotion_and_placement_but_not_the_artifacts_inputs():
    base = _spec(registry={"provider": "mlflow", "project": "p", "trackingURI": "http://mlflow:5000"})
    promoted = _spec(
        registry={
            "provider": "mlflow",
            "project": "p",
            "trackingURI": "http://mlflow:5000",
            "aliases": ["champion"],
            "deletionPolicy": "Archive",
        },
        stage="Production",
        scheduling={"priorityClassName": "high"},
    )
    assert compile_hash(base) == compile_hash(promoted)
    assert compile_hash(base) != compile_hash(
        _spec(
            registry={"provider": "mlflow", "project": "p", "trackingURI": "http://mlflow:5000"},
            compile={"target": "onnx", "precision": "fp32", "maxBatchSize": 32},
        )
    )
    assert compile_hash(base) != compile_hash(
        _spec(gates={"metrics": [{"name": "accuracy", "threshold": 0.9}]})
    )


def test_gates_report_each_gate_with_observed_and_threshold():
    gates = AcceptanceGates.model_validate(
        {
            "metrics": [
                {"name": "accuracy", "op": ">=", "threshold": 0.95},
                {"name": "loss", "op": "<", "threshold": 1},
            ],
            "maxLatencyP95Ms": 5,
            "maxSizeMB": 1,
        }
    )
    results = check_gates(gates, {"accuracy": 0.97, "loss": 2.0, "latency_p95_ms": 5.0, "size_mb": 1.5})
    assert [(r.name, r.passed, r.observed, r.threshold) for r in results] == [
        ("accuracy", True, 0.97, 0.95),
        ("loss", False, 2.0, 1.0),
        ("maxLatencyP95Ms", True, 5.0, 5.0),
        ("maxSizeMB", False, 1.5, 1.0),
    ]
    assert "loss 2 < 1: failed" in results[1].message


@pytest.mark.parametrize("metrics", [{}, {"accuracy": float("nan")}, {"f1": 0.99}])
def test_a_gate_on_a_metric_the_evaluator_did_not_report_fails(metrics: dict[str, float]):
    gates = AcceptanceGates.model_validate({"metrics": [{"name": "accuracy", "threshold": 0.0}]})
    (result,) = check_gates(gates, metrics)
    assert result.passed is False
    assert result.missing is True
    assert result.observed is None
    assert result.message.startswith("MetricMissing")


@pytest.mark.parametrize(
    ("op", "observed", "passed"),
    [(">=", 0.5, True), (">", 0.5, False), ("<=", 0.5, True), ("<", 0.5, False), (">", 0.6, True)],
)
def test_gate_operators_compare_the_observed_value_with_the_threshold(op: str, observed: float, passed: bool):
    gates = AcceptanceGates.model_validate({"metrics": [{"name": "m", "op": op, "threshold": 0.5}]})
    assert check_gates(gates, {"m": observed})[0].passed is passed


def test_a_stage_job_has_the_deadline_it_is_given():
    job = build_stage_job(_inputs(_spec(), deadline_seconds=900))
    assert job["spec"]["activeDeadlineSeconds"] == 900


def test_a_deadline_is_not_part_of_what_the_artifact_depends_on():
    # A deadline may change after compile started: it is not refused as a compile-relevant change.
    before = compile_hash(_spec())
    compile_ = {"target": "onnx", "precision": "fp32", "maxBatchSize": 16, "deadlineSeconds": 60}
    assert compile_hash(_spec(compile=compile_, evaluation={"deadlineSeconds": 30})) == before
