"""Waiting for capacity is Queued, not a failure: real kube-scheduler, the session's kwok nodes (2 x 8
nvidia.com/gpu, NVIDIA-H100-80GB-HBM3), the operator process, no Kueue (no queueName).

Pod fates are decided the way a kubelet would report them (mlops_operator.dev.pods).
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane
from mlops_operator.dev.pods import finish_pod
from mlops_operator.timeutil import from_rfc3339
from tests.integration.conftest import OperatorProcess
from tests.integration.test_trainingrun import SUCCESS, G, V, _get, _ready, _run, _running_pods, _wait_phase
from tests.waiting import wait_for, wait_for_events

GPUS_PER_NODE = 8
NODES = 2


def _gpus_in_use(core: client.CoreV1Api) -> int:
    """nvidia.com/gpu held by scheduled, unfinished pods anywhere (an earlier test's may linger)."""
    used = 0
    for pod in core.list_pod_for_all_namespaces().items:
        if not pod.spec.node_name or pod.status.phase in ("Succeeded", "Failed"):
            continue
        for container in pod.spec.containers:
            requests = (container.resources.requests or {}) if container.resources else {}
            used += int(requests.get("nvidia.com/gpu", 0))
    return used


def _wait_gpus_free(core: client.CoreV1Api) -> None:
    wait_for(lambda: _gpus_in_use(core) == 0, "every GPU of the session's nodes to be free", 60)


def _status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(_get(custom, namespace, name).get("status") or {})


def _phases(custom: client.CustomObjectsApi, namespace: str, names: list[str]) -> dict[str, str | None]:
    return {n: _status(custom, namespace, n).get("phase") for n in names}


def _summary(custom: client.CustomObjectsApi, namespace: str, names: list[str]) -> str:
    lines = []
    for name in names:
        status = _status(custom, namespace, name)
        failures = [(f.get("attempt"), f.get("reason")) for f in status.get("failures") or []]
        ready = _ready({"status": status}).get("reason")
        lines.append(
            f"{name}: {status.get('phase')} ({ready}), attempt {status.get('attempt')}, failures {failures}"
        )
    return "\n".join(lines)


def test_runs_beyond_the_clusters_gpus_queue_past_the_start_deadline_then_run_the_same_attempt(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _wait_gpus_free(core)
    names = ["q1", "q2", "q3", "q4"]
    for name in names:  # 4 x 8 GPUs on 2 x 8: two run, two wait
        run = _run(
            name,
            dataset,
            resources={"gpusPerWorker": GPUS_PER_NODE},
            scheduling={"startDeadlineSeconds": 10},
        )
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)

    def split() -> tuple[list[str], list[str]] | None:
        phases = _phases(custom, namespace, names)
        running = [n for n, p in phases.items() if p == "Running"]
        queued = [n for n, p in phases.items() if p == "Queued"]
        return (running, queued) if len(running) == NODES and len(queued) == 2 else None

    try:
        running, queued = wait_for(split, "two runs Running and two Queued", 45)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_summary(custom, namespace, names)}") from None
    jobs = client.BatchV1Api(core.api_client)
    uids = {n: jobs.read_namespaced_job(f"{n}-a1", namespace).metadata.uid for n in queued}

    # Past the 10 s start deadline (counted from each attempt's start, as the old handler did, which
    # failed these with StartDeadlineExceeded): still Queued, same attempt, no failure.
    latest = max(from_rfc3339(_status(custom, namespace, n)["attemptStartTime"]) for n in queued)
    time.sleep(max(0.0, latest.timestamp() + 14 - time.time()))
    for name in queued:
        status = _status(custom, namespace, name)
        assert status["phase"] == "Queued", status
        assert status["attempt"] == 1
        assert not status.get("failures")
        queue = status["queue"]
        assert queue["reason"] == "Unschedulable"
        # The scheduler's own words: busy, not "no node fits" (the nodes are full, not too small).
        assert "Insufficient nvidia.com/gpu" in queue["message"]
        assert "No preemption victims found for incoming pod" in queue["message"]
        assert queue["since"]
        ready = _ready({"status": status})
        assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert [
        j.metadata.name for j in jobs.list_namespaced_job(namespace).items if j.metadata.name.endswith("-a2")
    ] == []

    table = control_plane.kubectl("get", "tr", "-n", namespace).stdout
    header, *rows = table.splitlines()
    assert "QUEUED" in header.split()
    by_name = {row.split()[0]: row.split() for row in rows}
    for name in queued:
        assert by_name[name][1:3] == ["Queued", "Unschedulable"], table
    for name in running:
        assert by_name[name][1] == "Running", table

    # The first two finish; the scheduler places the waiting pods; the same Jobs run them.
    for name in running:
        (pod,) = _running_pods(core, namespace, f"{name}-a1")
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    for name in running:
        _wait_phase(custom, namespace, name, "Succeeded")
    for name in queued:
        status = _wait_phase(custom, namespace, name, "Running", timeout=45)["status"]
        assert status["attempt"] == 1
        assert status["jobName"] == f"{name}-a1"
        assert not status.get("failures")
        assert "queue" not in status
        assert status["queuedSeconds"] >= 10
        assert jobs.read_namespaced_job(f"{name}-a1", namespace).metadata.uid == uids[name]
    for name in queued:
        (pod,) = _running_pods(core, namespace, f"{name}-a1")
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
    for name in queued:
        done = _wait_phase(custom, namespace, name, "Succeeded")["status"]
        assert (done["attempt"], done.get("failures")) == (1, None)

    metrics = operator.metrics()
    counts = [
        line for line in metrics.splitlines() if line.startswith("mlops_trainingrun_queue_seconds_count")
    ]
    assert counts == ['mlops_trainingrun_queue_seconds_count{queue=""} 2.0'], counts
    (total,) = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('mlops_trainingrun_queue_seconds_sum{queue=""}')
    ]
    assert total >= 20


