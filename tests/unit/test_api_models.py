"""The pydantic models accept the sample pipeline and refuse each invalid sample, naming the field."""

from __future__ import annotations

import pytest

from mlops_operator.api.v1alpha1 import (
    DatasetSpec,
    InferenceDeploymentSpec,
    ModelVersionSpec,
    TrainingRunSpec,
    kind_by_name,
)
from mlops_operator.api.v1alpha1.common import k8s_camel
from mlops_operator.api.validation import ManifestError, validate_manifest
from tests.samples import InvalidSample, invalid_samples, load, valid_samples


@pytest.mark.parametrize("path", valid_samples(), ids=lambda p: p.name)
def test_valid_sample_parses(path):
    validate_manifest(load(path))


def test_sample_pipeline_covers_every_kind_and_links_up():
    docs = {d["kind"]: d for d in (load(p) for p in valid_samples())}
    assert set(docs) == {"Dataset", "TrainingRun", "ModelVersion", "InferenceDeployment"}
    assert docs["TrainingRun"]["spec"]["datasetRef"]["name"] == docs["Dataset"]["metadata"]["name"]
    assert (
        docs["ModelVersion"]["spec"]["source"]["trainingRunRef"]["name"]
        == docs["TrainingRun"]["metadata"]["name"]
    )
    assert (
        docs["InferenceDeployment"]["spec"]["modelVersionRef"]["name"]
        == docs["ModelVersion"]["metadata"]["name"]
    )


@pytest.mark.parametrize("sample", invalid_samples(), ids=lambda s: s.path.name)
def test_invalid_sample_is_rejected_naming_the_field(sample: InvalidSample):
    with pytest.raises(ManifestError) as info:
        validate_manifest(sample.doc)
    errors = info.value.errors
    assert len(errors) == 1, f"an invalid sample should break exactly one rule, got {errors}"
    field, _, message = errors[0].partition(": ")
    assert field == sample.field
    assert sample.message.search(message), message


def test_every_invalid_sample_is_otherwise_valid_kind():
    kinds = {s.doc["kind"] for s in invalid_samples()}
    assert kinds == {"Dataset", "TrainingRun", "ModelVersion", "InferenceDeployment"}


def test_wrong_api_version_and_unknown_kind_are_refused():
    doc = load(valid_samples()[0])
    with pytest.raises(ManifestError, match="apiVersion"):
        validate_manifest({**doc, "apiVersion": "mlops.dev/v1"})
    with pytest.raises(ManifestError, match="unknown kind 'Pipeline'"):
        validate_manifest({**doc, "kind": "Pipeline"})


def test_nested_defaults_are_filled_in():
    spec = TrainingRunSpec.model_validate(
        {"datasetRef": {"name": "d"}, "model": "m", "output": {"uri": "s3://bucket/out/"}}
    )
    assert spec.resources.gpus_per_worker == 1
    assert spec.distributed.nodes == 1
    assert spec.retry.max_attempts == 3
    assert spec.suspend is False
    mv = ModelVersionSpec.model_validate({"modelName": "m", "source": {"artifactURI": "s3://b/m/"}})
    assert (mv.compile.target, mv.compile.precision, mv.compile.workspace_mib) == ("tensorrt", "fp16", 2048)
    idep = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v"}})
    assert idep.rollout.strategy == "canary"
    assert idep.triton.dynamic_batching.enabled is True


def test_wire_form_uses_kubernetes_acronyms_and_round_trips():
    ds = DatasetSpec.model_validate(load(valid_samples()[0])["spec"])
    wire = ds.wire()
    assert wire["source"]["endpointURL"] == "http://127.0.0.1:5000"
    assert wire["source"]["credentialsSecretRef"]["accessKeyIDKey"] == "AWS_ACCESS_KEY_ID"
    assert DatasetSpec.model_validate(wire) == ds


@pytest.mark.parametrize(
    ("snake", "camel"),
    [
        ("artifact_uri", "artifactURI"),
        ("endpoint_url", "endpointURL"),
        ("access_key_id_key", "accessKeyIDKey"),
        ("identity", "identity"),
        ("uri", "uri"),
        ("gpus_per_worker", "gpusPerWorker"),
    ],
)
def test_k8s_camel(snake, camel):
    assert k8s_camel(snake) == camel


def test_status_models_tolerate_fields_from_newer_operators():
    info = kind_by_name("TrainingRun")
    status = info.status_model.model_validate({"phase": "Running", "someFutureField": 1, "conditions": []})
    assert status.phase == "Running"


def test_canary_weights_must_strictly_increase():
    base = {"modelVersionRef": {"name": "v"}}
    ok = {**base, "rollout": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 60}]}}
    InferenceDeploymentSpec.model_validate(ok)
    same = {**base, "rollout": {"steps": [{"setWeight": 10}, {"setWeight": 10}]}}
    with pytest.raises(ValueError, match="must increase"):
        InferenceDeploymentSpec.model_validate(same)
