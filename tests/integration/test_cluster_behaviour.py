"""The local control plane behaves like a cluster: GPU scheduling, RBAC, garbage collection, pod fates."""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane, ControlPlaneError, find_binaries
from mlops_operator.dev.pods import EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, evict_pod, finish_pod
from tests.waiting import wait_for


def _gpu_job(name: str, gpus: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [KWOK_TOLERATION],
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    "containers": [
                        {
                            "name": "train",
                            "image": "trainer:test",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def _job_condition(batch: client.BatchV1Api, namespace: str, name: str, type_: str) -> bool:
    job = batch.read_namespaced_job(name, namespace)
    return any(c.type == type_ and c.status == "True" for c in job.status.conditions or [])


def test_gpu_nodes_advertise_gpus(core: client.CoreV1Api):
    nodes = core.list_node(label_selector="nvidia.com/gpu.present=true").items
    assert len(nodes) == 2
    for node in nodes:
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_gpu_job_is_scheduled_and_completes(api: client.ApiClient, core: client.CoreV1Api, namespace: str):
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, _gpu_job("two-gpus", 2, {EXIT_CODE_ANNOTATION: "0"}))
    wait_for(lambda: _job_condition(batch, namespace, "two-gpus", "Complete"), "Job two-gpus to complete", 60)
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=two-gpus").items
    assert pod.spec.node_name.startswith("gpu-node-")
    assert pod.status.phase == "Succeeded"


def test_job_asking_more_gpus_than_any_node_stays_unschedulable(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str
):
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, _gpu_job("too-many", 16))

    def unschedulable() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=too-many").items
        for pod in pods:
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return str(cond.message)
        return None

    message = wait_for(unschedulable, "the scheduler to report Unschedulable", 60)
    assert "nvidia.com/gpu" in message
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=too-many").items
    assert pod.status.phase == "Pending"


def test_kwok_finishes_annotated_pods_with_exit_code_and_message(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str
):
    batch = client.BatchV1Api(api)
    annotations = {EXIT_CODE_ANNOTATION: "3", MESSAGE_ANNOTATION: '{"error": "bad config"}'}
    batch.create_namespaced_job(namespace, _gpu_job("fails", 1, annotations))
    wait_for(lambda: _job_condition(batch, namespace, "fails", "Failed"), "Job fails to fail", 60)
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=fails").items
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.message == '{"error": "bad config"}'


def test_tests_decide_pod_fate_through_the_status_subresource(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str
):
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, _gpu_job("decided", 1))
    batch.create_namespaced_job(namespace, _gpu_job("evicted", 1))

    def running(job: str) -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return pods[0].metadata.name if pods and pods[0].status.phase == "Running" else None

    decided = wait_for(lambda: running("decided"), "pod of decided to run", 60)
    evicted = wait_for(lambda: running("evicted"), "pod of evicted to run", 60)
    finish_pod(core, namespace, decided, exit_code=0, message='{"metrics": {"accuracy": 0.97}}')
    evict_pod(core, namespace, evicted)
    wait_for(lambda: _job_condition(batch, namespace, "decided", "Complete"), "Job decided to complete", 60)
    wait_for(lambda: _job_condition(batch, namespace, "evicted", "Failed"), "Job evicted to fail", 60)
    pod = core.read_namespaced_pod(decided, namespace)
    assert pod.status.container_statuses[0].state.terminated.message == '{"metrics": {"accuracy": 0.97}}'
    assert core.read_namespaced_pod(evicted, namespace).status.reason == "Evicted"


def test_rbac_denies_a_service_account_without_rights(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
):
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token
    context = ssl.create_default_context(cafile=str(control_plane.ca_cert))
    request = urllib.request.Request(
        f"{control_plane.url}/apis/mlops.dev/v1alpha1/namespaces/{namespace}/trainingruns",
        headers={"Authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert info.value.code == 403
    # The same request with the admin's client certificate is allowed: the 403 is RBAC, not a broken URL.
    context.load_cert_chain(str(control_plane.admin_cert.cert), str(control_plane.admin_cert.key))

    def admin_status() -> int | None:
        try:
            with urllib.request.urlopen(request.full_url, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            # 429 "storage is (re)initializing" until the CRD's watch cache is ready: retry, as clients do.
            return None if error.code == 429 else error.code

    assert wait_for(admin_status, "the admin's request to be answered", 30) == 200


def test_deleting_an_owner_garbage_collects_its_job(
    api: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
):
    from tests.samples import load, valid_samples

    dataset = custom.create_namespaced_custom_object(
        "mlops.dev", "v1alpha1", namespace, "datasets", load(valid_samples()[0])
    )
    job = _gpu_job("owned", 1)
    job["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "Dataset",
            "name": dataset["metadata"]["name"],
            "uid": dataset["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job)
    custom.delete_namespaced_custom_object("mlops.dev", "v1alpha1", namespace, "datasets", "digits")

    def gone() -> bool:
        return not any(j.metadata.name == "owned" for j in batch.list_namespaced_job(namespace).items)

    wait_for(gone, "the garbage collector to delete the owned Job", 60)


def test_missing_binaries_give_a_clear_error(tmp_path):
    with pytest.raises(ControlPlaneError, match=r"missing etcd, kube-apiserver.*run hack/build-tools.sh"):
        find_binaries(tmp_path)


def test_stop_leaves_no_process_and_no_directory():
    plane = ControlPlane(node_pools=())
    plane.start()
    pids = [c.process.pid for c in plane.components if c.process]
    workdir = plane.workdir
    assert len(pids) == 5
    plane.stop()
    assert not workdir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
