"""A tenant cannot steer another tenant's objects by forging ownerReferences (issue 15, item 11).

An attacker in namespace A who knows the UID of B's TrainingRun, Job or InferenceDeployment makes
objects in A that claim them as controller. Before, the operator matched children by UID alone: a
forged Job made it delete B's live Job again and again, and a forged failed Pod turned B's run
Failed with A's message. Children are now matched by (namespace, UID); forged claims are counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane
from mlops_operator.dev.pods import finish_pod
from tests.integration.conftest import OperatorProcess, start_operator
from tests.integration.operator_rbac import operator_identity
from tests.integration.test_trainingrun import _run, _running_pods, _start, _summary
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


@pytest.fixture
def attacker(core: client.CoreV1Api) -> Iterator[str]:
    name = f"evil-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        "the attacker namespace's default ServiceAccount",
        30,
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def operator_of_both(
    control_plane: ControlPlane, namespace: str, attacker: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    identity = operator_identity(control_plane)
    identity.grant(attacker)
    kubeconfig = identity.grant(namespace)
    running = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {"MLOPS_NAMESPACES": json.dumps([namespace, attacker])},
        kubeconfig=kubeconfig,
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


def _owner(kind: str, name: str, uid: str, api_version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def _forged_claims(operator: OperatorProcess) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("mlops_foreign_owner_claims_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_forged_jobs_and_pods_in_another_namespace_never_touch_the_victims_run(
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    attacker: str,
    dataset: str,
    operator_of_both: OperatorProcess,
) -> None:
    pod = _start(custom, core, namespace, _run("victim"))
    run = custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", "victim")
    job = batch.read_namespaced_job("victim-a1", namespace)
    labels = {"app.kubernetes.io/managed-by": "mlops-operator"}  # copied, so the informers see them
    # A real owner in A as well, so the garbage collector (to which an owner in another namespace is
    # absent) keeps the forgeries around while the operator sees them.
    anchor = core.create_namespaced_config_map(attacker, {"metadata": {"name": "anchor"}})
    keep = {"apiVersion": "v1", "kind": "ConfigMap", "name": "anchor", "uid": anchor.metadata.uid}
    container = {"name": "trainer", "image": "busybox", "command": ["true"]}  # as the run's own pods
    # A Job in A claiming B's TrainingRun as its controller.
    batch.create_namespaced_job(
        attacker,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "victim-a2",  # as if a later attempt of the victim's run
                "labels": labels,
                "ownerReferences": [
                    _owner("TrainingRun", "victim", run["metadata"]["uid"], f"{G}/{V}"),
                    keep,
                ],
            },
            "spec": {
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [container],
                        "tolerations": [KWOK_TOLERATION],
                    },
                }
            },
        },
    )
    # A Pod in A claiming B's Job, ending with a permanent failure.
    forged_pod = core.create_namespaced_pod(
        attacker,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "victim-a1-forged",
                "labels": {**labels, "job-name": "victim-a1"},
                "ownerReferences": [_owner("Job", "victim-a1", job.metadata.uid, "batch/v1"), keep],
            },
            "spec": {"restartPolicy": "Never", "containers": [container], "tolerations": [KWOK_TOLERATION]},
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod(forged_pod.metadata.name, attacker).status.phase == "Running",
        "the forged pod running",
        60,
    )
    finish_pod(
        core,
        attacker,
        forged_pod.metadata.name,
        exit_code=2,
        message=_summary(
            status="Failed", exitCode=2, reason="InvalidConfig", message="owned by the attacker"
        ),
    )
    time.sleep(
        10
    )  # what the forgeries did before (deleting the Job, failing the run), they did within seconds
    after = custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", "victim")
    assert after["status"]["phase"] == "Running", after["status"]
    assert "attacker" not in json.dumps(after["status"])
    assert batch.read_namespaced_job("victim-a1", namespace).metadata.uid == job.metadata.uid  # never deleted
    assert _running_pods(core, namespace, "victim-a1") == [pod]
    assert _forged_claims(operator_of_both) >= 2  # the Job's claim and the Pod's, counted
    # And the victim's own pod still decides the run.
    finish_pod(core, namespace, pod, exit_code=0, message=_summary(metrics={"accuracy": 0.9}))
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", "victim")["status"]["phase"]
            == "Succeeded"
        ),
        "the victim's run Succeeded",
        60,
    )
