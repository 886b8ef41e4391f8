"""The reconcile engine against the real apiserver: what it costs, what it refuses to do, and how
every unexpected outcome ends as a condition.

Each test names the failure of the old engine it guards against (issue 8).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane
from mlops_operator.dev.pods import evict_pod, finish_pod
from tests.integration.conftest import OperatorProcess, operator_requests, start_operator
from tests.integration.test_trainingrun import (
    SUCCESS,
    G,
    V,
    _get,
    _ready,
    _run,
    _running_pods,
    _start,
    _summary,
    _wait_phase,
)
from tests.waiting import wait_for

TERMINATE_FOR = "sim.mlops.dev/terminate-for"  # kwok removes a deleted pod only after this long


def _slow_to_terminate(core: client.CoreV1Api, namespace: str, pod: str, seconds: int) -> None:
    """The pod takes `seconds` to go once deleted: a trainer checkpointing in its grace period."""
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {TERMINATE_FOR: f"{seconds}s"}}})


def _jobs(core: client.CoreV1Api, namespace: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(core.api_client).list_namespaced_job(namespace).items)


def test_restart_of_a_settled_operator_lists_once_per_kind_and_writes_nothing(
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path,
):
    """Old engine: a restart re-listed every Dataset in S3 and each object cost a GET per tick."""
    first = start_operator(control_plane, namespace, tmp_path / "first.log")
    try:
        pod = _start(custom, core, namespace, _run("settled", dataset))
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        _wait_phase(custom, namespace, "settled", "Succeeded")
        time.sleep(2)
    finally:
        first.stop()
    since = datetime.now(UTC)
    second = start_operator(control_plane, namespace, tmp_path / "second.log")
    try:
        time.sleep(15)
    finally:
        second.stop()
    requests = [
        (r["verb"], r["objectRef"].get("resource"))
        for r in operator_requests(control_plane, namespace, since)
    ]
    writes = [r for r in requests if r[0] not in ("get", "list", "watch")]
    assert writes == []
    assert [r for r in requests if r[0] == "get"] == []
    lists = sorted(r[1] for r in requests if r[0] == "list")
    # Our six kinds, and the children's informers: Jobs, Pods, Deployments, Services, autoscalers,
    # Secrets (metadata only), and Rollouts and AnalysisTemplates (the session's control plane runs
    # Argo Rollouts, so its CRD is found), and Kueue's Workloads where the session runs Kueue. The
    # CRDs themselves are cluster-scoped: not in this namespace.
    kueue = ["workloads"] if control_plane.kueue else []
    assert lists == sorted(
        [
            *kueue,
            "datasets",
            "trainingruns",
            "modelversions",
            "inferencedeployments",
            "driftmonitors",
            "modelpipelines",
            "jobs",
            "pods",
            "deployments",
            "services",
            "horizontalpodautoscalers",
            "secrets",
            "rollouts",
            "analysistemplates",
        ]
    )


def test_children_are_watched_by_label_on_the_server_and_matched_by_owner_uid(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: every pod of the namespace reached the operator; a copied label made a pod count."""
    pod = _start(custom, core, namespace, _run("mine", dataset))
    # A user's pod with the run's labels copied, not owned by its Job: it must change nothing.
    labels = (
        client.BatchV1Api(core.api_client)
        .read_namespaced_job("mine-a1", namespace)
        .spec.template.metadata.labels
    )
    impostor = client.V1Pod(
        # Our labels only: the Job controller adopts a pod that carries its selector labels.
        metadata=client.V1ObjectMeta(
            name="impostor",
            labels={k: v for k, v in labels.items() if "job" not in k and "controller-uid" not in k},
        ),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="trainer", image="busybox")],
            tolerations=[client.V1Toleration(**KWOK_TOLERATION)],
        ),
    )
    core.create_namespaced_pod(namespace, impostor)
    wait_for(
        lambda: core.read_namespaced_pod("impostor", namespace).status.phase == "Running", "the impostor", 30
    )
    finish_pod(core, namespace, "impostor", exit_code=78, message="not a trainer")
    time.sleep(3)
    obj = _get(custom, namespace, "mine")
    assert obj["status"]["phase"] == "Running"
    assert "failures" not in obj["status"]
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    assert _wait_phase(custom, namespace, "mine", "Succeeded")["status"]["attempt"] == 1
    # The watches the operator holds on pods and Jobs carry the label selector: the apiserver filters.
    watches = [
        r["requestURI"]
        for r in operator_requests(control_plane, namespace)
        if r["verb"] in ("list", "watch") and r["objectRef"].get("resource") in ("pods", "jobs")
    ]
    assert watches
    selectors = {parse_qs(urlsplit(uri).query).get("labelSelector", [""])[0] for uri in watches}
    assert selectors == {"app.kubernetes.io/managed-by=mlops-operator"}, watches


