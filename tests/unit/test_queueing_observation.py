"""Whether a Job waits for capacity, read from the objects as kube-scheduler v1.35 and Kueue v0.17 write
them (observation/queueing.py, pure).

The scheduler's messages below were captured on the session control plane (kube-scheduler v1.35.4,
two kwok nodes with 8 nvidia.com/gpu each, product NVIDIA-H100-80GB-HBM3); the others follow its
FitError format (pkg/scheduler/framework/types.go) and its post-filter plugins' messages (DRA's "no
new claims to deallocate", default preemption's "preemption: ..."), joined by ", ".
"""

from __future__ import annotations

from typing import Any

import pytest

from mlops_operator.observation.queueing import (
    QUEUE_NAME_LABEL,
    queued,
    scheduled_since,
    scheduler_says_never,
    suspended_by_kueue,
    unschedulable_pods,
    workload_of,
)

# Captured: four 8-GPU pods on 2x8 GPUs (the last two), and a pod asking for what no node has.
BUSY = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: "
    "0/2 nodes are available: 2 No preemption victims found for incoming pod."
)
TOO_BIG = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: "
    "0/2 nodes are available: 2 Preemption is not helpful for scheduling."
)
NO_SUCH_PRODUCT = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. no new claims to "
    "deallocate, preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
)
# One node busy (a victim could be found some day), one that never fits: busy overall.
MIXED = (
    "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node "
    "affinity/selector. no new claims to deallocate, preemption: 0/2 nodes are available: 1 No "
    "preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
)
T0 = "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    ("message", "never"),
    [
        (BUSY, False),
        (TOO_BIG, True),
        (NO_SUCH_PRODUCT, True),
        (MIXED, False),
        # No preemption verdict (a pod that may not preempt): the filters' reasons decide.
        ("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.", True),
        (
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. no new claims "
            "to deallocate, preemption: not eligible due to preemptionPolicy=Never.",
            True,
        ),
        (
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had "
            "untolerated taint {dedicated: infer}.",
            True,
        ),
        # "Insufficient" alone does not say whether the resource is used or absent: busy.
        (
            "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, "
            "preemption: not eligible due to preemptionPolicy=Never.",
            False,
        ),
        (
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node "
            "affinity/selector.",
            False,
        ),
        # No node at all: the scheduler's ErrNoNodesAvailable, and a FitError over zero nodes.
        ("no nodes available to schedule pods", True),
        ("0/0 nodes are available: .", True),
        ("", False),
        ("something the scheduler never wrote", False),
    ],
)
def test_the_schedulers_verdict(message: str, never: bool) -> None:
    assert scheduler_says_never(message) is never


def _pod(
    name: str,
    *,
    phase: str = "Pending",
    scheduled: tuple[str, str, str] | None = None,  # (status, reason, message)
    at: str = T0,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:30:00Z"
    status: dict[str, Any] = {"phase": phase}
    if scheduled is not None:
        cond_status, reason, message = scheduled
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": cond_status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": at,
            }
        ]
    return {"metadata": meta, "status": status}


def _unschedulable(name: str, message: str, at: str = T0) -> dict[str, Any]:
    return _pod(name, scheduled=("False", "Unschedulable", message), at=at)


