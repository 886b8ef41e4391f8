"""TrainingRun reconcile while it waits for capacity: Queued is a queue, never a failed attempt.

As in test_trainingrun_reconcile.py, the cache holds the Job, pods and Kueue Workload a watch would
have delivered and the context has no API clients (a call would raise), so "no Job deleted, no
request" is part of what is tested. Only the finished run's Job deletion needs a client: there a
recorder stands in for the apiserver (no real one runs in a unit test; the integration test
tests/integration/test_trainingrun_queueing.py sees the real Job go).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mlops_operator.api.v1alpha1 import TrainingRunSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import trainingrun
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import Clients, ReconcileContext
from mlops_operator.observation.queueing import QUEUE_NAME_LABEL
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339
from tests.unit.test_trainingrun_reconcile import NOW, SPEC, _owned

BUSY = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: "
    "0/2 nodes are available: 2 No preemption victims found for incoming pod."
)
TOO_BIG = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: "
    "0/2 nodes are available: 2 Preemption is not helpful for scheduling."
)
DEADLINE = 600  # the operator's start deadline in these tests


def _ago(seconds: float) -> str:
    return to_rfc3339(NOW - timedelta(seconds=seconds))


def _job(*, suspend: bool = False, queue: str | None = None, **status: Any) -> dict[str, Any]:
    job = _owned("Job", "r-a1", "run-uid", "job-uid", spec={"suspend": suspend}, status=status)
    job["metadata"]["creationTimestamp"] = _ago(1200)
    if queue:
        job["metadata"]["labels"] = {QUEUE_NAME_LABEL: queue}
    return job


def _pod(
    name: str = "r-a1-x",
    *,
    phase: str = "Pending",
    scheduled: tuple[str, str, str] | None = None,
    at: str | None = None,
    waiting: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if scheduled is not None:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": scheduled[0],
                "reason": scheduled[1],
                "message": scheduled[2],
                "lastTransitionTime": at or _ago(1200),
            }
        ]
    if waiting:
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"waiting": {"reason": waiting, "message": f"{waiting}: trainer:nope"}},
            }
        ]
    pod = _owned("Pod", name, "job-uid", f"uid-{name}", status=status)
    if deleting:
        pod["metadata"]["deletionTimestamp"] = _ago(1)
    return pod


def _unschedulable(message: str = BUSY, since: float = 1190) -> dict[str, Any]:
    return _pod(scheduled=("False", "Unschedulable", message), at=_ago(since))


def _workload(*conditions: dict[str, Any]) -> dict[str, Any]:
    workload = _owned(
        "Workload", "job-r-a1-abcde", "job-uid", "wl-uid", status={"conditions": list(conditions)}
    )
    workload["spec"] = {"queueName": "team-a"}
    return workload


def _cache(job: dict[str, Any], *objects: dict[str, Any]) -> Cache:
    cache = Cache()
    cache.upsert(
        "TrainingRun", {"kind": "TrainingRun", "metadata": {"name": "r", "namespace": "ns", "uid": "run-uid"}}
    )
    cache.upsert("Job", job)
    for obj in objects:
        cache.upsert(obj["kind"], obj)
    return cache


def _ctx(
    cache: Cache,
    spec: TrainingRunSpec = SPEC,
    *,
    clients: Clients | None = None,
    **status: Any,
) -> ReconcileContext:
    base = {
        "phase": "Starting",
        "attempt": 1,
        "jobName": "r-a1",
        "attemptStartTime": _ago(1200),  # 20 minutes: long past the start deadline
        "startTime": _ago(1200),
        "specHash": trainingrun.spec_hash(spec),
        "observedGeneration": 1,
    }
    body = {
        "metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "generation": 1},
        "status": {**base, **status},
    }
    config = OperatorConfig(start_deadline_seconds=DEADLINE)
    return ReconcileContext(body, clients, config, now=lambda: NOW, cache=cache)


def _with(spec: TrainingRunSpec = SPEC, **scheduling: Any) -> TrainingRunSpec:
    return spec.model_copy(update={"scheduling": spec.scheduling.model_copy(update=scheduling)})


def _reconcile(ctx: ReconcileContext, spec: TrainingRunSpec = SPEC) -> Outcome:
    outcome = trainingrun.reconcile(spec, ctx)
    assert isinstance(outcome, Outcome)
    return outcome


def _histogram(queue: str = "") -> tuple[float, float]:
    labels = {"queue": queue}
    count = REGISTRY.get_sample_value("mlops_trainingrun_queue_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("mlops_trainingrun_queue_seconds_sum", labels) or 0.0
    return count, total


# -- the scheduler cannot place the pods -----------------------------------------------------------------


def test_pods_waiting_for_gpus_past_the_start_deadline_are_queued_not_failed():
    # Created 20 minutes ago with a 10-minute start deadline: the old handler failed this attempt
    # (StartDeadlineExceeded, a retry with a new Job). No clients: deleting the Job would raise.
    outcome = _reconcile(_ctx(_cache(_job(), _unschedulable())))
    assert outcome.phase == "Queued"
    assert "failures" not in outcome.fields
    assert "attempt" not in outcome.fields
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", "Unschedulable")
    assert BUSY in ready.message
    queue = outcome.fields["queue"]
    assert queue["reason"] == "Unschedulable"
    assert BUSY in queue["message"]
    assert queue["since"] == _ago(1190)  # when the scheduler first said so
    assert "localQueue" not in queue
    assert outcome.requeue_after is None  # no timeout: only a change of the pods wakes it


def test_pods_no_node_can_take_are_no_node_fits():
    outcome = _reconcile(_ctx(_cache(_job(), _unschedulable(TOO_BIG))))
    assert outcome.phase == "Queued"
    assert outcome.conditions[0].reason == "NoNodeFits"
    assert outcome.fields["queue"]["reason"] == "NoNodeFits"
    assert "failures" not in outcome.fields


def test_a_stretch_already_queued_keeps_its_start():
    # The pods were re-tried by the scheduler (a newer condition time): the wait began earlier.
    ctx = _ctx(
        _cache(_job(), _unschedulable(since=5)),
        queue={"reason": "Unschedulable", "message": "m", "since": _ago(900)},
    )
    before = _histogram()
    outcome = _reconcile(ctx)
    assert outcome.fields["queue"]["since"] == _ago(900)
    assert _histogram() == before  # still waiting: nothing observed yet


# -- Kueue holds the Job --------------------------------------------------------------------------------


def test_a_job_kueue_holds_suspended_waits_for_admission_in_its_local_queue():
    pending = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
        "in flavor h100, 8 more needed",
        "lastTransitionTime": _ago(1199),
    }
    cache = _cache(_job(suspend=True, queue="team-a"), _workload(pending))
    outcome = _reconcile(_ctx(cache))
    assert outcome.phase == "Queued"
    assert "failures" not in outcome.fields
    queue = outcome.fields["queue"]
    assert (queue["reason"], queue["localQueue"]) == ("WaitingForAdmission", "team-a")
    assert "8 more needed" in queue["message"]
    assert outcome.conditions[0].reason == "WaitingForAdmission"


@pytest.mark.parametrize(
    "pods",
    [
        [_pod(phase="Failed", scheduled=("True", "", ""))],
        [_pod(phase="Running", scheduled=("True", "", ""), deleting=True)],
        [_pod(phase="Failed", scheduled=("True", "", ""), deleting=True)],
    ],
    ids=["failed", "deleting", "failed-and-deleting"],
)
def test_a_suspended_jobs_ending_pods_are_not_a_failed_attempt(pods):
    # Kueue evicted the Job (preemption): the Job controller deletes its pods. Not a failure.
    evicted = {
        "type": "Evicted",
        "status": "True",
        "reason": "Preempted",
        "message": "Preempted to accommodate a workload (UID: u, JobUID: j) due to prioritization in the "
        "ClusterQueue",
        "lastTransitionTime": _ago(3),
    }
    cache = _cache(_job(suspend=True, queue="team-a", startTime=_ago(1000)), _workload(evicted), *pods)
    outcome = _reconcile(_ctx(cache, phase="Running"))
    assert outcome.phase == "Queued"
    assert "failures" not in outcome.fields
    assert "attempt" not in outcome.fields
    assert outcome.fields["queue"]["reason"] == "Preempted"
    assert outcome.fields["queue"]["since"] == _ago(3)


# -- leaving the queue -------------------------------------------------------------------------------


def test_leaving_the_queue_clears_it_adds_the_stretch_and_observes_the_histogram():
    running = _pod(phase="Running", scheduled=("True", "", ""), at=_ago(2))
    ctx = _ctx(
        _cache(_job(startTime=_ago(1200)), running),
        phase="Queued",
        queue={"reason": "Unschedulable", "message": "m", "since": _ago(600)},
        queuedSeconds=100.5,
    )
    count, total = _histogram()
    outcome = _reconcile(ctx)
    assert outcome.phase == "Running"
    assert outcome.fields["queue"] is None  # cleared in the status patch
    assert outcome.fields["queuedSeconds"] == pytest.approx(700.5)
    assert _histogram() == (count + 1, pytest.approx(total + 600))


def test_leaving_the_queue_of_a_local_queue_is_observed_under_it():
    running = _pod(phase="Running", scheduled=("True", "", ""), at=_ago(2))
    ctx = _ctx(
        _cache(_job(queue="team-a", startTime=_ago(30)), running),
        phase="Queued",
        queue={"reason": "WaitingForAdmission", "message": "m", "since": _ago(40), "localQueue": "team-a"},
    )
    count, total = _histogram("team-a")
    outcome = _reconcile(ctx)
    assert (outcome.phase, outcome.fields["queuedSeconds"]) == ("Running", 40)
    assert _histogram("team-a") == (count + 1, pytest.approx(total + 40))


def test_a_run_that_never_queued_adds_nothing():
    running = _pod(phase="Running", scheduled=("True", "", ""), at=_ago(2))
    count, _ = _histogram()
    outcome = _reconcile(_ctx(_cache(_job(startTime=_ago(30)), running)))
    assert outcome.phase == "Running"
    assert "queue" not in outcome.fields
    assert "queuedSeconds" not in outcome.fields
    assert _histogram()[0] == count


# -- the queue timeout --------------------------------------------------------------------------------


class _Recorder:
    """Stands in for the apiserver's Job deletion (no apiserver in a unit test)."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, str, str]] = []

    def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        self.deleted.append((kind, namespace, name, propagation))


