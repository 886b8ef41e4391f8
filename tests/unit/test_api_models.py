"""The pydantic models accept the sample pipeline and refuse each invalid sample, naming the field."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import (
    DatasetSpec,
    InferenceDeploymentSpec,
    ModelVersionSpec,
    TrainingRunSpec,
    kind_by_name,
)
from mlops_operator.api.v1alpha1 import kubevalues as kv
from mlops_operator.api.v1alpha1.common import k8s_camel
from mlops_operator.api.validation import ManifestError, dump_manifest, load_manifests, validate_manifest
from tests.samples import InvalidSample, invalid_samples, load, valid_samples


@pytest.mark.parametrize("path", valid_samples(), ids=lambda p: p.name)
def test_valid_sample_parses(path):
    validate_manifest(load(path))


def test_sample_pipeline_covers_every_kind_and_links_up():
    docs = {d["kind"]: d for d in (load(p) for p in valid_samples())}
    assert set(docs) == {
        "Dataset",
        "TrainingRun",
        "ModelVersion",
        "InferenceDeployment",
        "DriftMonitor",
        "ModelPipeline",
    }
    assert docs["TrainingRun"]["spec"]["datasetRef"]["name"] == docs["Dataset"]["metadata"]["name"]
    assert (
        docs["ModelVersion"]["spec"]["source"]["trainingRunRef"]["name"]
        == docs["TrainingRun"]["metadata"]["name"]
    )
    assert (
        docs["InferenceDeployment"]["spec"]["modelVersionRef"]["name"]
        == docs["ModelVersion"]["metadata"]["name"]
    )
    assert (
        docs["DriftMonitor"]["spec"]["inferenceDeploymentRef"]["name"]
        == docs["InferenceDeployment"]["metadata"]["name"]
    )
    pipeline = docs["ModelPipeline"]["spec"]
    assert pipeline["datasetRef"]["name"] == docs["Dataset"]["metadata"]["name"]
    assert pipeline["triggers"]["driftMonitorRef"]["name"] == docs["DriftMonitor"]["metadata"]["name"]


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
    assert kinds == {
        "Dataset",
        "TrainingRun",
        "ModelVersion",
        "InferenceDeployment",
        "DriftMonitor",
        "ModelPipeline",
    }


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
    mv = ModelVersionSpec.model_validate(
        {
            "modelName": "m",
            "source": {"artifactURI": "s3://b/m/"},
            "evaluation": {"datasetRef": {"name": "d"}},
        }
    )
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


# --- Kubernetes values embedded in specs get Kubernetes' own verdict -----------------------------

# resource.ParseQuantity of k8s.io/apimachinery v0.35.4 on these strings (None: it refuses them),
# read off the Go function itself; quantity_sign is its Python twin (CEL isQuantity/quantity).
PARSE_QUANTITY = [
    ("", None), ("0", 0), ("+", 0), ("-", 0), (".", 0), ("1", 1), ("-1", -1), ("-0", 0),
    ("1.2.3", None), ("1Gb", None), ("  4", None), ("4 ", None), ("1e3", 1), ("500m", 1), ("1E", 1),
    ("1e", None), ("1e1.5", None), ("1e9223372036854775807", 1), ("1e9223372036854775808", None),
    (".e-10", None), (".e-9", 0), ("0.e-10", 0), ("1.", 1), ("1.G", 1), (".5Ki", 1), ("1.5Ki", 1),
    ("0.1m", 1), ("1Ei", 1), ("123456789012345678901234567890", 1), ("1.5n", 1), ("-1.5n", -1),
    ("+1", 1), ("1e+3", 1), ("1E-3", 1), ("1Ki5", None), ("e3", 0), ("Mi", 0), ("1\n", None),
    ("1K", None), ("1k", 1), ("1m5", None), ("16Gi", 1), ("-0.5", -1), ("0.000", 0), ("1e-99999", 1),
]  # fmt: skip


@pytest.mark.parametrize(("text", "sign"), PARSE_QUANTITY)
def test_quantity_twin_reads_like_parse_quantity(text, sign):
    assert kv.quantity_sign(text) == sign


@pytest.mark.parametrize(
    ("text", "ok"),
    [("500m", True), ("4", True), ("1e3", True), ("16Gi", True), (".5", True), ("+1", True), ("-0", True),
     ("0", True), ("-1", False), ("1.2.3", False), ("1Gb", False), ("  4", False), ("1e1.5", False),
     ("+", False), (".", False), ("Mi", False), ("1e9223372036854775808", False), ("1\n", False)],
)  # fmt: skip
def test_quantities_are_well_formed_and_non_negative(text, ok):
    assert kv.is_nonnegative_quantity(text) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [("a", True), ("example.com/MyName", True), ("kubernetes.io/hostname", True), ("A.b_c-d", True),
     ("x" * 63, True), ("x" * 64, False), (f"{'a' * 253}/b", True), (f"{'a' * 254}/b", False),
     ("a b", False), ("/a", False), ("a/", False), ("a/b/c", False), ("-a", False), ("a-", False),
     ("Example.com/a", False), ("", False), ("a\n", False)],
)  # fmt: skip
def test_label_keys_are_kubernetes_qualified_names(key, ok):
    assert kv.is_label_key(key) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("NVIDIA-H100-80GB-HBM3", True), ("a.b_c", True), ("x" * 63, True), ("x" * 64, False),
     ("NVIDIA H100", False), ("-a", False), ("a_", False), ("a\n", False)],
)  # fmt: skip
def test_label_values(value, ok):
    assert kv.is_label_value(value) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [("AWS_ACCESS_KEY_ID", True), (".id", True), ("a..b", True), ("-", True), ("a" * 253, True),
     (".", False), ("..", False), ("..id", False), ("a/b", False), ("a b", False), ("", False)],
)  # fmt: skip
def test_secret_keys_follow_kubernetes_configmap_key_rule(key, ok):
    matched = re.fullmatch(kv.CONFIG_MAP_KEY, key) is not None and len(key) <= kv.CONFIG_MAP_KEY_MAX
    assert matched is ok


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:5000", True),
        ("https://s3.us-east-1.amazonaws.com", True),
        ("http://[::1]:9000", True),
        ("http://minio.mlops.svc.cluster.local:9000/bucket?x=1", True),
        ("http://a.com.", True),
        ("http://", False),
        ("https:///api", False),
        ("mlflow:5000", False),
        ("ftp://host", False),
        ("http://user:pw@host", False),
        ("http://a b", False),
        ("http://host:0", False),
        ("http://host:65536", False),
        ("http://-a.com", False),
        ("http://a_b.com", False),
        ("http://a.com/ x", False),
    ],
)
def test_endpoint_urls_are_http_with_a_host(url, ok):
    assert (re.fullmatch(kv.HTTP_URL, url) is not None) is ok


# Spec patches on a minimal object of each kind, and whether Kubernetes accepts them. The same table
# runs against the real apiserver (tests/integration/test_crds_on_apiserver.py): one verdict.
BASE_SPECS: dict[str, dict[str, Any]] = {
    "TrainingRun": {"datasetRef": {"name": "digits"}, "model": "m", "output": {"uri": "s3://bucket/out/"}},
    "Dataset": {"source": {"uri": "s3://bucket/data/", "credentialsSecretRef": {"name": "s3"}}},
    "ModelVersion": {"modelName": "m", "source": {"trainingRunRef": {"name": "r1"}}},
    "InferenceDeployment": {"modelVersionRef": {"name": "v1"}},
}
LONG_PREFIX_OK = ("a" * 62 + ".") * 4 + "b"  # 253 characters, the longest DNS subdomain
EDGES: list[tuple[str, dict[str, Any], bool]] = [
    ("TrainingRun", {"resources": {"cpu": "1e3", "memory": "1.5Gi"}}, True),
    ("TrainingRun", {"resources": {"cpu": "500m", "memory": "1E"}}, True),
    ("TrainingRun", {"resources": {"cpu": ".5", "memory": "0"}}, True),
    ("TrainingRun", {"resources": {"cpu": "+1", "memory": "-0"}}, True),
    ("TrainingRun", {"resources": {"cpu": "1e9223372036854775808"}}, False),
    ("TrainingRun", {"resources": {"cpu": "+"}}, False),
    ("TrainingRun", {"resources": {"cpu": "4 "}}, False),
    ("TrainingRun", {"resources": {"memory": "1K"}}, False),
    ("TrainingRun", {"resources": {"memory": "-1Gi"}}, False),
    ("TrainingRun", {"resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}}, True),
    ("TrainingRun", {"resources": {"gpuProduct": "x" * 64}}, False),
    ("TrainingRun", {"scheduling": {"tolerations": [{"operator": "Exists"}]}}, True),
    ("TrainingRun", {"scheduling": {"tolerations": [{"key": "", "operator": "Exists"}]}}, True),
    (
        "TrainingRun",
        {
            "scheduling": {
                "tolerations": [
                    {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
                ]
            }
        },
        True,
    ),
    ("TrainingRun", {"scheduling": {"tolerations": [{"key": "example.com/gpu", "value": "a.b_c-d"}]}}, True),
    ("TrainingRun", {"scheduling": {"tolerations": [{"key": "k", "tolerationSeconds": 5}]}}, False),
    ("TrainingRun", {"scheduling": {"tolerations": [{"key": "a/b/c", "operator": "Exists"}]}}, False),
    (
        "TrainingRun",
        {
            "scheduling": {
                "nodeSelector": {"kubernetes.io/hostname": "node-1", "a": "", f"{LONG_PREFIX_OK}/z": "x"}
            }
        },
        True,
    ),
    ("TrainingRun", {"scheduling": {"nodeSelector": {"/a": "x"}}}, False),
    ("TrainingRun", {"scheduling": {"nodeSelector": {"a/": "x"}}}, False),
    ("TrainingRun", {"scheduling": {"nodeSelector": {"Example.com/a": "x"}}}, False),
    ("TrainingRun", {"scheduling": {"nodeSelector": {f"k{i}": "v" for i in range(33)}}}, False),
    ("TrainingRun", {"image": "nvcr.io/nvidia/pytorch:25.01-py3"}, True),
    ("TrainingRun", {"image": "nginx\t"}, False),
    ("TrainingRun", {"image": "ngi nx"}, False),
    ("TrainingRun", {"image": ""}, False),
    (
        "TrainingRun",
        {"tracking": {"wandb": {"project": "p", "apiKeySecretRef": {"name": "w", "key": ".key"}}}},
        True,
    ),
    (
        "TrainingRun",
        {"tracking": {"wandb": {"project": "p", "apiKeySecretRef": {"name": "w", "key": ".."}}}},
        False,
    ),
    ("TrainingRun", {"serviceAccountName": "Trainer"}, False),
    # Types as the apiserver reads them: no coercion, whole-number floats are integers, nulls pruned.
    ("TrainingRun", {"resources": {"gpusPerWorker": 4.0}}, True),
    ("TrainingRun", {"resources": {"gpusPerWorker": 1.5}}, False),
    ("TrainingRun", {"suspend": "true"}, False),
    ("TrainingRun", {"retry": {"maxAttempts": True}}, False),
    ("TrainingRun", {"image": None, "suspend": None}, True),
    ("TrainingRun", {"service_account_name": "sa"}, False),
    ("TrainingRun", {"resources": {"cpu": 4}}, False),
    ("Dataset", {"source": {"uri": "s3://bucket/data/", "endpointURL": "http://[::1]:9000"}}, True),
    ("Dataset", {"source": {"uri": "s3://bucket/data/", "endpointURL": "http://host:65536"}}, False),
    ("Dataset", {"source": {"uri": "s3://bucket/data/", "endpointURL": "ftp://host"}}, False),
    ("Dataset", {"source": {"uri": "s3://bucket/data/", "region": "us-east-1"}}, True),
    ("Dataset", {"source": {"uri": "s3://bucket/data/", "region": "123"}}, False),
    # No confused deputy: the operator reads a Dataset only with the tenant's own credentials.
    ("Dataset", {"source": {"credentialsSecretRef": None}}, False),
    (
        "Dataset",
        {
            "source": {
                "uri": "s3://bucket/data/",
                "credentialsSecretRef": {"name": "s3", "sessionTokenKey": "a/b"},
            }
        },
        False,
    ),
    ("ModelVersion", {"gates": {"metrics": [{"name": "accuracy", "threshold": 1}]}}, True),
    ("ModelVersion", {"compile": {"gpuProduct": "Tesla-T4"}, "serviceAccountName": "compiler"}, True),
    (
        "ModelVersion",
        {"registry": {"provider": "mlflow", "project": "p", "trackingURI": "http://mlflow:5000"}},
        True,
    ),
    (
        "ModelVersion",
        {"registry": {"project": "p", "credentialsSecretRef": {"name": "r", "key": "a b"}}},
        False,
    ),
    ("InferenceDeployment", {"resources": {"cpu": "2", "memory": "8Gi", "gpuProduct": "L4"}}, True),
    ("InferenceDeployment", {"resources": {"memory": "8 Gi"}}, False),
    (
        "InferenceDeployment",
        {"scheduling": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        False,
    ),
    ("InferenceDeployment", {"scheduling": {"priorityClassName": "serving-high"}}, True),
]


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def edge_doc(kind: str, patch: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"edge-{index}"},
        "spec": merge(BASE_SPECS[kind], patch),
    }


# Manifests as a user types them: go-yaml (kubectl) and PyYAML disagree on some plain scalars, and
# mlopsctl validate reads YAML as kubectl does.
YAML_EDGES: list[tuple[str, bool]] = [
    ("resources: {cpu: 1e3}", False),  # a number to kubectl (1000), and cpu is a string
    ('resources: {cpu: "1e3"}', True),
    ("resources: {gpusPerWorker: 2.0}", True),  # kubectl sends 2
    ("resources: {gpusPerWorker: 0x2}", True),
    ("resources: {gpuProduct: 0o17}", False),  # an integer to kubectl, a string to PyYAML
    ("scheduling: {tolerations: [{key: k, value: y}]}", False),  # y is true to kubectl
    ("image: n", False),
    ("image: 1:30", True),  # a string to kubectl, 90 to PyYAML
    ("image: 2024-01-02", True),  # a timestamp reaches the apiserver as its text
    ("suspend: on", True),
    ("suspend: 'on'", False),
]


def yaml_edge_manifest(snippet: str, index: int) -> str:
    return (
        f"apiVersion: mlops.dev/v1alpha1\nkind: TrainingRun\nmetadata: {{name: yaml-edge-{index}}}\n"
        "spec:\n  datasetRef: {name: digits}\n  model: m\n  output: {uri: 's3://bucket/out/'}\n"
        f"  {snippet}\n"
    )


def verdict(manifest: str) -> bool:
    """mlopsctl validate's verdict on a YAML manifest."""
    (doc,) = load_manifests(manifest)
    try:
        validate_manifest(doc)
    except ManifestError:
        return False
    return True


