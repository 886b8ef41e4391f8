"""TrainingRun controller end to end: real apiserver, kwok GPU nodes, moto S3, the operator process.

Pod fates are decided the way a kubelet would report them (mlops_operator.dev.pods), with the
trainer's JSON summary as the termination message.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import OPERATOR_SA_USER, ControlPlane
from mlops_operator.dev.pods import evict_pod, finish_pod
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import (
    OperatorProcess,
    _dataset_body,
    create_s3_secret,
    operator_requests,
    start_operator,
)
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"
SCHEMA = "mlops.dev/trainer-result/v1"


def _run(name: str, bucket: str = "ml-bucket", **spec: Any) -> dict[str, Any]:
    base = {
        "datasetRef": {"name": "digits"},
        "model": "digits-cnn",
        "hyperparameters": {"epochs": 1},
        "resources": {"gpusPerWorker": 2},
        "checkpoint": {"uri": f"s3://{bucket}/ckpt/{name}/", "intervalSteps": 10},
        "output": {"uri": f"s3://{bucket}/models/{name}/"},
        "retry": {"maxAttempts": 3, "backoffSeconds": 0},
    }
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def _get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", name)  # type: ignore[no-any-return]


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def _wait_phase(
    custom: client.CustomObjectsApi, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(custom, namespace, name)
        return obj if obj.get("status", {}).get("phase") == phase else None

    try:
        return wait_for(probe, f"TrainingRun {name} to reach {phase}", timeout)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nstatus: {json.dumps(_get(custom, namespace, name).get('status'), indent=1)}"
        ) from None


def _running_pods(core: client.CoreV1Api, namespace: str, job: str, count: int = 1) -> list[str]:
    def probe() -> list[str] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        names = [
            p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]
        return names if len(names) >= count else None

    return wait_for(probe, f"{count} running pod(s) of Job {job}", 60)


def _start(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, run: dict[str, Any]
) -> str:
    """Create the run, wait until it is Running, return the name of its (first attempt's) pod."""
    name = run["metadata"]["name"]
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    _wait_phase(custom, namespace, name, "Running")
    (pod,) = _running_pods(core, namespace, f"{name}-a1")
    return pod


def _summary(**fields: Any) -> str:
    base = {
        "schema": SCHEMA,
        "command": "train",
        "status": "Succeeded",
        "retryable": False,
        "exitCode": 0,
        "reason": "Succeeded",
        "message": "",
    }
    return json.dumps({**base, **fields})


SUCCESS = _summary(
    metrics={"accuracy": 0.971, "loss": 0.12},
    artifacts={"onnx": "s3://b/models/r/model.onnx", "model": "s3://b/models/r/model.pt"},
    checkpoint={"uri": "s3://b/ckpt/r/step-00000040.pt", "step": 40},
    wandb={"path": "team/digits/abc123", "runId": "abc123"},
    steps=40,
)


def test_run_waits_for_its_dataset_then_runs_and_succeeds(
    operator: OperatorProcess,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("r1"))
    waiting = _wait_phase(custom, namespace, "r1", "WaitingForDataset")
    assert _ready(waiting)["reason"] == "DatasetNotFound"

    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="digits/a.npz", Body=b"1234")
    create_s3_secret(core, namespace)
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", _dataset_body(s3, bucket))
    started = time.monotonic()
    running = _wait_phase(custom, namespace, "r1", "Running")
    dataset = custom.get_namespaced_custom_object(G, V, namespace, "datasets", "digits")
    status = running["status"]
    assert status["attempt"] == 1
    assert status["datasetFingerprint"] == dataset["status"]["fingerprint"]
    assert status["jobName"] == "r1-a1"
    assert status["startTime"]
    job = client.BatchV1Api(core.api_client).read_namespaced_job("r1-a1", namespace)
    assert job.metadata.owner_references[0].name == "r1"
    container = job.spec.template.spec.containers[0]
    env = {e.name: e for e in container.env}
    assert env["MLOPS_DATASET_FINGERPRINT"].value == dataset["status"]["fingerprint"]
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-credentials"
    assert container.resources.limits["nvidia.com/gpu"] == "2"

    (pod,) = _running_pods(core, namespace, "r1-a1")
    assert core.read_namespaced_pod(pod, namespace).spec.node_name.startswith("gpu-node-")
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    done = _wait_phase(custom, namespace, "r1", "Succeeded")["status"]
    assert done["metrics"] == {"accuracy": 0.971, "loss": 0.12}
    assert done["modelURI"] == "s3://ml-bucket/models/r1/"
    assert done["checkpointURI"] == "s3://b/ckpt/r/step-00000040.pt"
    assert done["wandbRun"] == "team/digits/abc123"
    assert done["completionTime"]
    # 2 GPUs for at most the time the test has waited since the Dataset appeared (timestamps are whole
    # seconds, hence the slack).
    assert done["gpuSeconds"] <= 2 * (time.monotonic() - started + 2)
    assert _ready({"status": done})["status"] == "True"

    def reasons() -> set[str] | None:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=r1").items
        seen = {e.reason for e in events}
        return seen if {"DatasetNotFound", "Starting", "Running", "Succeeded"} <= seen else None

    wait_for(reasons, "an event per phase change", 10)
    metrics = operator.metrics()
    assert "mlops_training_attempts_total" in metrics
    assert 'mlops_objects{kind="TrainingRun",phase="Succeeded"} 1.0' in metrics