def _attempt_overlap_probe(core: client.CoreV1Api, namespace: str, old_job: str, new_job: str) -> bool:
    """True once `new_job` exists; fails if it exists while a pod of `old_job` still does."""
    jobs = {j.metadata.name for j in _jobs(core, namespace)}
    if new_job not in jobs:
        return False
    old_pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={old_job}").items
    assert old_pods == [], f"{new_job} started while a pod of {old_job} was still terminating"
    return True


def test_a_retry_waits_until_the_failed_attempts_pods_are_gone(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: attempt 2 started while attempt 1's pods were still terminating (backoff 0 < grace)."""
    # Two workers: one is evicted, the other is still running and takes 8 s to checkpoint and go once
    # the failed Job's pods are deleted (a failed pod itself is removed at once, having no grace).
    run = _run(
        "overlap", dataset, distributed={"nodes": 2, "procsPerNode": 1}, resources={"gpusPerWorker": 1}
    )
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    _wait_phase(custom, namespace, "overlap", "Running")
    evicted, survivor = sorted(_running_pods(core, namespace, "overlap-a1", count=2))
    _slow_to_terminate(core, namespace, survivor, 8)
    evict_pod(core, namespace, evicted)

    def waiting() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "overlap")
        return obj if _ready(obj).get("reason") == "WaitingForPreviousAttempt" else None

    obj = wait_for(waiting, "the run to wait for attempt 1's pod", 30)
    assert obj["status"]["attempt"] == 2
    assert core.read_namespaced_pod(survivor, namespace).metadata.deletion_timestamp is not None
    wait_for(
        lambda: _attempt_overlap_probe(core, namespace, "overlap-a1", "overlap-a2"), "attempt 2", 40, 0.1
    )
    for pod in _running_pods(core, namespace, "overlap-a2", count=2):
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "overlap", "Succeeded")
    assert [j.metadata.name for j in _jobs(core, namespace)] == ["overlap-a2"]


def test_resume_waits_until_the_suspended_attempts_pods_are_gone(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("nap", dataset))
    _slow_to_terminate(core, namespace, pod, 10)
    first_uid = client.BatchV1Api(core.api_client).read_namespaced_job("nap-a1", namespace).metadata.uid
    patch = {"spec": {"suspend": True}}
    custom.patch_namespaced_custom_object(G, V, namespace, "trainingruns", "nap", patch)
    _wait_phase(custom, namespace, "nap", "Suspended")
    patch = {"spec": {"suspend": False}}
    custom.patch_namespaced_custom_object(G, V, namespace, "trainingruns", "nap", patch)
    wait_for(
        lambda: _ready(_get(custom, namespace, "nap")).get("reason") == "WaitingForPreviousAttempt",
        "the resume to wait for the checkpointing pod",
        30,
    )
    assert [j.metadata.uid for j in _jobs(core, namespace)] == [first_uid]

    def recreated() -> bool:
        jobs = _jobs(core, namespace)
        if not jobs or jobs[0].metadata.uid == first_uid:
            return False
        pods = core.list_namespaced_pod(namespace).items
        assert all(p.metadata.name != pod for p in pods), "the new Job started beside the old pod"
        return True

    wait_for(recreated, "the Job to be recreated once the old pod is gone", 40, 0.1)
    _wait_phase(custom, namespace, "nap", "Running")