def _job(
    *,
    suspend: bool = False,
    conditions: list[dict[str, Any]] | None = None,
    start_time: str | None = None,
    queue: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "r-a1",
        "namespace": "ns",
        "uid": "job-uid",
        "creationTimestamp": "2026-01-01T11:59:00Z",
        "labels": {QUEUE_NAME_LABEL: queue} if queue else {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:30:00Z"
    status: dict[str, Any] = {"conditions": conditions or []}
    if start_time:
        status["startTime"] = start_time
    return {"metadata": meta, "spec": {"suspend": suspend}, "status": status}


def _cond(type_: str, status: str, reason: str = "", message: str = "", at: str = T0) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def _workload(
    *conditions: dict[str, Any], cluster_queue: str | None = None, created: str = T0
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {
        "metadata": {"name": "job-r-a1-abcde", "namespace": "ns", "creationTimestamp": created},
        "spec": {"queueName": "team-a"},
        "status": status,
    }


# -- the scheduler ----------------------------------------------------------------------------------


def test_pods_waiting_for_gpus_are_unschedulable_with_the_schedulers_words() -> None:
    found = queued(_job(), [_unschedulable("r-a1-x", BUSY)])
    assert found is not None
    assert found.reason == "Unschedulable"
    assert not found.never_fits
    assert BUSY in found.message
    assert "r-a1-x" in found.message
    assert found.since == T0


@pytest.mark.parametrize("message", [TOO_BIG, NO_SUCH_PRODUCT])
def test_pods_no_node_can_take_are_no_node_fits(message: str) -> None:
    found = queued(_job(), [_unschedulable("r-a1-x", message)])
    assert found is not None
    assert (found.reason, found.never_fits) == ("NoNodeFits", True)
    assert message in found.message


def test_one_pod_that_never_fits_makes_the_run_no_node_fits_since_the_first_wait() -> None:
    pods = [
        _unschedulable("r-a1-0", BUSY, at="2026-01-01T12:00:05Z"),
        _unschedulable("r-a1-1", TOO_BIG, at="2026-01-01T12:00:01Z"),
        _pod("r-a1-2", phase="Running", scheduled=("True", "", "")),
    ]
    found = unschedulable_pods(pods)
    assert found is not None
    assert found.reason == "NoNodeFits"
    assert "r-a1-1" in found.message  # the pod that says never, not merely the first
    assert found.message.startswith("2 pods")
    assert found.since == "2026-01-01T12:00:01Z"


def test_scheduled_running_ending_and_deleting_pods_are_not_queued() -> None:
    pods = [
        _pod("running", phase="Running", scheduled=("True", "", "")),
        # Not yet tried by the scheduler: no PodScheduled condition, not Queued.
        _pod("fresh"),
        # Unschedulable, but already gone or going: not what the run waits for.
        {
            **_unschedulable("failed", BUSY),
            "status": {**_unschedulable("failed", BUSY)["status"], "phase": "Failed"},
        },
        _pod("deleting", scheduled=("False", "Unschedulable", BUSY), deleting=True),
        # A scheduling gate holds it, not the lack of capacity.
        _pod(
            "gated",
            scheduled=("False", "SchedulingGated", "Scheduling is blocked due to non-empty scheduling gates"),
        ),
    ]
    assert queued(_job(), pods) is None


def test_a_finished_or_deleting_job_is_never_queued() -> None:
    pods = [_unschedulable("r-a1-x", BUSY)]
    assert queued(None, pods) is None
    assert queued(_job(conditions=[_cond("Complete", "True")]), pods) is None
    assert queued(_job(conditions=[_cond("Failed", "True", "BackoffLimitExceeded")]), pods) is None
    assert queued(_job(deleting=True), pods) is None
    # A Failed condition that is not True does not end it.
    assert queued(_job(conditions=[_cond("Failed", "False")]), pods) is not None


def test_the_message_is_redacted_and_bounded() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE"
    found = queued(_job(), [_unschedulable("r-a1-x", f"{BUSY} {secret} " + "x" * 3000)])
    assert found is not None
    assert secret not in found.message
    assert len(found.message) < 1200


# -- Kueue ---------------------------------------------------------------------------------------------


def test_a_suspended_job_without_a_workload_yet_waits_for_admission() -> None:
    job = _job(suspend=True, queue="team-a")
    found = queued(job, [])
    assert found is not None
    assert (found.reason, found.local_queue, found.cluster_queue) == ("WaitingForAdmission", "team-a", None)
    assert "LocalQueue team-a" in found.message
    assert "no Kueue Workload" in found.message
    assert found.since == "2026-01-01T11:59:00Z"  # the Job's creation, nothing earlier known


def test_a_suspended_job_waiting_for_quota_says_kueues_words() -> None:
    pending = _cond(
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
        "flavor h100, 8 more needed",
    )
    job = _job(suspend=True, queue="team-a", conditions=[_cond("Suspended", "True", "JobSuspended", at=T0)])
    found = queued(job, [], _workload(pending))
    assert found is not None
    assert found.reason == "WaitingForAdmission"
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100, 8 more needed" in found.message
    assert found.since == T0  # the Job's Suspended condition


def test_without_the_label_the_workloads_queue_is_named() -> None:
    found = suspended_by_kueue(_job(suspend=True), _workload(_cond("QuotaReserved", "False", "Pending", "")))
    assert found is not None
    assert found.local_queue == "team-a"
    assert "waiting for quota" in found.message


@pytest.mark.parametrize("kind", ["Evicted", "Preempted"])
def test_an_evicted_or_preempted_workload_is_preempted(kind: str) -> None:
    message = (
        "Preempted to accommodate a workload (UID: u1, JobUID: j1) due to prioritization in the ClusterQueue"
    )
    why = _cond(
        kind,
        "True",
        "Preempted" if kind == "Evicted" else "InClusterQueue",
        message,
        at="2026-01-01T12:10:00Z",
    )
    job = _job(
        suspend=True, queue="team-a", conditions=[_cond("Suspended", "True", at="2026-01-01T12:10:01Z")]
    )
    found = queued(job, [_pod("r-a1-x", phase="Failed")], _workload(why, cluster_queue="gpus"))
    assert found is not None
    assert (found.reason, found.local_queue, found.cluster_queue) == ("Preempted", "team-a", "gpus")
    assert message in found.message
    assert found.since == "2026-01-01T12:10:00Z"


def test_an_eviction_no_longer_true_is_waiting_again() -> None:
    gone = _cond("Evicted", "False", "Preempted", "old")
    found = queued(_job(suspend=True, queue="team-a"), [], _workload(gone))
    assert found is not None
    assert found.reason == "WaitingForAdmission"


def test_a_running_job_is_not_held_by_kueue_even_with_a_workload() -> None:
    admitted = _workload(_cond("QuotaReserved", "True"), _cond("Admitted", "True"), cluster_queue="gpus")
    running = [_pod("r-a1-x", phase="Running", scheduled=("True", "", ""))]
    assert queued(_job(queue="team-a", start_time=T0), running, admitted) is None


def test_admitted_but_not_yet_unsuspended_says_so() -> None:
    admitted = _workload(_cond("QuotaReserved", "True"), _cond("Admitted", "True"), cluster_queue="gpus")
    found = queued(_job(suspend=True, queue="team-a"), [], admitted)
    assert found is not None
    assert (found.reason, found.cluster_queue) == ("WaitingForAdmission", "gpus")
    assert "admitted by Kueue" in found.message


def test_a_suspended_job_wins_over_its_leftover_unschedulable_pods() -> None:
    found = queued(_job(suspend=True, queue="team-a"), [_unschedulable("r-a1-x", BUSY)])
    assert found is not None
    assert found.reason == "WaitingForAdmission"


def test_the_newest_live_workload_is_the_jobs() -> None:
    old = _workload(created="2026-01-01T11:00:00Z")
    new = _workload(created="2026-01-01T12:00:00Z")
    going = {**_workload(created="2026-01-01T13:00:00Z")}
    going["metadata"] = {**going["metadata"], "deletionTimestamp": "2026-01-01T13:00:01Z"}
    assert workload_of(_job(), [old, new, going]) is new
    assert workload_of(_job(), [going]) is None
    assert workload_of(_job(), []) is None


# -- the start clock ----------------------------------------------------------------------------------


def test_scheduled_since_is_the_latest_of_the_jobs_start_and_its_pods_scheduling() -> None:
    job = _job(start_time="2026-01-01T12:00:00Z")
    pods = [
        _pod("a", phase="Running", scheduled=("True", "", ""), at="2026-01-01T12:05:00Z"),
        _pod("b", scheduled=("True", "", ""), at="2026-01-01T12:20:00Z"),
        _unschedulable("c", BUSY, at="2026-01-01T12:30:00Z"),  # not scheduled: not a start
        _pod("d", scheduled=("True", "", ""), at="2026-01-01T12:40:00Z", deleting=True),  # going
    ]
    assert scheduled_since(job, pods) == "2026-01-01T12:20:00Z"
    # A Job Kueue admitted after its pods were last scheduled (a resumed Job): its startTime.
    assert scheduled_since(_job(start_time="2026-01-01T13:00:00Z"), pods) == "2026-01-01T13:00:00Z"
    assert scheduled_since(_job(), []) is None
    assert scheduled_since(_job(start_time=T0), []) == T0


def test_a_readmitted_jobs_clock_starts_at_its_readmission_not_its_first_start() -> None:
    first, readmitted, now = "2026-01-01T12:00:00Z", "2026-01-01T14:00:00Z", "2026-01-01T14:00:03Z"
    # The Job controller has synced the resume: its JobResumed time counts, whatever startTime says.
    resumed = _job(
        queue="q", start_time=first, conditions=[_cond("Suspended", "False", "JobResumed", at=readmitted)]
    )
    assert scheduled_since(resumed, []) == readmitted
    # Kueue has unsuspended it, the Job controller not yet: still Suspended=True with the previous
    # admission's startTime (not cleared on suspension without MutableSchedulingDirectivesForSuspendedJobs).
    pending = _job(
        queue="q", start_time=first, conditions=[_cond("Suspended", "True", "JobSuspended", at=first)]
    )
    assert scheduled_since(pending, [], now) == now
    # Never a future clock for a Job outside Kueue, nor for one still suspended.
    assert scheduled_since(_job(start_time=first), [], now) == first
    held = _job(queue="q", suspend=True, start_time=first, conditions=[_cond("Suspended", "True", at=first)])
    assert scheduled_since(held, [], now) == first