def test_distributed_run_is_an_indexed_job_with_a_rendezvous_service(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    run = _run("ddp", dataset, distributed={"nodes": 2, "procsPerNode": 2}, resources={"gpusPerWorker": 2})
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    _wait_phase(custom, namespace, "ddp", "Running")
    job = client.BatchV1Api(core.api_client).read_namespaced_job("ddp-a1", namespace)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    container = job.spec.template.spec.containers[0]
    assert container.command[:4] == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=2",
        "--node-rank=$(NODE_RANK)",
    ]
    assert "--master-addr=ddp-a1-0.ddp-rdzv" in container.command
    service = core.read_namespaced_service("ddp-rdzv", namespace)
    assert service.spec.cluster_ip == "None"
    pods = _running_pods(core, namespace, "ddp-a1", count=2)
    hostnames = sorted(core.read_namespaced_pod(p, namespace).spec.hostname for p in pods)
    assert hostnames == ["ddp-a1-0", "ddp-a1-1"]
    assert {core.read_namespaced_pod(p, namespace).spec.subdomain for p in pods} == {"ddp-rdzv"}


def test_retryable_failure_starts_attempt_two_resuming_from_the_checkpoint(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("retry", dataset))
    batch = client.BatchV1Api(core.api_client)
    first = {
        e.name: e.value
        for e in batch.read_namespaced_job("retry-a1", namespace).spec.template.spec.containers[0].env
    }
    evict_pod(core, namespace, pod, "The node was low on resource: memory.")

    def second_attempt_running() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "retry")
        status = obj.get("status", {})
        return obj if status.get("attempt") == 2 and status.get("phase") == "Running" else None

    obj = wait_for(second_attempt_running, "attempt 2 to run", 60)
    status = obj["status"]
    assert status["jobName"] == "retry-a2"
    (failure,) = status["failures"]
    assert (failure["attempt"], failure["reason"], failure["retryable"]) == (1, "Evicted", True)
    env = {
        e.name: e.value
        for e in batch.read_namespaced_job("retry-a2", namespace).spec.template.spec.containers[0].env
    }
    # Attempt 1's Job (and its pods) went before attempt 2 started.
    assert [j.metadata.name for j in batch.list_namespaced_job(namespace).items] == ["retry-a2"]
    # Attempt 2 resumes from the same checkpoint prefix attempt 1 wrote to.
    assert env["MLOPS_CHECKPOINT_URI"] == first["MLOPS_CHECKPOINT_URI"] == f"s3://{dataset}/ckpt/retry/"
    assert env["MLOPS_ATTEMPT"] == "2"
    (pod,) = _running_pods(core, namespace, "retry-a2")
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    done = _wait_phase(custom, namespace, "retry", "Succeeded")
    assert done["status"]["attempt"] == 2
    wait_for(
        lambda: any(
            e.reason == "AttemptFailed" and e.type == "Warning"
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=retry").items
        ),
        "the AttemptFailed Warning event",
        10,
    )


def test_permanent_failure_ends_failed_after_one_attempt(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("bad", dataset))
    message = _summary(
        status="Failed", exitCode=78, reason="InvalidConfig", message="unknown model 'digits-cnn'"
    )
    finish_pod(core, namespace, pod, exit_code=78, message=message)
    failed = _wait_phase(custom, namespace, "bad", "Failed")
    ready = _ready(failed)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidConfig")
    assert "unknown model 'digits-cnn'" in ready["message"]
    assert failed["status"]["attempt"] == 1
    assert failed["status"]["failures"][0]["exitCode"] == 78
    jobs = client.BatchV1Api(core.api_client).list_namespaced_job(
        namespace, label_selector="mlops.dev/trainingrun=bad"
    )
    assert [j.metadata.name for j in jobs.items] == ["bad-a1"]