def test_retries_and_resumes_are_built_from_the_pinned_spec(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: attempt 2 was built from the edited spec although SpecAccepted=False promised not."""
    pod = _start(custom, core, namespace, _run("pinned", dataset, image="trainer:v1"))
    custom.patch_namespaced_custom_object(
        G,
        V,
        namespace,
        "trainingruns",
        "pinned",
        {"spec": {"image": "trainer:v2", "hyperparameters": {"epochs": 99}}},
    )
    wait_for(
        lambda: any(
            c["type"] == "SpecAccepted" and c["status"] == "False"
            for c in _get(custom, namespace, "pinned")["status"]["conditions"]
        ),
        "SpecAccepted=False",
        30,
    )
    evict_pod(core, namespace, pod)
    (second,) = _running_pods(core, namespace, "pinned-a2")
    container = (
        client.BatchV1Api(core.api_client)
        .read_namespaced_job("pinned-a2", namespace)
        .spec.template.spec.containers[0]
    )
    env = {e.name: e.value for e in container.env}
    assert container.image == "trainer:v1"
    assert json.loads(env["MLOPS_HYPERPARAMETERS"]) == {"epochs": 1}
    finish_pod(core, namespace, second, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "pinned", "Succeeded")


def test_pods_that_cannot_be_created_surface_and_fail_the_attempt_at_the_start_deadline(
    control_plane: ControlPlane,
    dataset: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path,
):
    """Old engine: a missing ServiceAccount left the run Starting forever with no reason."""
    running = start_operator(
        control_plane, namespace, tmp_path / "op.log", {"MLOPS_START_DEADLINE_SECONDS": "25"}
    )
    try:
        run = _run("nosa", dataset, serviceAccountName="missing-sa", retry={"maxAttempts": 1})
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)

        def failed_create() -> dict[str, Any] | None:
            obj = _get(custom, namespace, "nosa")
            return obj if _ready(obj).get("reason") == "FailedCreate" else None

        obj = wait_for(failed_create, "the FailedCreate reason", 40)
        assert obj["status"]["phase"] == "Starting"
        assert "missing-sa" in _ready(obj)["message"]
        failed = _wait_phase(custom, namespace, "nosa", "Failed", timeout=60)
        (failure,) = failed["status"]["failures"]
        assert failure["reason"] == "StartDeadlineExceeded"
        assert failure["retryable"] is True  # a ServiceAccount can be created without a new spec
        assert "FailedCreate" in failure["message"]
        # A Job whose pods never ran is removed with the failed run; nothing is left stuck behind.
        wait_for(lambda: not _jobs(client.CoreV1Api(custom.api_client), namespace), "the stuck Job gone", 30)
    finally:
        running.stop()


def test_a_child_the_apiserver_refuses_is_a_condition_and_recovers(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: a refused Job was a traceback every tick and a stale condition."""
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-jobs"),
        spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"}),
    )
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-jobs", namespace).status.hard,
        "the quota to be counted",
        30,
    )
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("refused", dataset))

    def refused() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "refused")
        return obj if _ready(obj).get("reason") == "Forbidden" else None

    obj = wait_for(refused, "Ready=False/Forbidden", 30)
    assert "exceeded quota" in _ready(obj)["message"]
    wait_for(
        lambda: any(
            e.reason == "Forbidden" and e.type == "Warning"
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=refused").items
        ),
        "a Warning event",
        10,
    )
    core.delete_namespaced_resource_quota("no-jobs", namespace)
    _wait_phase(custom, namespace, "refused", "Running", timeout=60)  # retried with backoff, by itself


def test_a_nan_metric_and_an_overlong_reason_never_wedge_a_run(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: a NaN metric or a 2,000-character reason made every status write fail."""
    pod = _start(custom, core, namespace, _run("nan", dataset))
    finish_pod(
        core, namespace, pod, exit_code=0, message=_summary(metrics={"accuracy": 0.9, "loss": float("nan")})
    )
    done = _wait_phase(custom, namespace, "nan", "Succeeded")
    assert done["status"]["metrics"] == {"accuracy": 0.9}
    assert "loss" in _ready(done)["message"]

    pod = _start(custom, core, namespace, _run("wordy", dataset))
    reason = "CUDA error: an illegal memory access was encountered " * 40
    summary = _summary(status="Failed", exitCode=70, reason=reason, message="boom")
    finish_pod(core, namespace, pod, exit_code=70, message=summary)
    failed = _wait_phase(custom, namespace, "wordy", "Failed")
    ready = _ready(failed)
    assert ready["reason"].startswith("CUDAErrorAnIllegalMemoryAccess")
    assert len(ready["reason"]) <= 128
    assert len(failed["status"]["failures"][0]["reason"]) <= 128


def test_names_the_crd_accepts_always_make_valid_children(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Old engine: dots or a leading digit broke the rendezvous Service; long names broke the TTL."""
    dotted = "7th.run.v2"
    run = _run(dotted, dataset, distributed={"nodes": 2, "procsPerNode": 1}, resources={"gpusPerWorker": 1})
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    obj = _wait_phase(custom, namespace, dotted, "Running")
    job = obj["status"]["jobName"]
    pods = _running_pods(core, namespace, job, count=2)
    hostnames = sorted(core.read_namespaced_pod(p, namespace).spec.hostname for p in pods)
    assert hostnames == [f"{job}-0", f"{job}-1"]

    long_name = "a" * 120 + ".b" * 60
    pod = _start_named(custom, core, namespace, _run(long_name, dataset, ttlSecondsAfterFinished=0))
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, long_name, "Succeeded")
    wait_for(
        lambda: any(
            c["type"] == "ChildrenDeleted" for c in _get(custom, namespace, long_name)["status"]["conditions"]
        ),
        "the TTL to fire for a 240-character name",
        30,
    )
    wait_for(
        lambda: all(j.metadata.name.startswith("7th") for j in _jobs(core, namespace)), "its Job gone", 30
    )


def _start_named(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, run: dict[str, Any]
) -> str:
    name = run["metadata"]["name"]
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    obj = _wait_phase(custom, namespace, name, "Running")
    (pod,) = _running_pods(core, namespace, obj["status"]["jobName"])
    return pod
