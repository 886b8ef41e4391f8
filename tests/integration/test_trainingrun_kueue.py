"""The operator with the real Kueue (v0.17.0) of the session control plane: TrainingRuns and a
ModelVersion's stage Jobs that name a LocalQueue (`spec.scheduling.queueName`) wait in Kueue.

Real kube-scheduler, the session's kwok nodes (2 x 8 nvidia.com/gpu, NVIDIA-H100-80GB-HBM3), the
operator process with the chart's RBAC. Pod fates are decided the way a kubelet would report them
(mlops_operator.dev.pods), except in the preemption test, where the real trainer runs the low-priority
run's pods through the local pod runner, checkpoints on SIGTERM when Kueue preempts it, and resumes.

`MLOPS_KUEUE_OPERATOR_SRC=<dir>` runs the operator from another copy of its sources (the `operator`
folder of an older commit), to check that these tests fail there.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev import kueue
from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.pods import finish_pod
from mlops_operator.dev.runner import LocalPodRunner
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, start_operator
from tests.integration.digits_engine import create_demo_dataset
from tests.integration.test_modelversion import _finish_stage, _mv, _wait, compiled, evaluated
from tests.integration.test_modelversion import _get as _get_mv
from tests.integration.test_trainingrun import SUCCESS, G, V, _get, _ready, _run, _running_pods, _wait_phase
from tests.integration.test_trainingrun_queueing import _wait_gpus_free
from tests.waiting import wait_for, wait_for_events

H100 = "NVIDIA-H100-80GB-HBM3"  # the session's gpu-node-* (2 x 8 GPUs)
WORKLOADS = ("kueue.x-k8s.io", "v1beta2", "workloads")
TRAINER = Path(__file__).resolve().parents[2] / ".venv-trainer" / "bin" / "mlops-trainer"
OPERATOR_SRC_ENV = "MLOPS_KUEUE_OPERATOR_SRC"
START_DEADLINE = 10  # the least scheduling.startDeadlineSeconds allows
PENDING_WORDS = "couldn't assign flavors to pod set main: insufficient"  # Kueue's QuotaReserved=False


@dataclass(frozen=True)
class Queue:
    name: str  # the LocalQueue, in the test's namespace
    cluster_queue: str
    flavor: str
    low: str  # WorkloadPriorityClass names (100, 1000)
    high: str


def _priority_class(name: str, value: int) -> dict[str, Any]:
    """A pod PriorityClass: Kueue takes its value as the Workload's priority when no
    WorkloadPriorityClass is named (`preemptionPolicy: Never`: the scheduler preempts no pod for it)."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
        "preemptionPolicy": "Never",
    }


@pytest.fixture
def make_queue(control_plane: ControlPlane, namespace: str) -> Iterator[Callable[..., Queue]]:
    """Makes a ResourceFlavor, a ClusterQueue (LowerPriority preemption within it) with `gpus` H100
    GPUs (the flavor selects the session's H100 nodes), or with room for `pods` pods and no GPUs, a
    LocalQueue `team` in the test's namespace and two WorkloadPriorityClasses. All deleted after."""
    if not control_plane.kueue:
        pytest.skip("the session control plane runs without Kueue (hack/build-tools.sh builds it)")
    made: list[Queue] = []

    def make(gpus: int = 0, pods: int | None = None) -> Queue:
        suffix = uuid.uuid4().hex[:6]
        q = Queue("team", f"cq-{suffix}", f"flavor-{suffix}", f"low-{suffix}", f"high-{suffix}")
        made.append(q)
        if pods is None:
            flavor = kueue.resource_flavor(q.flavor, H100)
            cluster_queue = kueue.cluster_queue(
                q.cluster_queue, [kueue.FlavorQuota(q.flavor, cpu="64", memory="512Gi", gpus=gpus)]
            )
        else:
            # CPU-only stage Jobs request nothing; Kueue counts pods when a ClusterQueue covers them.
            flavor = kueue.resource_flavor(q.flavor)
            cluster_queue = kueue.cluster_queue(q.cluster_queue, [kueue.FlavorQuota(q.flavor, "64", "512Gi")])
            group = cluster_queue["spec"]["resourceGroups"][0]
            group["coveredResources"].append("pods")
            group["flavors"][0]["resources"].append({"name": "pods", "nominalQuota": str(pods)})
        control_plane.kubectl_apply(
            [
                flavor,
                cluster_queue,
                kueue.local_queue(namespace, q.name, q.cluster_queue),
                kueue.workload_priority_class(q.low, 100),
                kueue.workload_priority_class(q.high, 1000),
                _priority_class(q.low, 100),
                _priority_class(q.high, 1000),
            ]
        )
        control_plane.kubectl(
            "wait", "localqueue", q.name, "-n", namespace, "--for=condition=Active", "--timeout=30s"
        )
        return q

    try:
        yield make
    finally:
        control_plane.kubectl("delete", "jobs", "--all", "-n", namespace, "--wait=false", check=False)
        for q in made:
            control_plane.kubectl(
                "delete", "localqueue", q.name, "-n", namespace, "--wait=false", check=False
            )
            control_plane.kubectl("delete", "clusterqueue", q.cluster_queue, "--wait=false", check=False)
            control_plane.kubectl("delete", "resourceflavor", q.flavor, "--wait=false", check=False)
            control_plane.kubectl(
                "delete", "workloadpriorityclass", q.low, q.high, "--wait=false", check=False
            )
            control_plane.kubectl("delete", "priorityclass", q.low, q.high, "--wait=false", check=False)


