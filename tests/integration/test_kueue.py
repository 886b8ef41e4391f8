"""The real Kueue (v0.17.0) of the local control plane: queueing Jobs for GPUs.

No operator here: the tests write Jobs with Kueue's labels themselves, as the TrainingRun and
ModelVersion controllers will, and prove the infrastructure they rely on, against the real
kube-scheduler placing pods on simulated (kwok) nodes:
- Kueue's Job webhook suspends a Job that names a LocalQueue; Kueue admits it when its ClusterQueue
  has quota (unsuspends it, injects the ResourceFlavor's nodeSelector and tolerations), and keeps a
  second one that does not fit suspended, its Workload QuotaReserved=False with Kueue's reason, until
  the first one is gone;
- an Indexed Job of 2 x 8 GPUs is admitted as one unit or not at all;
- a Job of a higher WorkloadPriorityClass preempts a running lower one, which goes back to suspended.

Every Workload/Job condition the tests see is printed (run with -s to read them); with
KUEUE_RECORD_DIR set, the whole Workloads and Jobs are written there too (tests/data/kueue holds such a
capture, for tests of code that reads them).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev import kueue
from mlops_operator.dev.controlplane import ControlPlane, GpuNodePool, gpu_node_manifest
from tests.waiting import wait_for

H100 = "NVIDIA-H100-80GB-HBM3"  # the session's gpu-node-* (2 x 8 GPUs)
A100 = "NVIDIA-A100-SXM4-40GB"
WORKLOADS = ("kueue.x-k8s.io", "v1beta2", "workloads")


@dataclass
class Queues:
    namespace: str
    local_queue: str
    cluster_queue: str
    h100: str  # ResourceFlavor names
    a100: str
    a100_node: str
    low: str  # WorkloadPriorityClass names
    high: str


@pytest.fixture
def queues(control_plane: ControlPlane, namespace: str) -> Iterator[Queues]:
    """A ResourceFlavor per GPU product (H100: the session's nodes; A100: one 4-GPU node made here), a
    ClusterQueue with 8 H100 and 4 A100 GPUs (LowerPriority preemption within it), a LocalQueue in the
    test's namespace, two WorkloadPriorityClasses. All deleted afterwards."""
    if not control_plane.kueue:
        pytest.skip("the session control plane runs without Kueue (hack/build-tools.sh builds it)")
    suffix = uuid.uuid4().hex[:6]
    pool = GpuNodePool(count=1, gpus_per_node=4, gpu_product=A100, name_prefix=f"a100-{suffix}")
    q = Queues(
        namespace=namespace,
        local_queue="team",
        cluster_queue=f"cq-{suffix}",
        h100=f"h100-{suffix}",
        a100=f"a100-{suffix}",
        a100_node=f"a100-{suffix}-0",
        low=f"low-{suffix}",
        high=f"high-{suffix}",
    )
    objects = [
        kueue.resource_flavor(q.h100, H100),
        kueue.resource_flavor(q.a100, A100),
        kueue.cluster_queue(
            q.cluster_queue,
            [
                kueue.FlavorQuota(q.h100, cpu="64", memory="512Gi", gpus=8),
                kueue.FlavorQuota(q.a100, cpu="32", memory="256Gi", gpus=4),
            ],
        ),
        kueue.local_queue(namespace, q.local_queue, q.cluster_queue),
        kueue.workload_priority_class(q.low, 100),
        kueue.workload_priority_class(q.high, 1000),
    ]
    control_plane.kubectl_apply([gpu_node_manifest(pool, 0)])
    control_plane.kubectl_apply(objects)
    try:
        control_plane.kubectl("wait", "node", q.a100_node, "--for=condition=Ready", "--timeout=30s")
        # The LocalQueue is Active once its ClusterQueue is (its flavors exist); only then are Jobs
        # queued rather than refused as "LocalQueue ... doesn't exist"/inactive.
        control_plane.kubectl(
            "wait", "localqueue", q.local_queue, "-n", namespace, "--for=condition=Active", "--timeout=30s"
        )
        yield q
    finally:
        control_plane.kubectl("delete", "jobs", "--all", "-n", namespace, "--wait=false", check=False)
        control_plane.kubectl(
            "delete", "localqueue", q.local_queue, "-n", namespace, "--wait=false", check=False
        )
        control_plane.kubectl("delete", "clusterqueue", q.cluster_queue, "--wait=false", check=False)
        control_plane.kubectl("delete", "resourceflavor", q.h100, q.a100, "--wait=false", check=False)
        control_plane.kubectl("delete", "workloadpriorityclass", q.low, q.high, "--wait=false", check=False)
        control_plane.kubectl("delete", "node", q.a100_node, "--wait=false", check=False)


def gpu_job(
    name: str,
    gpus: int,
    labels: dict[str, str],
    *,
    parallelism: int = 1,
) -> dict[str, Any]:
    """A Job asking `gpus` GPUs per pod, created unsuspended, with neither a nodeSelector nor the kwok
    toleration: both can only come from the ResourceFlavor Kueue admits it on. Its pods run until
    deleted (no sim.mlops.dev/exit-code annotation)."""
    spec: dict[str, Any] = {
        "suspend": False,
        "backoffLimit": 0,
        "parallelism": parallelism,
        "completions": parallelism,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "train",
                        "image": "trainer:test",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }
                ],
            }
        },
    }
    if parallelism > 1:
        spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def create_job(batch: client.BatchV1Api, namespace: str, body: dict[str, Any]) -> client.V1Job:
    """Create the Job; Kueue's mutating webhook must have suspended it in the very create call."""
    created = batch.create_namespaced_job(namespace, body)
    assert body["spec"]["suspend"] is False
    assert created.spec.suspend is True, "Kueue's Job webhook did not suspend a Job that names a LocalQueue"
    return created