def test_suspend_deletes_the_workload_and_resume_recreates_it(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("pause", dataset))
    _wait_phase(custom, namespace, "pause", "Running")
    batch = client.BatchV1Api(core.api_client)
    custom.patch_namespaced_custom_object(
        G, V, namespace, "trainingruns", "pause", {"spec": {"suspend": True}}
    )
    suspended = _wait_phase(custom, namespace, "pause", "Suspended")
    assert _ready(suspended)["reason"] == "Suspended"
    wait_for(
        lambda: not batch.list_namespaced_job(namespace, label_selector="mlops.dev/trainingrun=pause").items,
        "the Job to be deleted",
        30,
    )
    custom.patch_namespaced_custom_object(
        G, V, namespace, "trainingruns", "pause", {"spec": {"suspend": False}}
    )
    resumed = _wait_phase(custom, namespace, "pause", "Running")
    assert resumed["status"]["attempt"] == 1  # a suspension is not a failed attempt
    assert batch.read_namespaced_job("pause-a1", namespace).metadata.uid
    # The spec change was allowed (suspend is mutable): SpecAccepted stays True.
    accepted = next(c for c in resumed["status"]["conditions"] if c["type"] == "SpecAccepted")
    assert accepted["status"] == "True"


def test_spec_change_after_start_is_refused_with_a_condition(
    operator: OperatorProcess, dataset: str, custom: client.CustomObjectsApi, namespace: str
):
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("locked", dataset))
    _wait_phase(custom, namespace, "locked", "Running")
    custom.patch_namespaced_custom_object(
        G, V, namespace, "trainingruns", "locked", {"spec": {"hyperparameters": {"epochs": 50}}}
    )

    def refused() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "locked")
        cond = next((c for c in obj["status"]["conditions"] if c["type"] == "SpecAccepted"), {})
        return obj if cond.get("status") == "False" else None

    obj = wait_for(refused, "SpecAccepted=False", 30)
    cond = next(c for c in obj["status"]["conditions"] if c["type"] == "SpecAccepted")
    assert cond["reason"] == "ImmutableAfterStart"
    assert obj["status"]["phase"] == "Running"


def test_ttl_deletes_children_and_keeps_the_run(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("ttl", dataset, ttlSecondsAfterFinished=2))
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "ttl", "Succeeded")
    batch = client.BatchV1Api(core.api_client)
    wait_for(
        lambda: not batch.list_namespaced_job(namespace, label_selector="mlops.dev/trainingrun=ttl").items,
        "the TTL to delete the Job",
        30,
    )
    obj = _get(custom, namespace, "ttl")
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["metrics"]["accuracy"] == 0.971
    cleaned = next(c for c in obj["status"]["conditions"] if c["type"] == "ChildrenDeleted")
    assert cleaned["reason"] == "TTLExpired"


def test_restarted_operator_follows_the_run_without_a_second_job(
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path,
):
    first = start_operator(control_plane, namespace, tmp_path / "first.log")
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("restart", dataset))
        _wait_phase(custom, namespace, "restart", "Running")
    finally:
        first.stop()
    (pod,) = _running_pods(core, namespace, "restart-a1")
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)  # finishes while no operator runs
    second = start_operator(control_plane, namespace, tmp_path / "second.log")
    try:
        _wait_phase(custom, namespace, "restart", "Succeeded")
        jobs = client.BatchV1Api(core.api_client).list_namespaced_job(
            namespace, label_selector="mlops.dev/trainingrun=restart"
        )
        assert [j.metadata.name for j in jobs.items] == ["restart-a1"]
    finally:
        second.stop()


def test_idle_operator_makes_no_requests(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    """Settled objects (a Ready Dataset, a Succeeded run) cost nothing: no write, no GET, no LIST.

    The old engine read every object from the apiserver on every tick."""
    pod = _start(custom, core, namespace, _run("quiet", dataset))
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "quiet", "Succeeded")
    time.sleep(3)  # let the last event posts land
    since = datetime.now(UTC)
    earlier = [
        w
        for w in control_plane.writes_by(OPERATOR_SA_USER)
        if w.get("objectRef", {}).get("namespace") == namespace
    ]
    assert any(w["objectRef"].get("subresource") == "status" for w in earlier), (
        "the audit log sees the operator"
    )
    time.sleep(30)
    # A watch that ends is re-opened: that is listening, not polling.
    requests = [
        (r["verb"], r["objectRef"])
        for r in operator_requests(control_plane, namespace, since)
        if r["verb"] != "watch"
    ]
    assert requests == []
