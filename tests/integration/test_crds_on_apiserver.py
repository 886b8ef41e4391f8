"""The generated CRDs against the real kube-apiserver: explain, printer columns, samples, CEL rules."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from mlops_operator.api.v1alpha1 import GROUP, VERSION, kind_by_name
from mlops_operator.api.v1alpha1.common import prune_empty
from mlops_operator.api.validation import dump_manifest
from mlops_operator.dev.controlplane import ControlPlane
from tests.samples import InvalidSample, invalid_samples, load, valid_samples
from tests.unit.test_api_models import EDGES, YAML_EDGES, edge_doc, yaml_edge_manifest


def _create(custom: client.CustomObjectsApi, namespace: str, doc: dict, **kwargs: object) -> dict:
    info = kind_by_name(doc["kind"])
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, info.plural, doc, **kwargs)  # type: ignore[no-any-return]


def test_every_crd_is_established(control_plane: ControlPlane):
    out = control_plane.kubectl("get", "crd", "-o", "name").stdout.split()
    for plural in ("datasets", "trainingruns", "modelversions", "inferencedeployments"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.mlops.dev" in out


def test_kubectl_explain_shows_descriptions(control_plane: ControlPlane):
    out = control_plane.kubectl("explain", "trainingrun.spec").stdout
    assert "Desired state of a TrainingRun" in out
    assert "datasetRef" in out
    assert "Dataset to train on, in the same namespace." in out
    nested = control_plane.kubectl("explain", "inferencedeployment.spec.rollout.steps").stdout
    assert "exactly one of setWeight, pause or analysis" in nested


def test_every_valid_sample_is_accepted_and_defaulted_like_the_models(
    custom: client.CustomObjectsApi, namespace: str
):
    for path in valid_samples():
        doc = load(path)
        created = _create(custom, namespace, doc, field_validation="Strict")
        info = kind_by_name(doc["kind"])
        # The apiserver's defaulting (from the CRD schema) and the models' defaults must agree.
        # (A sub-object whose fields are all empty is stored as {} by the apiserver, left out by wire().)
        assert prune_empty(created["spec"]) == info.spec_model.model_validate(doc["spec"]).wire(), path.name


@pytest.mark.parametrize("sample", invalid_samples(), ids=lambda s: s.path.name)
def test_every_invalid_sample_is_rejected_with_the_rule_message(
    custom: client.CustomObjectsApi, namespace: str, sample: InvalidSample
):
    with pytest.raises(ApiException) as info:
        _create(custom, namespace, sample.doc, field_validation="Strict", dry_run="All")
    assert info.value.status in (400, 422), info.value.body
    body = info.value.body
    assert sample.field in body, body
    assert sample.message.search(body), body


def test_edge_values_get_the_verdict_mlopsctl_validate_gives(control_plane: ControlPlane, namespace: str):
    """The unit tests' tables of embedded Kubernetes values (quantities, tolerations, label keys and
    values, Secret keys, images, URLs, JSON types, YAML scalars), applied as a user would (kubectl,
    strict field validation): the apiserver agrees with `mlopsctl validate` on each."""
    manifests = [
        (str(patch), dump_manifest(edge_doc(kind, patch, i)), ok) for i, (kind, patch, ok) in enumerate(EDGES)
    ]
    manifests += [(snippet, yaml_edge_manifest(snippet, i), ok) for i, (snippet, ok) in enumerate(YAML_EDGES)]
    disagreements = []
    for what, manifest, ok in manifests:
        result = control_plane.kubectl(
            "create", "-n", namespace, "--dry-run=server", "--validate=strict", "-o=name", "-f=-",
            check=False, input_text=manifest,
        )  # fmt: skip
        if ok and result.returncode != 0:
            disagreements.append(f"{what}: refused: {result.stderr.strip()}")
        elif not ok and result.returncode == 0:
            disagreements.append(f"{what}: accepted")
        elif not ok:
            assert "is invalid" in result.stderr or "unknown field" in result.stderr, result.stderr
    assert not disagreements, "\n".join(disagreements)


def test_printer_columns_and_category(
    control_plane: ControlPlane, custom: client.CustomObjectsApi, namespace: str
):
    for path in valid_samples():
        _create(custom, namespace, load(path))
    header, row = control_plane.kubectl("get", "tr", "-n", namespace).stdout.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "PHASE",
        "QUEUED",
        "DATASET",
        "NODES",
        "GPUS",
        "ATTEMPT",
        "READY",
        "AGE",
    ]
    # Cells sit under their headers; empty ones (no status yet) are blank.
    cells = {name: row[header.index(name) :].split(" ")[0] for name in header.split()}
    assert cells["NAME"] == "digits-cnn-r1"
    assert (cells["DATASET"], cells["NODES"], cells["GPUS"]) == ("digits", "1", "1")
    assert cells["PHASE"] == ""
    everything = control_plane.kubectl("get", "mlops", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(everything) == sorted(
        [
            "dataset.mlops.dev/digits",
            "trainingrun.mlops.dev/digits-cnn-r1",
            "modelversion.mlops.dev/digits-cnn-v1",
            "inferencedeployment.mlops.dev/digits",
            "driftmonitor.mlops.dev/digits",
            "modelpipeline.mlops.dev/digits",
        ]
    )
    header = control_plane.kubectl("get", "dm", "-n", namespace).stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "DRIFTED", "SHARE", "CURRENT", "LAST", "CHECK", "READY", "AGE"]
    header = control_plane.kubectl("get", "mp", "-n", namespace).stdout.splitlines()[0]
    assert header.split() == [
        "NAME", "PHASE", "LAST", "TRIGGER", "LAST", "OUTCOME", "PROMOTED", "ACTIVE", "NEXT", "READY", "AGE",
    ]  # fmt: skip
    for short in ("dset", "tr", "mv", "idep", "dm", "mp"):
        assert control_plane.kubectl("get", short, "-n", namespace, "-o", "name").stdout.strip()


def test_training_run_identity_fields_are_immutable(custom: client.CustomObjectsApi, namespace: str):
    doc = load(next(p for p in valid_samples() if "trainingrun" in p.name))
    _create(custom, namespace, doc)
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "trainingruns",
            doc["metadata"]["name"],
            {"spec": {"datasetRef": {"name": "other"}}},
        )
    assert "datasetRef is immutable" in info.value.body
    # Mutable fields stay mutable.
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", doc["metadata"]["name"], {"spec": {"suspend": True}}
    )
    assert patched["spec"]["suspend"] is True


def test_inference_deployment_strategy_is_immutable(custom: client.CustomObjectsApi, namespace: str):
    doc = load(next(p for p in valid_samples() if "inferencedeployment" in p.name))
    _create(custom, namespace, doc)
    name = doc["metadata"]["name"]
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "inferencedeployments",
            name,
            {"spec": {"rollout": {"strategy": "recreate", "steps": []}}},
        )
    assert "rollout.strategy is immutable" in info.value.body
    # The canary's steps and thresholds stay mutable.
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", name,
        {"spec": {"rollout": {"analysis": {"successRateMin": 0.9}}}},
    )  # fmt: skip
    assert patched["spec"]["rollout"]["analysis"]["successRateMin"] == 0.9


def test_status_is_a_subresource(custom: client.CustomObjectsApi, namespace: str):
    doc = load(valid_samples()[0])
    created = _create(custom, namespace, {**doc, "status": {"phase": "Ready"}})
    assert "status" not in created or created["status"].get("phase") != "Ready"
    updated = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "datasets", "digits", {"status": {"phase": "Ready", "objectCount": 3}}
    )
    assert updated["status"]["phase"] == "Ready"
    assert updated["metadata"]["generation"] == created["metadata"]["generation"]