class _RecordingClients(Clients):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__(api=None)
        self._recorder = recorder

    @property
    def raw(self) -> Any:
        return self._recorder


def test_before_its_queue_timeout_a_run_is_woken_when_it_falls_due():
    spec = _with(queue_timeout_seconds=1800)
    outcome = _reconcile(_ctx(_cache(_job(), _unschedulable()), spec), spec)
    assert outcome.phase == "Queued"
    assert outcome.requeue_after == pytest.approx(1800 - 1190)


def test_the_queue_timeout_fails_the_run_not_retried_and_its_job_is_deleted():
    spec = _with(queue_timeout_seconds=300)  # maxAttempts 3: a retryable failure would retry
    assert spec.retry.max_attempts == 3
    cache = _cache(_job(), _unschedulable())
    count, total = _histogram()
    outcome = _reconcile(_ctx(cache, spec), spec)
    assert outcome.phase == "Failed"
    (failure,) = outcome.fields["failures"]
    assert (failure["reason"], failure["retryable"], failure["attempt"]) == ("QueueTimeoutExceeded", False, 1)
    assert "queueTimeoutSeconds (300s)" in failure["message"]
    assert BUSY in failure["message"]
    assert outcome.conditions[0].reason == "QueueTimeoutExceeded"
    assert outcome.fields["queue"] is None
    assert outcome.fields["queuedSeconds"] == pytest.approx(1190)
    assert _histogram() == (count + 1, pytest.approx(total + 1190))

    # The status as the engine writes it; the next reconcile (_finished) deletes the Job, in the
    # foreground, which takes the pods (and the Job's place in Kueue's queue) with it.
    status = {k: v for k, v in outcome.fields.items() if v is not None}
    recorder = _Recorder()
    finished = _ctx(cache, spec, clients=_RecordingClients(recorder), phase="Failed", **status)
    trainingrun.reconcile(spec, finished)
    assert recorder.deleted == [("Job", "ns", "r-a1", "Foreground")]