def workload_of(custom: client.CustomObjectsApi, namespace: str, job: client.V1Job) -> dict[str, Any] | None:
    """The Workload Kueue made for `job` (its controller owner), if any yet."""
    items = custom.list_namespaced_custom_object(*WORKLOADS[:2], namespace, WORKLOADS[2])["items"]
    for item in items:
        if any(ref["uid"] == job.metadata.uid for ref in item["metadata"].get("ownerReferences") or []):
            return dict(item)
    return None


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def wait_workload(
    custom: client.CustomObjectsApi,
    namespace: str,
    job: client.V1Job,
    type_: str,
    status: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        workload = workload_of(custom, namespace, job)
        found = condition(workload, type_) if workload else None
        return workload if found and found["status"] == status else None

    return wait_for(probe, f"{job.metadata.name}'s Workload {type_}={status}", timeout)


def record(what: str, obj: Any) -> None:
    """Print what Kueue wrote, verbatim (run pytest with -s)."""
    print(f"\n=== {what}\n{json.dumps(obj, indent=1, sort_keys=True, default=str)}", flush=True)


def capture(name: str, obj: Any) -> None:
    """The whole object, as the apiserver returned it, into $KUEUE_RECORD_DIR/<name>.json (if set)."""
    directory = os.environ.get("KUEUE_RECORD_DIR")
    if directory:
        document = client.ApiClient().sanitize_for_serialization(obj)
        document["metadata"].pop("managedFields", None)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            json.dump(document, out, indent=1, sort_keys=True)
            out.write("\n")


def workload_record(workload: dict[str, Any]) -> dict[str, Any]:
    meta = workload["metadata"]
    status = workload.get("status") or {}
    return {
        "name": meta["name"],
        "labels": meta.get("labels"),
        "ownerReferences": meta.get("ownerReferences"),
        "spec.queueName": workload["spec"].get("queueName"),
        "spec.priorityClassRef": workload["spec"].get("priorityClassRef"),
        "spec.priority": workload["spec"].get("priority"),
        "spec.podSets": [{"name": p["name"], "count": p["count"]} for p in workload["spec"]["podSets"]],
        "status.conditions": status.get("conditions"),
        "status.admission": status.get("admission"),
        "status.requeueState": status.get("requeueState"),
        "status.schedulingStats": status.get("schedulingStats"),
    }


def job_record(batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    job = batch.read_namespaced_job(name, namespace)
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {
        "spec.suspend": job.spec.suspend,
        "status.conditions": [
            {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in job.status.conditions or []
        ],
        "status.active": job.status.active,
        "events": sorted(
            {f"{e.type} {e.reason} ({e.source.component if e.source else ''}): {e.message}" for e in events}
        ),
    }


def running_pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def stays(probe: Any, seconds: float) -> None:
    """`probe` holds (returns truthy) on every look for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), "a condition that had to hold for a while stopped holding"
        time.sleep(0.5)


def test_a_job_that_does_not_fit_waits_suspended_in_its_cluster_queue_then_runs(
    queues: Queues, api: client.ApiClient, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    batch = client.BatchV1Api(api)
    ns = queues.namespace
    labels = kueue.queue_labels(queues.local_queue)
    first = create_job(batch, ns, gpu_job("first", 8, labels))

    admitted = wait_workload(custom, ns, first, "Admitted", "True")
    record("first: admitted Workload", workload_record(admitted))
    capture("workload-admitted", admitted)
    assert condition(admitted, "QuotaReserved")["status"] == "True"  # type: ignore[index]
    assert admitted["metadata"]["labels"][kueue.JOB_UID_LABEL] == first.metadata.uid
    (owner,) = admitted["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Job", "first", True)
    assert admitted["spec"]["queueName"] == queues.local_queue
    (pod_set,) = admitted["status"]["admission"]["podSetAssignments"]
    assert pod_set["flavors"]["nvidia.com/gpu"] == queues.h100
    assert admitted["status"]["admission"]["clusterQueue"] == queues.cluster_queue

    job = wait_for(
        lambda: (j := batch.read_namespaced_job("first", ns)).spec.suspend is False and j, "unsuspended"
    )
    assert job.spec.template.spec.node_selector == {"nvidia.com/gpu.product": H100}
    assert any(t.key == "kwok.x-k8s.io/node" for t in job.spec.template.spec.tolerations or [])
    (pod,) = wait_for(lambda: running_pods(core, ns, "first"), "first's pod to run", 60)
    assert pod.spec.node_name.startswith("gpu-node-")  # placed by kube-scheduler on an H100 node
    record("first: Job once admitted", job_record(batch, core, ns, "first"))
    capture("job-admitted", batch.read_namespaced_job("first", ns))

    second = create_job(batch, ns, gpu_job("second", 8, labels))
    pending = wait_workload(custom, ns, second, "QuotaReserved", "False")
    record("second: pending Workload", workload_record(pending))
    capture("workload-pending", pending)
    reserved = condition(pending, "QuotaReserved")
    assert reserved is not None
    assert reserved["reason"] == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu" in reserved["message"]
    stays(lambda: batch.read_namespaced_job("second", ns).spec.suspend is True, 5)
    assert not core.list_namespaced_pod(ns, label_selector="job-name=second").items
    record("second: Job while pending", job_record(batch, core, ns, "second"))
    capture("job-pending", batch.read_namespaced_job("second", ns))
    lq = custom.get_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", ns, "localqueues", queues.local_queue
    )
    record("LocalQueue status while second pends", lq.get("status"))

    # A Job that fits the other product's flavor is admitted past it (BestEffortFIFO) onto the A100 node.
    third = create_job(batch, ns, gpu_job("third", 4, labels))
    on_a100 = wait_workload(custom, ns, third, "Admitted", "True")
    assert on_a100["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] == queues.a100
    (pod,) = wait_for(lambda: running_pods(core, ns, "third"), "third's pod to run", 60)
    assert pod.spec.node_name == queues.a100_node

    # The first one goes: the second is admitted and runs, as the same Job (no re-creation).
    batch.delete_namespaced_job("first", ns, propagation_policy="Background")
    admitted_later = wait_workload(custom, ns, second, "Admitted", "True", timeout=90)
    record("second: Workload admitted after first was deleted", workload_record(admitted_later))
    assert batch.read_namespaced_job("second", ns).metadata.uid == second.metadata.uid
    (pod,) = wait_for(lambda: running_pods(core, ns, "second"), "second's pod to run", 60)
    assert pod.spec.node_name.startswith("gpu-node-")
    record("second: Job once admitted", job_record(batch, core, ns, "second"))


def test_an_indexed_job_is_admitted_whole_or_not_at_all(
    queues: Queues,
    control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    batch = client.BatchV1Api(api)
    ns = queues.namespace
    job = create_job(
        batch, ns, gpu_job("distributed", 8, kueue.queue_labels(queues.local_queue), parallelism=2)
    )
    pending = wait_workload(custom, ns, job, "QuotaReserved", "False")
    record("distributed (2 x 8 GPUs, quota 8): pending Workload", workload_record(pending))
    capture("workload-indexed-pending", pending)
    (pod_set,) = pending["spec"]["podSets"]
    assert pod_set["count"] == 2
    assert "nvidia.com/gpu" in condition(pending, "QuotaReserved")["message"]  # type: ignore[index]
    # Never partially: no pod at all while 8 of the 16 GPUs would fit.
    stays(lambda: not core.list_namespaced_pod(ns, label_selector="job-name=distributed").items, 8)
    assert batch.read_namespaced_job("distributed", ns).spec.suspend is True
    record("distributed: Job while pending", job_record(batch, core, ns, "distributed"))

    # Room for both pods: admitted as one unit, both pods run at once (one per H100 node).
    control_plane.kubectl(
        "patch", "clusterqueue", queues.cluster_queue, "--type=json", "-p",
        json.dumps([{"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/2/nominalQuota",
                     "value": "16"}]),
    )  # fmt: skip
    admitted = wait_workload(custom, ns, job, "Admitted", "True")
    assert admitted["status"]["admission"]["podSetAssignments"][0]["count"] == 2

    def both_running() -> list[client.V1Pod] | None:
        pods = running_pods(core, ns, "distributed")
        return pods if len(pods) == 2 else None

    pods = wait_for(both_running, "both of distributed's pods to run", 60)
    assert {p.spec.node_name for p in pods} == {"gpu-node-0", "gpu-node-1"}


def test_a_higher_priority_job_preempts_a_running_lower_one(
    queues: Queues, api: client.ApiClient, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    batch = client.BatchV1Api(api)
    ns = queues.namespace
    low = create_job(batch, ns, gpu_job("low", 8, kueue.queue_labels(queues.local_queue, queues.low)))
    low_admitted = wait_workload(custom, ns, low, "Admitted", "True")
    assert low_admitted["spec"]["priority"] == 100
    wait_for(lambda: running_pods(core, ns, "low"), "low's pod to run", 60)

    high = create_job(batch, ns, gpu_job("high", 8, kueue.queue_labels(queues.local_queue, queues.high)))
    evicted = wait_workload(custom, ns, low, "Evicted", "True")
    record("low: Workload just evicted", workload_record(evicted))
    eviction = condition(evicted, "Evicted")
    assert eviction is not None
    assert eviction["reason"] == "Preempted"
    preempted = wait_workload(custom, ns, low, "Preempted", "True")
    assert condition(preempted, "Preempted")["reason"] == "InClusterQueue"  # type: ignore[index]

    wait_workload(custom, ns, high, "Admitted", "True")
    wait_for(lambda: batch.read_namespaced_job("low", ns).spec.suspend is True, "low to be suspended again")
    wait_for(lambda: running_pods(core, ns, "high"), "high's pod to run", 60)
    wait_for(lambda: not running_pods(core, ns, "low"), "low's pod to go", 60)
    requeued = wait_workload(custom, ns, low, "QuotaReserved", "False")
    record("low: Workload pending again after preemption", workload_record(requeued))
    capture("workload-preempted", requeued)
    suspended = batch.read_namespaced_job("low", ns)
    assert suspended.metadata.uid == low.metadata.uid  # the same Job, suspended, not re-created
    # Kueue took back what admission injected: the flavor's nodeSelector and tolerations.
    assert not suspended.spec.template.spec.node_selector
    assert not suspended.spec.template.spec.tolerations
    record("low: Job after preemption", job_record(batch, core, ns, "low"))
    capture("job-preempted", suspended)
    record("high: Job admitted", job_record(batch, core, ns, "high"))


def test_jobs_are_refused_while_kueue_is_down_and_queued_again_once_it_is_back(
    queues: Queues,
    control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    """Upstream's Job webhook has failurePolicy Fail: with Kueue's manager down, every Job create is
    refused (as in a cluster whose Kueue pod is gone); restarted, it queues and admits again."""
    batch = client.BatchV1Api(api)
    ns = queues.namespace
    control_plane.stop_kueue()
    try:
        with pytest.raises(client.ApiException) as refused:
            batch.create_namespaced_job(ns, gpu_job("while-down", 1, kueue.queue_labels(queues.local_queue)))
        record("Job create while Kueue is down", {"status": refused.value.status, "body": refused.value.body})
        assert 'failed calling webhook \\"mjob.kb.io\\"' in refused.value.body
    finally:
        seconds = control_plane.start_kueue()
    print(f"Kueue answered /readyz again {seconds:.1f}s after its start")
    job = create_job(batch, ns, gpu_job("after", 1, kueue.queue_labels(queues.local_queue)))
    wait_workload(custom, ns, job, "Admitted", "True")
    wait_for(lambda: running_pods(core, ns, "after"), "after's pod to run", 60)
