"""The InferenceDeployment's children as the builders make them, applied to the real apiserver and run
by the real Argo Rollouts controller (no operator here: the test applies them as the operator does,
server-side, with its field manager, forced).

- The endpoint Service selects every serving pod: mid-canary its EndpointSlices hold the stable and
  the canary pods (issue 15 item 7), and Argo Rollouts writes none of its fields (managedFields).
- A child read back from the apiserver (its defaults, canonical quantities, other managers) has not
  drifted; an edit of a field the operator owns has (issue 15 item 2).
- A Service an older operator version named as the Rollout's stableService (its selector pinned by
  Argo Rollouts to one ReplicaSet) selects every pod again once the new children are applied.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from mlops_operator.builders.drift import differences, drifted
from mlops_operator.builders.serving import (
    ServingInputs,
    build_analysis_template,
    build_autoscaler,
    build_deployment,
    build_rollout,
    children,
    service_name,
)
from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane
from mlops_operator.k8s.rawapi import RawApi, resource_path
from tests.waiting import wait_for

GROUP, VERSION = "argoproj.io", "v1alpha1"
MANAGER = "mlops-operator"  # settings.OperatorConfig.field_manager's default
HASH_KEY = "rollouts-pod-template-hash"


@pytest.fixture
def rollouts(control_plane: ControlPlane) -> ControlPlane:
    if not control_plane.argo_rollouts:
        pytest.skip("the session control plane runs without the rollouts controller")
    return control_plane


def _inputs(namespace: str, version: str, **spec: Any) -> ServingInputs:
    return ServingInputs(
        name="digits",
        namespace=namespace,
        uid="0b7c1e52-6f4e-4d0a-9a57-1d2e3f4a5b6c",  # no owner object: nothing here garbage-collects
        spec=InferenceDeploymentSpec.model_validate(
            {"modelVersionRef": {"name": version}, "resources": {"gpus": 0}, **spec}
        ),
        model_version=version,
        model_name="digits",
        repository_uri=f"s3://data/engines/triton/digits/{version}/",
        dataset=DatasetSpec.model_validate(
            {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}}}
        ),
        fetch_image="example.invalid/trainer:1",
        extra_tolerations=(KWOK_TOLERATION,),
    )


def _without_owner(manifest: dict[str, Any]) -> dict[str, Any]:
    """The children name their InferenceDeployment as owner; there is none here (no CRD object), and
    the garbage collector would delete children of a missing owner."""
    copied: dict[str, Any] = yaml.safe_load(yaml.safe_dump(manifest))
    copied["metadata"].pop("ownerReferences", None)
    return copied


def _apply(api: client.ApiClient, manifests: list[dict[str, Any]]) -> None:
    """As the operator applies its children: server-side, its field manager, forced."""
    raw = RawApi(api)
    for manifest in manifests:
        raw.apply(manifest, MANAGER)


def _read(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The child as the apiserver returns it (JSON, as the operator's informers hold it)."""
    return RawApi(api).request(
        "GET", resource_path(manifest["kind"], namespace, manifest["metadata"]["name"])
    )


def _rollout_status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", "digits-triton")
    return dict(obj.get("status") or {})


def _settled(custom: client.CustomObjectsApi, namespace: str) -> bool:
    status = _rollout_status(custom, namespace)
    return status.get("phase") == "Healthy" and status.get("stableRS") == status.get("currentPodHash")


def _endpoint_hashes(api: client.ApiClient, core: client.CoreV1Api, namespace: str) -> set[str]:
    """The pod-template-hash of every ready pod the endpoint Service's EndpointSlices name."""
    discovery = client.DiscoveryV1Api(api)
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service_name(_inputs(namespace, 'v1'))}"
    ).items
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    hashes = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.endpoints or []:
            ref = endpoint.target_ref
            if ref is not None and ref.name in pods and (endpoint.conditions.ready is not False):
                hashes.add(pods[ref.name].metadata.labels.get(HASH_KEY))
    return hashes


def _managers(obj: dict[str, Any]) -> set[str]:
    return {entry["manager"] for entry in obj["metadata"].get("managedFields") or []}