def test_a_run_failed_otherwise_keeps_its_job():
    recorder = _Recorder()
    failures = [{"attempt": 1, "reason": "OOMKilled", "retryable": False, "message": "m"}]
    ctx = _ctx(
        _cache(_job()),
        clients=_RecordingClients(recorder),
        phase="Failed",
        failures=failures,
        completionTime=_ago(1),
    )
    trainingrun.reconcile(SPEC, ctx)
    assert recorder.deleted == []


# -- the start deadline counts from scheduling ------------------------------------------------------------


def test_the_start_deadline_counts_from_when_the_pod_was_scheduled():
    # Waited 20 minutes in the queue, scheduled 5 s ago, now pulling its image: 595 s are left of a
    # 600 s deadline. The old handler counted from the Job's creation and failed it.
    pulling = _pod(scheduled=("True", "", ""), at=_ago(5), waiting="ImagePullBackOff")
    outcome = _reconcile(_ctx(_cache(_job(startTime=_ago(1200)), pulling)))
    assert outcome.phase == "Starting"
    assert "failures" not in outcome.fields
    assert outcome.conditions[0].reason == "ImagePullBackOff"
    assert outcome.requeue_after == pytest.approx(595)


def test_the_start_deadline_still_fails_a_pod_stuck_after_it_was_scheduled():
    pulling = _pod(scheduled=("True", "", ""), at=_ago(601), waiting="ImagePullBackOff")
    outcome = _reconcile(_ctx(_cache(_job(startTime=_ago(1200)), pulling)))
    assert (outcome.phase, outcome.fields["attempt"]) == ("Pending", 2)
    failure = outcome.fields["failures"][-1]
    assert (failure["reason"], failure["retryable"]) == ("StartDeadlineExceeded", True)
    assert "ImagePullBackOff" in failure["message"]


def test_the_start_deadline_counts_from_kueues_admission():
    # A Job Kueue admitted 5 s ago (its startTime is reset on admission); its pod not yet made.
    outcome = _reconcile(_ctx(_cache(_job(queue="team-a", startTime=_ago(5)))))
    assert outcome.phase == "Starting"
    assert "failures" not in outcome.fields