def _operator_env() -> dict[str, str]:
    source = os.environ.get(OPERATOR_SRC_ENV)
    if not source:
        return {}
    return {"PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture
def kueue_operator(
    make_queue: Callable[..., Queue], control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    running = start_operator(control_plane, namespace, tmp_path / "operator.log", _operator_env())
    try:
        yield running
    finally:
        running.stop()
        print(running.log.read_text()[-4000:])  # shown by pytest when the test failed


def _status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(_get(custom, namespace, name).get("status") or {})


def _pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def _workload(custom: client.CustomObjectsApi, namespace: str, job: client.V1Job) -> dict[str, Any] | None:
    items = custom.list_namespaced_custom_object(*WORKLOADS[:2], namespace, WORKLOADS[2])["items"]
    for item in items:
        if any(ref["uid"] == job.metadata.uid for ref in item["metadata"].get("ownerReferences") or []):
            return dict(item)
    return None


def _queued(
    custom: client.CustomObjectsApi, namespace: str, name: str, reason: str, timeout: float = 30
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _status(custom, namespace, name)
        return (
            status
            if status.get("phase") == "Queued" and (status.get("queue") or {}).get("reason") == reason
            else None
        )

    try:
        return wait_for(probe, f"TrainingRun {name} Queued ({reason})", timeout)
    except AssertionError as error:
        status = _status(custom, namespace, name)
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def test_a_run_beyond_its_cluster_queues_quota_waits_for_admission_then_runs_the_same_job(
    kueue_operator: OperatorProcess,
    make_queue: Callable[..., Queue],
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _wait_gpus_free(core)
    queue = make_queue(gpus=8)
    jobs = client.BatchV1Api(core.api_client)
    scheduling = {"queueName": queue.name, "startDeadlineSeconds": START_DEADLINE}
    custom.create_namespaced_custom_object(
        G,
        V,
        namespace,
        "trainingruns",
        _run("first", dataset, resources={"gpusPerWorker": 8}, scheduling=scheduling),
    )
    _wait_phase(custom, namespace, "first", "Running", timeout=45)
    (first_pod,) = _running_pods(core, namespace, "first-a1")
    custom.create_namespaced_custom_object(
        G,
        V,
        namespace,
        "trainingruns",
        _run("second", dataset, resources={"gpusPerWorker": 8}, scheduling=scheduling),
    )
    status = _queued(custom, namespace, "second", "WaitingForAdmission")
    job = jobs.read_namespaced_job("second-a1", namespace)
    assert job.metadata.labels[kueue.QUEUE_NAME_LABEL] == queue.name
    assert job.spec.suspend is True
    uid = job.metadata.uid

    # Past the 10 s start deadline from the attempt's start: still Queued, no pod, no failure.
    time.sleep(START_DEADLINE + 4)
    status = _status(custom, namespace, "second")
    assert status["phase"] == "Queued", status
    assert (status["attempt"], status.get("failures")) == (1, None), status
    assert status["queue"]["reason"] == "WaitingForAdmission"
    assert status["queue"]["localQueue"] == queue.name
    assert PENDING_WORDS in status["queue"]["message"], status["queue"]
    assert "nvidia.com/gpu" in status["queue"]["message"]
    assert status["queue"]["since"]
    assert (_ready({"status": status})["status"], _ready({"status": status})["reason"]) == (
        "False",
        "WaitingForAdmission",
    )
    assert _pods(core, namespace, "second-a1") == []
    assert [j.metadata.name for j in jobs.list_namespaced_job(namespace).items] == ["first-a1", "second-a1"]
    workload = _workload(custom, namespace, job)
    assert workload is not None
    assert workload["spec"]["queueName"] == queue.name

    # The first finishes: Kueue admits the second, the same Job runs, the same attempt succeeds.
    finish_pod(core, namespace, first_pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "first", "Succeeded")
    running = _wait_phase(custom, namespace, "second", "Running", timeout=45)["status"]
    assert (running["attempt"], running.get("failures"), running["jobName"]) == (1, None, "second-a1"), (
        json.dumps(running, indent=1)
    )
    assert "queue" not in running
    assert running["queuedSeconds"] >= START_DEADLINE + 4  # at least the sleep above
    admitted = jobs.read_namespaced_job("second-a1", namespace)
    assert admitted.metadata.uid == uid
    assert admitted.spec.suspend is False
    assert admitted.spec.template.spec.node_selector == {kueue.GPU_PRODUCT_LABEL: H100}  # from the flavor
    (pod,) = _running_pods(core, namespace, "second-a1")
    finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    done = _wait_phase(custom, namespace, "second", "Succeeded")["status"]
    assert (done["attempt"], done.get("failures")) == (1, None)
    assert done["queuedSeconds"] > 0


def test_a_distributed_run_is_admitted_whole_or_not_at_all(
    kueue_operator: OperatorProcess,
    make_queue: Callable[..., Queue],
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _wait_gpus_free(core)
    queue = make_queue(gpus=16)
    scheduling = {"queueName": queue.name, "startDeadlineSeconds": START_DEADLINE}
    custom.create_namespaced_custom_object(
        G,
        V,
        namespace,
        "trainingruns",
        _run("single", dataset, resources={"gpusPerWorker": 8}, scheduling=scheduling),
    )
    _wait_phase(custom, namespace, "single", "Running", timeout=45)
    (single_pod,) = _running_pods(core, namespace, "single-a1")
    wide = _run(
        "wide",
        dataset,
        resources={"gpusPerWorker": 8},
        distributed={"nodes": 2},
        scheduling=scheduling,
    )
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", wide)
    status = _queued(custom, namespace, "wide", "WaitingForAdmission")
    assert PENDING_WORDS in status["queue"]["message"], status["queue"]
    jobs = client.BatchV1Api(core.api_client)
    job = jobs.read_namespaced_job("wide-a1", namespace)
    assert (job.spec.completion_mode, job.spec.parallelism) == ("Indexed", 2)
    uid = job.metadata.uid
    # 8 of its 16 GPUs would fit: never a partial start, not one pod.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert _pods(core, namespace, "wide-a1") == []
        time.sleep(0.5)
    assert _status(custom, namespace, "wide")["phase"] == "Queued"

    finish_pod(core, namespace, single_pod, exit_code=0, message=SUCCESS)
    _wait_phase(custom, namespace, "single", "Succeeded")

    # Admitted as one unit: both pods' quota at once (the Job controller then creates the pods).
    def admitted() -> dict[str, Any] | None:
        workload = _workload(custom, namespace, job)
        return workload if workload and (workload.get("status") or {}).get("admission") else None

    (pod_set,) = wait_for(admitted, "wide's Workload admitted", 45)["status"]["admission"][
        "podSetAssignments"
    ]
    assert pod_set["count"] == 2
    _running_pods(core, namespace, "wide-a1", count=2)
    pods = [p for p in _pods(core, namespace, "wide-a1") if p.status.phase == "Running"]
    assert {p.spec.node_name for p in pods} == {"gpu-node-0", "gpu-node-1"}
    running = _wait_phase(custom, namespace, "wide", "Running", timeout=30)["status"]
    assert (running["attempt"], running.get("failures")) == (1, None)
    assert jobs.read_namespaced_job("wide-a1", namespace).metadata.uid == uid
    for pod in pods:
        finish_pod(core, namespace, pod.metadata.name, exit_code=0, message=SUCCESS)
    done = _wait_phase(custom, namespace, "wide", "Succeeded")["status"]
    assert (done["attempt"], done.get("failures")) == (1, None)


# -- preemption, with the real trainer ---------------------------------------------------------


def _checkpoints(s3: LocalS3, bucket: str, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents") or []]


def _env(pod: client.V1Pod) -> dict[str, str | None]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


@pytest.mark.parametrize("priority", ["workloadPriorityClassName", "priorityClassName"])
def test_a_higher_priority_run_preempts_a_lower_one_which_queues_and_resumes_from_its_checkpoint(
    priority: str,
    kueue_operator: OperatorProcess,
    make_queue: Callable[..., Queue],
    s3: LocalS3,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    if not os.access(TRAINER, os.X_OK):
        pytest.fail(f"{TRAINER} is missing: `make trainer` (part of `make test`) installs it")
    _wait_gpus_free(core)
    queue = make_queue(gpus=1)
    bucket = create_demo_dataset(s3, core, custom, namespace, tmp_path)
    jobs = client.BatchV1Api(api)
    low = {
        "apiVersion": f"{G}/{V}",
        "kind": "TrainingRun",
        "metadata": {"name": "low"},
        "spec": {
            "datasetRef": {"name": "digits"},
            "model": "digits-cnn",
            # ~1400 steps: long enough on a CPU to be preempted mid-way after its first checkpoints.
            "hyperparameters": {"epochs": 20, "batchSize": 64, "numWorkers": 0},
            "resources": {"gpusPerWorker": 1},  # Kueue's GPU quota; the runner's trainer uses the CPU
            "checkpoint": {"uri": f"s3://{bucket}/checkpoints/low/", "intervalSteps": 20},
            "output": {"uri": f"s3://{bucket}/models/low/"},
            "retry": {"maxAttempts": 3, "backoffSeconds": 0},
            # Kueue's WorkloadPriorityClass, or the pods' PriorityClass (Kueue reads either).
            "scheduling": {"queueName": queue.name, priority: queue.low},
        },
    }
    high = _run(
        "high",
        bucket,
        resources={"gpusPerWorker": 1},
        command=["hold"],  # not run by the runner: kwok keeps its pod Running until the test ends it
        scheduling={"queueName": queue.name, priority: queue.high},
    )
    runner = LocalPodRunner(api, namespace, executables={"mlops-trainer": str(TRAINER)})
    runner.start()
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", low)
        _wait_phase(custom, namespace, "low", "Running", timeout=45)
        low_job = jobs.read_namespaced_job("low-a1", namespace)
        if priority == "workloadPriorityClassName":
            assert low_job.metadata.labels[kueue.PRIORITY_CLASS_LABEL] == queue.low
        else:
            assert low_job.spec.template.spec.priority_class_name == queue.low
        workload = wait_for(lambda: _workload(custom, namespace, low_job), "the low run's Workload")
        assert workload["spec"]["priority"] == 100  # Kueue took the run's priority class
        (before,) = [p for p in _pods(core, namespace, "low-a1") if p.status.phase == "Running"]
        wait_for(
            lambda: _checkpoints(s3, bucket, "checkpoints/low/"), "the low run's first checkpoint", 90, 0.5
        )

        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", high)
        status = _queued(custom, namespace, "low", "Preempted")
        assert (status["attempt"], status.get("failures")) == (1, None), status
        assert status["queue"]["localQueue"] == queue.name
        assert "Preempted" in status["queue"]["message"] or "InClusterQueue" in status["queue"]["message"]
        assert _ready({"status": status})["reason"] == "Preempted"
        suspended = wait_for(
            lambda: (j := jobs.read_namespaced_job("low-a1", namespace)).spec.suspend is True and j,
            "the low run's Job suspended",
        )
        assert suspended.metadata.uid == low_job.metadata.uid  # the same Job, not re-created
        wait_for(
            lambda: not [p for p in _pods(core, namespace, "low-a1") if p.status.phase == "Running"],
            "the preempted pod to go",
            45,
        )
        _wait_phase(custom, namespace, "high", "Running", timeout=45)
        status = _status(custom, namespace, "low")
        assert status["phase"] == "Queued", status
        assert (status["attempt"], status.get("failures")) == (1, None), status
        assert [j.metadata.name for j in jobs.list_namespaced_job(namespace).items] == ["high-a1", "low-a1"]

        (high_pod,) = _running_pods(core, namespace, "high-a1")
        finish_pod(core, namespace, high_pod, exit_code=0, message=SUCCESS)
        _wait_phase(custom, namespace, "high", "Succeeded")

        # Re-admitted: the same Job runs a new pod of the same attempt, which resumes.
        _wait_phase(custom, namespace, "low", "Running", timeout=45)
        assert jobs.read_namespaced_job("low-a1", namespace).metadata.uid == low_job.metadata.uid
        (after,) = [
            p
            for p in _pods(core, namespace, "low-a1")
            if p.status.phase == "Running" and p.metadata.uid != before.metadata.uid
        ]
        for pod in (before, after):
            env = _env(pod)
            assert env["MLOPS_ATTEMPT"] == "1", env
            assert env["MLOPS_CHECKPOINT_URI"] == f"s3://{bucket}/checkpoints/low/", env
        done = _wait_phase(custom, namespace, "low", "Succeeded", timeout=420)["status"]
        assert (done["attempt"], done.get("failures")) == (1, None), done
        assert done["queuedSeconds"] > 0

        # The trainer's own summary of the resumed pod: it started from a checkpoint, not from step 0.
        resumed = core.read_namespaced_pod(after.metadata.name, namespace)
        summary = json.loads(resumed.status.container_statuses[0].state.terminated.message)
        assert summary["status"] == "Succeeded", summary
        assert summary["checkpoint"]["resumedFromStep"] > 0, summary["checkpoint"]
        assert summary["steps"] == summary["totalSteps"]
        print(
            f"low: preempted, queued {done['queuedSeconds']}s, resumed from step "
            f"{summary['checkpoint']['resumedFromStep']} of {summary['totalSteps']}"
        )

        events = wait_for_events(
            core, namespace, "low", lambda e: any(x.reason == "Preempted" for x in e), "the Preempted event"
        )
        preempted = [e for e in events if e.reason == "Preempted"]
        assert len(preempted) == 1, [(e.reason, e.count) for e in events]
        assert (preempted[0].count or 1) == 1
        assert preempted[0].type == "Warning"
    finally:
        runner.stop()


# -- a ModelVersion's stage Jobs -----------------------------------------------------------------


def _filler(queue: Queue) -> dict[str, Any]:
    """A Job in the LocalQueue whose pod kwok keeps Running: it holds the ClusterQueue's one pod."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "filler", "labels": kueue.queue_labels(queue.name)},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "hold", "image": "busybox"}]}
            },
        },
    }


def test_a_modelversions_stage_jobs_wait_in_the_named_local_queue(
    kueue_operator: OperatorProcess,
    make_queue: Callable[..., Queue],
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    queue = make_queue(pods=1)
    jobs = client.BatchV1Api(core.api_client)
    jobs.create_namespaced_job(namespace, _filler(queue))
    wait_for(
        lambda: [p for p in _pods(core, namespace, "filler") if p.status.phase == "Running"],
        "the filler Job's pod to run",
        45,
    )
    body = _mv("queued", source, scheduling={"queueName": queue.name, "startDeadlineSeconds": START_DEADLINE})
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    status = _wait(custom, namespace, "queued", "Queued", "WaitingForAdmission", timeout=30)["status"]
    assert status["currentStage"] == "compile"
    assert status["queue"]["localQueue"] == queue.name

    # Kueue first says "waiting for quota", then why once it has tried the flavors (a busy machine
    # can show the first): the status follows to Kueue's reason.
    def explained() -> dict[str, Any] | None:
        held = (_get_mv(custom, namespace, "queued").get("status") or {}).get("queue") or {}
        return held if PENDING_WORDS in str(held.get("message")) else None

    status = {"queue": wait_for(explained, "Kueue's reason in status.queue", 30)}
    assert "pods" in status["queue"]["message"]
    job = jobs.read_namespaced_job("queued-compile-a1", namespace)
    assert job.metadata.labels[kueue.QUEUE_NAME_LABEL] == queue.name
    assert job.spec.suspend is True
    uid = job.metadata.uid
    time.sleep(START_DEADLINE + 3)
    status = _get_mv(custom, namespace, "queued")["status"]
    assert (status["phase"], status.get("failures")) == ("Queued", None), status
    assert _pods(core, namespace, "queued-compile-a1") == []

    # The filler goes: the compile Job is admitted and runs, then the evaluate Job queues and runs too.
    jobs.delete_namespaced_job("filler", namespace, propagation_policy="Background")
    _wait(custom, namespace, "queued", "Compiling", timeout=45)
    assert jobs.read_namespaced_job("queued-compile-a1", namespace).metadata.uid == uid
    _finish_stage(core, namespace, "queued-compile-a1", compiled())
    _wait(custom, namespace, "queued", "Evaluating", timeout=30)
    evaluate = jobs.read_namespaced_job("queued-evaluate-a1", namespace)
    assert evaluate.metadata.labels[kueue.QUEUE_NAME_LABEL] == queue.name
    _finish_stage(core, namespace, "queued-evaluate-a1", evaluated())
    ready = _wait(custom, namespace, "queued", "Ready", timeout=30)["status"]
    assert not ready.get("failures")
    assert "queue" not in ready
