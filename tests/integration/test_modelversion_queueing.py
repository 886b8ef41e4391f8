"""A ModelVersion's compile Job waiting for capacity is Queued, not a failure: real kube-scheduler and
Job controller, the session's kwok nodes (2 x 8 nvidia.com/gpu, NVIDIA-H100-80GB-HBM3), the operator
process, no Kueue (no queueName).

Pod fates are decided the way a kubelet would report them (mlops_operator.dev.pods).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane, GpuNodePool, gpu_node_manifest
from tests.integration.conftest import OperatorProcess
from tests.integration.test_modelversion import G, V, _condition, _finish_stage, _get, _mv, _wait, compiled
from tests.waiting import wait_for, wait_for_events

HELD_DEADLINE_ANNOTATION = "mlops.dev/stage-deadline-seconds"
ABSENT_PRODUCT = "NVIDIA-B200"  # no session node has it, until the test adds one
NEVER_PRODUCT = "NVIDIA-GB300"  # no node ever has it
STAGE_DEADLINE = 12  # the compile Job's activeDeadlineSeconds: shorter than the wait
START_DEADLINE = 10  # the least scheduling.startDeadlineSeconds allows


@pytest.fixture
def late_node(control_plane: ControlPlane) -> Iterator[str]:
    """The name of the node of ABSENT_PRODUCT the test adds once its stage has waited; gone after."""
    name = "b200-node-0"
    yield name
    control_plane.kubectl("delete", "node", name, "--wait=false", "--ignore-not-found", check=False)


def _trt(name: str, source: str, product: str, **scheduling: Any) -> dict[str, Any]:
    compile_ = {
        "target": "tensorrt",
        "precision": "fp16",
        "gpuProduct": product,
        "deadlineSeconds": STAGE_DEADLINE,
    }
    return _mv(
        name, source, compile=compile_, scheduling={"startDeadlineSeconds": START_DEADLINE, **scheduling}
    )


def _warnings(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in events if e.type == "Warning"]


def test_a_compile_no_node_fits_is_queued_past_its_deadlines_then_runs_when_the_node_joins(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    late_node: str,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    jobs = client.BatchV1Api(core.api_client)
    for body in (
        _trt("waits", source, ABSENT_PRODUCT),
        _trt("gives-up", source, NEVER_PRODUCT, queueTimeoutSeconds=3),
    ):
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    queued = _wait(custom, namespace, "waits", "Queued", "NoNodeFits", timeout=20)["status"]
    assert queued["currentStage"] == "compile"
    assert queued["queue"]["reason"] == "NoNodeFits"
    assert "didn't match Pod's node affinity/selector" in queued["queue"]["message"]
    assert "Preemption is not helpful for scheduling" in queued["queue"]["message"]
    job = jobs.read_namespaced_job("waits-compile-a1", namespace)
    uid, started = job.metadata.uid, job.status.start_time

    # The queue timeout: the other version gives up, once, and its Job goes.
    failed = _wait(custom, namespace, "gives-up", "Failed", "QueueTimeoutExceeded", timeout=20)["status"]
    (failure,) = failed["failures"]
    assert (failure["stage"], failure["reason"], failure["retryable"]) == (
        "compile",
        "QueueTimeoutExceeded",
        False,
    )
    assert "queue" not in failed
    wait_for(
        lambda: (
            not [
                j for j in jobs.list_namespaced_job(namespace).items if j.metadata.name.startswith("gives-up")
            ]
        ),
        "the timed-out compile Job to be deleted",
        15,
    )

    # Past the Job's 12 s activeDeadlineSeconds and the 10 s start deadline (from the Job's start):
    # the Job controller did not stop it, the operator neither failed nor re-created it.
    time.sleep(max(0.0, started.timestamp() + STAGE_DEADLINE + 3 - time.time()))
    status = _get(custom, namespace, "waits")["status"]
    assert (status["phase"], _condition({"status": status})["reason"]) == ("Queued", "NoNodeFits"), status
    assert not status.get("failures")
    assert status["attempt"] == 1
    job = jobs.read_namespaced_job("waits-compile-a1", namespace)
    assert job.metadata.uid == uid
    assert not [c for c in job.status.conditions or [] if c.type == "Failed"], job.status.conditions
    assert job.spec.active_deadline_seconds is None  # held while the pod waits for a node
    assert job.metadata.annotations[HELD_DEADLINE_ANNOTATION] == str(STAGE_DEADLINE)
    assert [j.metadata.name for j in jobs.list_namespaced_job(namespace).items] == ["waits-compile-a1"]
    # One Warning, for NoNodeFits, however long it waits.
    events = wait_for_events(
        core, namespace, "waits", lambda e: bool(_warnings(e)), "the NoNodeFits Warning", timeout=10
    )
    assert [reason for reason, _ in _warnings(events)] == ["NoNodeFits"], _warnings(events)

    table = control_plane.kubectl("get", "mv", "waits", "-n", namespace, "-o", "wide").stdout
    header, row = table.splitlines()
    assert row[header.index("QUEUED") :].split()[0] == "NoNodeFits", table  # kubectl aligns columns

    # A node of that product joins: the scheduler places the same Job's pod, and the stage's deadline
    # comes back counted from the scheduling.
    pool = GpuNodePool(count=1, gpus_per_node=1, gpu_product=ABSENT_PRODUCT, name_prefix="b200-node")
    control_plane.kubectl_apply([gpu_node_manifest(pool, 0)])
    compiling = _wait(custom, namespace, "waits", "Compiling", timeout=20)["status"]
    assert "queue" not in compiling
    assert not compiling.get("failures")
    job = jobs.read_namespaced_job("waits-compile-a1", namespace)
    assert job.metadata.uid == uid
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=waits-compile-a1").items
    assert pod.spec.node_name == late_node
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled").last_transition_time
    waited = (scheduled - job.status.start_time).total_seconds()
    assert waited >= STAGE_DEADLINE
    assert abs(job.spec.active_deadline_seconds - (STAGE_DEADLINE + waited)) <= 1, (
        job.spec.active_deadline_seconds,
        waited,
    )
    engine = compiled("s3://b/e/model.plan", format="tensorrt", precision="fp16", gpu="NVIDIA B200")
    _finish_stage(core, namespace, "waits-compile-a1", engine)
    evaluating = _wait(custom, namespace, "waits", "Evaluating", timeout=20)["status"]
    assert evaluating["currentStage"] == "evaluate"
    assert not evaluating.get("failures")