@pytest.mark.parametrize(("index", "edge"), list(enumerate(EDGES)), ids=lambda x: str(x)[:60])
def test_edge_values_get_kubernetes_verdict(index, edge):
    kind, patch, ok = edge
    assert verdict(dump_manifest(edge_doc(kind, patch, index))) is ok


@pytest.mark.parametrize(("index", "edge"), list(enumerate(YAML_EDGES)), ids=lambda x: str(x)[:60])
def test_yaml_is_read_as_kubectl_reads_it(index, edge):
    snippet, ok = edge
    assert verdict(yaml_edge_manifest(snippet, index)) is ok


def test_validate_is_strict_and_names_the_field():
    doc = edge_doc("TrainingRun", {"resources": {"gpusPerWorker": "4"}}, 0)
    with pytest.raises(ManifestError) as info:
        validate_manifest(doc)
    assert info.value.errors == ["spec.resources.gpusPerWorker: Input should be a valid integer"]
    with pytest.raises(ManifestError, match=r"spec.service_account_name: Extra inputs are not permitted"):
        validate_manifest(edge_doc("TrainingRun", {"service_account_name": "sa"}, 0))
    with pytest.raises(ManifestError, match=r"spec.hyperparameters.lr: nan is not a number JSON can carry"):
        validate_manifest(edge_doc("TrainingRun", {"hyperparameters": {"lr": float("nan")}}, 0))


def test_the_operator_still_reads_stored_objects_leniently():
    """Objects from the apiserver were validated there; reading them stays lax (4.0 is 4)."""
    spec = TrainingRunSpec.model_validate(
        merge(BASE_SPECS["TrainingRun"], {"resources": {"gpusPerWorker": 4.0}})
    )
    assert spec.resources.gpus_per_worker == 4