def _filler(name: str) -> dict[str, Any]:
    """A pod holding a whole node's GPUs (kwok keeps it Running)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "hold",
                    "image": "busybox",
                    "resources": {"limits": {"nvidia.com/gpu": str(GPUS_PER_NODE)}},
                }
            ],
            "tolerations": [KWOK_TOLERATION],
        },
    }


def test_a_run_no_node_fits_is_queued_once_and_a_queue_timeout_fails_and_deletes_the_job(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _wait_gpus_free(core)
    # More GPUs than any node has; a GPU product no session node carries.
    for run in (
        _run("huge", dataset, resources={"gpusPerWorker": 16}),
        _run("absent", dataset, resources={"gpusPerWorker": 1, "gpuProduct": "NVIDIA-L40S"}),
    ):
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    for name in ("huge", "absent"):
        status = _wait_phase(custom, namespace, name, "Queued", timeout=30)["status"]
        assert status["queue"]["reason"] == "NoNodeFits", status
        assert "Preemption is not helpful for scheduling" in status["queue"]["message"]
        assert status["attempt"] == 1
    assert "Insufficient nvidia.com/gpu" in _status(custom, namespace, "huge")["queue"]["message"]
    assert (
        "didn't match Pod's node affinity/selector"
        in _status(custom, namespace, "absent")["queue"]["message"]
    )

    # The cluster full (two pods holding every GPU), a run that gives up after 5 s in the queue.
    for name in ("fill-0", "fill-1"):
        core.create_namespaced_pod(namespace, _filler(name))

    def filled() -> bool:
        pods = [core.read_namespaced_pod(n, namespace) for n in ("fill-0", "fill-1")]
        return all(p.status.phase == "Running" for p in pods)

    wait_for(filled, "the filler pods Running", 30)
    late = _run("late", dataset, resources={"gpusPerWorker": 1}, scheduling={"queueTimeoutSeconds": 5})
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", late)
    _wait_phase(custom, namespace, "late", "Queued", timeout=30)
    failed = _wait_phase(custom, namespace, "late", "Failed", timeout=30)["status"]
    (failure,) = failed["failures"]  # maxAttempts 3, yet one attempt: not retried
    assert (failure["reason"], failure["retryable"]) == ("QueueTimeoutExceeded", False)
    assert "Insufficient nvidia.com/gpu" in failure["message"]
    assert _ready({"status": failed})["reason"] == "QueueTimeoutExceeded"
    assert "queue" not in failed
    assert failed["queuedSeconds"] >= 5
    jobs = client.BatchV1Api(core.api_client)

    def late_job_gone() -> bool:
        return not [
            j for j in jobs.list_namespaced_job(namespace).items if j.metadata.name.startswith("late-")
        ]

    wait_for(late_job_gone, "the timed-out run's Job deleted", 30)

    # Exactly one NoNodeFits Warning per run that never fits, however often the scheduler retried.
    for name in ("huge", "absent"):
        wait_for_events(
            core,
            namespace,
            name,
            lambda events: any(e.reason == "NoNodeFits" for e in events),
            f"the NoNodeFits event of {name}",
        )
    time.sleep(3)  # let any duplicate arrive
    for name in ("huge", "absent"):
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        warnings = [e for e in events if e.reason == "NoNodeFits"]
        assert len(warnings) == 1, [(e.reason, e.count, e.message) for e in events]
        assert warnings[0].type == "Warning"
        assert (warnings[0].count or 1) == 1
        assert _status(custom, namespace, name)["phase"] == "Queued"