def test_mid_canary_the_endpoint_reaches_stable_and_canary_pods_and_argo_writes_none_of_its_fields(
    rollouts: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    steps = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    v1 = _inputs(namespace, "v1", replicas=2, rollout={"steps": steps})
    _apply(api, [_without_owner(c) for c in children(v1, "Rollout")])
    wait_for(lambda: _settled(custom, namespace), "the first version to be stable", timeout=60)
    stable = _rollout_status(custom, namespace)["stableRS"]
    wait_for(lambda: _endpoint_hashes(api, core, namespace) == {stable}, "the endpoint to list v1's pods", 60)

    v2 = dataclasses.replace(v1, model_version="v2", repository_uri="s3://data/engines/triton/digits/v2/")
    desired = [_without_owner(c) for c in children(v2, "Rollout")]
    _apply(api, desired)

    def paused_at_half() -> bool:
        status = _rollout_status(custom, namespace)
        return (
            status.get("currentStepIndex") == 1
            and status.get("stableRS") == stable
            and status.get("currentPodHash") != stable
            and status.get("updatedReplicas") == 1
            and status.get("availableReplicas") == 2
        )

    wait_for(paused_at_half, "the canary to pause at 50%", timeout=60)
    canary = _rollout_status(custom, namespace)["currentPodHash"]
    # Clients of status.endpoint reach both versions: the canary gets its share (1 of 2 pods).
    wait_for(
        lambda: _endpoint_hashes(api, core, namespace) == {stable, canary},
        "the endpoint's EndpointSlices to hold the stable and the canary pod",
        timeout=60,
    )
    service = _read(api, namespace, desired[0])
    assert HASH_KEY not in service["spec"]["selector"]
    # managedFields: the Service is the operator's alone; the Rollout names none, so the rollouts
    # controller wrote nothing to it (no selector hash, no managed-by annotation).
    assert _managers(service) == {MANAGER}, service["metadata"]["managedFields"]
    assert "argo-rollouts.argoproj.io/managed-by-rollouts" not in service["metadata"].get("annotations", {})
    # Read back, every child holds what the operator applied, whatever the apiserver and the
    # rollouts controller added.
    for child in desired:
        observed = _read(api, namespace, child)
        assert differences(child, observed, kind=child["kind"]) == [], child["kind"]
        assert not drifted(child, observed)


def test_children_read_back_from_the_apiserver_have_not_drifted_until_an_operator_field_is_edited(
    rollouts: ControlPlane, api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    # CPU written as "0.5": the apiserver stores a built-in kind's quantities canonically ("500m").
    spec = {"resources": {"gpus": 0, "cpu": "0.5", "memory": "1Gi"}, "autoscaling": {"maxReplicas": 2}}
    scaled = dataclasses.replace(
        _inputs(namespace, "v1", **spec), prometheus_address=rollouts.prometheus_url or "http://127.0.0.1:9"
    )
    # A Rollout of its own pods beside the Deployment (another name and UID, so other pods).
    other = dataclasses.replace(scaled, name="digits-canary", uid="5e6f7a8b-0000-4111-8222-933344445555")
    desired = [
        _without_owner(m)
        for m in (
            build_deployment(scaled),
            build_autoscaler(scaled, "Deployment"),
            build_analysis_template(other),
            build_rollout(other),
        )
    ]
    _apply(api, desired)
    for child in desired:
        observed = _read(api, namespace, child)
        assert differences(child, observed, kind=child["kind"]) == [], child["kind"]
        assert not drifted(child, observed), child["kind"]
    deployment = _read(api, namespace, desired[0])
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "500m"

    # A hand edit of an operator field (another field manager) is drift; applying again repairs it.
    rollouts.kubectl(
        "patch",
        "hpa",
        desired[1]["metadata"]["name"],
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"maxReplicas":9}}',
    )
    assert drifted(desired[1], _read(api, namespace, desired[1]))
    _apply(api, [desired[1]])
    assert not drifted(desired[1], _read(api, namespace, desired[1]))
    # A label another tool adds is not the operator's: no drift.
    rollouts.kubectl("label", "deployment", desired[0]["metadata"]["name"], "-n", namespace, "team=a")
    assert not drifted(desired[0], _read(api, namespace, desired[0]))


def test_a_service_an_older_rollout_pinned_selects_every_pod_once_the_new_children_are_applied(
    rollouts: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    v1 = _inputs(namespace, "v1", replicas=2, rollout={"steps": [{"setWeight": 50}, {"pause": {}}]})
    old = [_without_owner(c) for c in children(v1, "Rollout")]
    service, rollout = old[0], old[-1]
    # What operator versions before this one applied: the endpoint named as the stableService.
    rollout["spec"]["strategy"]["canary"]["stableService"] = service["metadata"]["name"]
    _apply(api, old)
    wait_for(lambda: _settled(custom, namespace), "the first version to be stable", timeout=60)
    stable = _rollout_status(custom, namespace)["stableRS"]

    def pinned() -> bool:
        return _read(api, namespace, service)["spec"]["selector"].get(HASH_KEY) == stable

    wait_for(pinned, "Argo Rollouts to pin the stable Service's selector", timeout=30)
    observed = _read(api, namespace, service)
    assert "rollouts-controller" in _managers(observed) or len(_managers(observed)) > 1
    assert drifted(service, observed)  # the pinned selector is not the operator's

    desired = [_without_owner(c) for c in children(v1, "Rollout")]
    _apply(api, desired)

    def repaired() -> bool:
        """What the operator does on each wake: apply again what has drifted. Argo Rollouts may pin
        the Service once more between the Service's apply and the Rollout's (which still named it)."""
        if drifted(desired[0], _read(api, namespace, desired[0])):
            _apply(api, [desired[0]])
            return False
        return True

    wait_for(repaired, "the endpoint Service to hold the operator's selector", timeout=30)
    # Argo Rollouts does not pin it again: no Rollout names it now.
    time.sleep(3)
    observed = _read(api, namespace, desired[0])
    assert HASH_KEY not in observed["spec"]["selector"]
    assert not drifted(desired[0], observed)
