"""A ModelVersion's compile and evaluate Jobs waiting for capacity: Queued, never a failed attempt.

Each test hands the reconcile the stage Job, its pods and its Kueue Workload as the watches would
deliver them. There is no apiserver in a unit test: the few writes the operator makes here (delete
a Job, merge-patch its activeDeadlineSeconds) go to a recording stand-in of the kubernetes
ApiClient's HTTP layer (`RecordingApi`), which answers a patch with the patched Job. The same paths
against the real apiserver, Job controller and kube-scheduler: tests/integration/
test_modelversion_queueing.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.builders.modelversion import compile_hash
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import modelversion
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import Clients, ReconcileContext
from mlops_operator.handlers.modelversion.stages import (
    HELD_DEADLINE_ANNOTATION,
    current_stage,
    deadline_hold,
    deadline_of,
)
from mlops_operator.observation.queueing import queued
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "mv-uid"
BASE = {
    "modelName": "digits",
    "source": {"artifactURI": "s3://b/m/"},
    "evaluation": {"datasetRef": {"name": "digits"}, "deadlineSeconds": 600},
    "compile": {"target": "tensorrt", "deadlineSeconds": 600},
}
SPEC = ModelVersionSpec.model_validate(BASE)
BUSY = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: "
    "2 No preemption victims found for incoming pod."
)
NEVER = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes "
    "are available: 2 Preemption is not helpful for scheduling."
)


@dataclass
class _Response:
    status: int
    data: bytes
    reason: str = "OK"

    @property
    def response(self) -> _Response:
        return self

    def read(self) -> bytes:
        return self.data


@dataclass
class RecordingApi:
    """Stands in for kubernetes.client.ApiClient under RawApi: records each request; a merge patch of
    a Job answers with that Job patched (None removes a field, as the apiserver does)."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def param_serialize(
        self, method: str, path: str, **_: Any
    ) -> tuple[str, str, dict[str, str], None, None]:
        return method, path, {}, None, None

    def call_api(self, method: str, url: str, *, body: Any = None, **_: Any) -> _Response:
        self.requests.append((method, url, body))
        if method == "PATCH":
            job = _merge(self.jobs[url.rsplit("/", 1)[1]], body)
            return _Response(200, json.dumps(job).encode())
        return _Response(200, b"{}")

    def calls(self, method: str) -> list[tuple[str, Any]]:
        return [(url.rsplit("/", 1)[1], body) for m, url, body in self.requests if m == method]


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = _merge(merged.get(key) or {}, value)
        else:
            merged[key] = value
    return merged


def _ago(seconds: float) -> str:
    return to_rfc3339(NOW - timedelta(seconds=seconds))


def _job(
    name: str = "mv-compile-a1",
    *,
    created_ago: float,
    started_ago: float | None,
    deadline: int | None = 600,
    suspend: bool = False,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions or []}
    if started_ago is not None:
        status["startTime"] = _ago(started_ago)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"{name}-uid",
            "resourceVersion": "1",
            "creationTimestamp": _ago(created_ago),
            "labels": labels or {},
            "annotations": annotations or {},
            "ownerReferences": [{"uid": UID, "controller": True, "kind": "ModelVersion", "name": "mv"}],
        },
        "spec": {"suspend": suspend, **({"activeDeadlineSeconds": deadline} if deadline else {})},
        "status": status,
    }


def _pod(job: dict[str, Any], *, scheduled: tuple[str, str, str] | None, **status: Any) -> dict[str, Any]:
    """A pod of `job`; `scheduled` is its PodScheduled condition (status, reason, message) and when."""
    conditions = []
    if scheduled is not None:
        state, message, since = scheduled
        reason = {"True": "", "False": "Unschedulable"}[state]
        conditions.append(
            {"type": "PodScheduled", "status": state, "reason": reason, "message": message,
             "lastTransitionTime": since}
        )  # fmt: skip
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-x",
            "namespace": "ns",
            "uid": f"{job['metadata']['name']}-pod",
            "resourceVersion": "1",
            "ownerReferences": [{"uid": job["metadata"]["uid"], "controller": True, "kind": "Job"}],
        },
        "status": {"phase": "Pending", "conditions": conditions, **status},
    }


def _unschedulable(job: dict[str, Any], message: str = BUSY, since_ago: float = 30) -> dict[str, Any]:
    return _pod(job, scheduled=("False", message, _ago(since_ago)))


def _running(job: dict[str, Any], scheduled_ago: float) -> dict[str, Any]:
    return _pod(job, scheduled=("True", "", _ago(scheduled_ago)), phase="Running")


def _workload(job: dict[str, Any], **condition: str) -> dict[str, Any]:
    return {
        "kind": "Workload",
        "metadata": {
            "name": f"job-{job['metadata']['name']}",
            "namespace": "ns",
            "uid": "wl-uid",
            "resourceVersion": "1",
            "creationTimestamp": job["metadata"]["creationTimestamp"],
            "ownerReferences": [{"uid": job["metadata"]["uid"], "controller": True, "kind": "Job"}],
        },
        "spec": {"queueName": "team-a"},
        "status": {"conditions": [{"lastTransitionTime": _ago(60), **condition}]},
    }


def _ctx(
    phase: str,
    *children: dict[str, Any],
    spec: ModelVersionSpec = SPEC,
    api: RecordingApi | None = None,
    **status: Any,
) -> tuple[ReconcileContext, RecordingApi]:
    api = api or RecordingApi()
    body = {
        "kind": "ModelVersion",
        "metadata": {"name": "mv", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "5"},
        "spec": spec.wire(),
        "status": {
            "phase": phase,
            "observedGeneration": 1,
            "specHash": compile_hash(spec),
            "attempt": 1,
            "jobName": "mv-compile-a1",
            "pinned": {"spec": spec.wire()},
            "conditions": [{"type": "Ready", "status": "False", "reason": phase, "message": ""}],
            **status,
        },
    }
    cache = Cache()
    cache.upsert("ModelVersion", body)
    for child in children:
        cache.upsert(str(child["kind"]), child)
        if child["kind"] == "Job":
            api.jobs[child["metadata"]["name"]] = child
    config = OperatorConfig(stage_deadline_seconds=3600, start_deadline_seconds=600)
    return ReconcileContext(body, Clients(api=api), config, lambda: NOW, cache), api


def _reconcile(ctx: ReconcileContext, spec: ModelVersionSpec = SPEC) -> Outcome:
    outcome = modelversion.reconcile(spec, ctx)
    assert isinstance(outcome, Outcome), outcome
    return outcome


def _ready(outcome: Outcome) -> Any:
    return next(c for c in outcome.conditions if c.type == "Ready")


@pytest.mark.parametrize(("message", "reason"), [(BUSY, "Unschedulable"), (NEVER, "NoNodeFits")])
def test_an_unschedulable_stage_pod_past_every_deadline_stays_queued_with_its_job(message, reason):
    # Made (and started, by the Job controller) 2000 s ago: past the 600 s start and stage deadlines.
    job = _job(created_ago=2000, started_ago=2000)
    ctx, api = _ctx("Compiling", job, _unschedulable(job, message, since_ago=1999))
    outcome = _reconcile(ctx)
    assert outcome.phase == "Queued"
    assert (_ready(outcome).status, _ready(outcome).reason) == ("False", reason)
    assert message in _ready(outcome).message
    assert outcome.fields["queue"]["reason"] == reason
    assert outcome.fields["queue"]["since"] == _ago(1999)
    assert outcome.fields["currentStage"] == "compile"
    assert "failures" not in outcome.fields
    assert outcome.requeue_after is None  # no timeout: the pod's scheduling wakes it
    assert api.calls("DELETE") == []
    # The Job controller's clock is held off while the pod waits: its deadline is kept aside.
    assert api.calls("PATCH") == [
        (
            "mv-compile-a1",
            {
                "metadata": {"annotations": {HELD_DEADLINE_ANNOTATION: "600"}},
                "spec": {"activeDeadlineSeconds": None},
            },
        )
    ]


def test_a_queued_version_looked_at_again_changes_nothing_and_keeps_when_it_began():
    job = _job(created_ago=900, started_ago=900, deadline=None, annotations={HELD_DEADLINE_ANNOTATION: "600"})
    queue = {"reason": "Unschedulable", "message": "m", "since": _ago(900)}
    ctx, api = _ctx("Queued", job, _unschedulable(job, since_ago=899), currentStage="compile", queue=queue)
    outcome = _reconcile(ctx)
    assert outcome.phase == "Queued"
    assert outcome.fields["queue"]["since"] == _ago(900)
    assert api.requests == []  # held already: no write


def test_a_stage_job_kueue_holds_suspended_is_waiting_for_admission():
    job = _job(
        "mv-evaluate-a1",
        created_ago=300,
        started_ago=None,
        suspend=True,
        labels={"kueue.x-k8s.io/queue-name": "team-a"},
        conditions=[{"type": "Suspended", "status": "True", "lastTransitionTime": _ago(299)}],
    )
    pending = _workload(
        job,
        type="QuotaReserved",
        status="False",
        reason="Pending",
        message="couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu",
    )
    ctx, api = _ctx(
        "Evaluating", job, pending, jobName="mv-evaluate-a1", engine={"uri": "s3://b/e/model.plan"}
    )
    outcome = _reconcile(ctx)
    assert outcome.phase == "Queued"
    assert _ready(outcome).reason == "WaitingForAdmission"
    assert "insufficient quota for nvidia.com/gpu" in _ready(outcome).message
    assert _ready(outcome).message.startswith("evaluate attempt 1: ")
    assert outcome.fields["queue"] == {
        "reason": "WaitingForAdmission",
        "message": outcome.fields["queue"]["message"],
        "since": _ago(299),
        "localQueue": "team-a",
    }
    assert outcome.fields["currentStage"] == "evaluate"
    assert api.requests == []  # a suspended Job has no running clock to hold


def test_a_stage_job_kueue_evicted_is_preempted_and_queued_again_not_failed():
    job = _job(
        created_ago=900,
        started_ago=None,
        suspend=True,
        labels={"kueue.x-k8s.io/queue-name": "team-a"},
        conditions=[{"type": "Suspended", "status": "True", "lastTransitionTime": _ago(10)}],
    )
    evicted = _workload(
        job, type="Evicted", status="True", reason="Preempted", message="preempted by a higher priority"
    )
    killed = _pod(job, scheduled=("True", "", _ago(800)), phase="Failed", reason="Terminated")
    ctx, _ = _ctx("Compiling", job, evicted, killed)
    outcome = _reconcile(ctx)
    assert (outcome.phase, _ready(outcome).reason) == ("Queued", "Preempted")
    assert "failures" not in outcome.fields


def test_after_kueue_admits_it_the_deadline_counts_from_the_jobs_start_not_its_creation():
    # Created an hour ago, admitted (unsuspended: the Job controller restarts startTime) 100 s ago.
    job = _job(created_ago=3600, started_ago=100)
    queue = {"reason": "WaitingForAdmission", "message": "m", "since": _ago(3600), "localQueue": "team-a"}
    ctx, api = _ctx("Queued", job, _running(job, scheduled_ago=99), currentStage="compile", queue=queue)
    outcome = _reconcile(ctx)
    assert (outcome.phase, _ready(outcome).reason) == ("Compiling", "Compiling")
    assert outcome.fields["queue"] is None  # left the queue
    assert outcome.requeue_after is not None
    assert 500 <= outcome.requeue_after <= 503  # 600 s from admission, plus the grace period
    assert api.requests == []


def test_a_pod_scheduled_after_a_wait_gets_its_deadline_back_counted_from_the_scheduling():
    # The Job controller started the Job 1000 s ago; its pod waited for a node until 100 s ago.
    job = _job(
        created_ago=1000, started_ago=1000, deadline=None, annotations={HELD_DEADLINE_ANNOTATION: "600"}
    )
    queue = {"reason": "Unschedulable", "message": "m", "since": _ago(1000)}
    ctx, api = _ctx("Queued", job, _running(job, scheduled_ago=100), currentStage="compile", queue=queue)
    outcome = _reconcile(ctx)
    assert outcome.phase == "Compiling"
    assert outcome.fields["queue"] is None
    # activeDeadlineSeconds back, lengthened by the 900 s wait: due 600 s after the scheduling.
    assert api.calls("PATCH") == [("mv-compile-a1", {"spec": {"activeDeadlineSeconds": 1500}})]
    assert outcome.requeue_after is not None
    assert 500 <= outcome.requeue_after <= 503
    assert api.calls("DELETE") == []
    # And the stage deadline, when it comes, says the stage's 600 s, not 1500 s.
    restored = {**job, "spec": {"activeDeadlineSeconds": 1500}}
    assert deadline_of(restored, 3600) == (600, NOW + timedelta(seconds=500))


def test_the_start_deadline_of_a_stuck_pod_counts_from_its_scheduling():
    job = _job(
        created_ago=2000, started_ago=2000, deadline=None, annotations={HELD_DEADLINE_ANNOTATION: "3000"}
    )
    pulling = _pod(
        job,
        scheduled=("True", "", _ago(100)),
        containerStatuses=[
            {"name": "stage", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "slow"}}}
        ],
    )
    ctx, api = _ctx(
        "Queued", job, pulling, currentStage="compile", queue={"reason": "Unschedulable", "since": _ago(2000)}
    )
    outcome = _reconcile(ctx)
    assert (outcome.phase, _ready(outcome).reason) == ("Compiling", "ImagePullBackOff")
    assert outcome.requeue_after is not None
    assert 499 <= outcome.requeue_after <= 500  # 600 s after the scheduling
    assert api.calls("DELETE") == []


def test_a_stuck_pod_admitted_late_by_kueue_has_the_specs_start_deadline_from_its_admission():
    spec = ModelVersionSpec.model_validate({**BASE, "scheduling": {"startDeadlineSeconds": 900}})
    # Created 2000 s ago, held by Kueue until 100 s ago; its pod was scheduled then and cannot pull.
    job = _job(created_ago=2000, started_ago=100, deadline=3000)
    pulling = _pod(
        job,
        scheduled=("True", "", _ago(100)),
        containerStatuses=[
            {"name": "stage", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "slow"}}}
        ],
    )
    ctx, api = _ctx("Compiling", job, pulling, spec=spec)
    outcome = _reconcile(ctx, spec)
    assert (outcome.phase, _ready(outcome).reason) == ("Compiling", "ImagePullBackOff")
    assert outcome.requeue_after == pytest.approx(800)  # the spec's 900 s from the admission
    assert api.requests == []


def test_the_queue_timeout_gives_up_with_queue_timeout_exceeded_not_retried_and_deletes_the_job():
    spec = ModelVersionSpec.model_validate({**BASE, "scheduling": {"queueTimeoutSeconds": 300}})
    job = _job(created_ago=400, started_ago=400)
    ctx, api = _ctx(
        "Compiling", job, _unschedulable(job, NEVER, since_ago=400), spec=spec, currentStage="compile"
    )
    outcome = _reconcile(ctx, spec)
    assert outcome.phase == "Failed"
    assert _ready(outcome).reason == "QueueTimeoutExceeded"
    assert "queueTimeoutSeconds (300s)" in _ready(outcome).message
    assert "NoNodeFits" in _ready(outcome).message
    (failure,) = outcome.fields["failures"]
    assert (failure["stage"], failure["reason"], failure["retryable"]) == (
        "compile",
        "QueueTimeoutExceeded",
        False,
    )
    assert outcome.fields["queue"] is None
    assert outcome.fields["currentStage"] is None
    assert api.calls("DELETE") == [
        ("mv-compile-a1", {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
    ]


def test_before_its_queue_timeout_a_queued_stage_is_due_again_when_it_falls():
    spec = ModelVersionSpec.model_validate({**BASE, "scheduling": {"queueTimeoutSeconds": 300}})
    job = _job(created_ago=100, started_ago=100)
    ctx, api = _ctx("Compiling", job, _unschedulable(job, since_ago=100), spec=spec)
    outcome = _reconcile(ctx, spec)
    assert outcome.phase == "Queued"
    assert outcome.requeue_after == pytest.approx(200)
    assert api.calls("DELETE") == []


def test_a_restart_mid_queue_resumes_the_stage_that_waited():
    # Evaluate's second attempt was queued when the operator stopped; its pod now runs.
    job = _job("mv-evaluate-a2", created_ago=400, started_ago=50)
    status = {
        "jobName": "mv-evaluate-a2",
        "attempt": 2,
        "currentStage": "evaluate",
        "engine": {"uri": "s3://b/e/model.plan"},
        "queue": {"reason": "WaitingForAdmission", "since": _ago(400)},
    }
    ctx, _ = _ctx("Queued", job, _running(job, scheduled_ago=49), **status)
    outcome = _reconcile(ctx)
    assert (outcome.phase, _ready(outcome).reason) == ("Evaluating", "Evaluating")
    assert "evaluate attempt 2" in _ready(outcome).message
    assert outcome.fields["queue"] is None
    # Which stage a Queued version is in: recorded; else compile is done once there is an engine.
    assert current_stage({"phase": "Queued", "currentStage": "evaluate"}) == "evaluate"
    assert current_stage({"phase": "Queued", "engine": {"uri": "u"}}) == "evaluate"
    assert current_stage({"phase": "Queued"}) == "compile"
    assert current_stage({"phase": "Compiling", "currentStage": "evaluate"}) == "compile"
    assert current_stage({"phase": "Registering", "currentStage": "evaluate"}) is None


def test_a_queued_stage_whose_pod_then_fails_retries_as_its_stage_not_as_queued():
    job = _job(
        created_ago=400,
        started_ago=400,
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    )
    evicted = _pod(
        job, scheduled=("True", "", _ago(30)), phase="Failed", reason="Evicted", message="node pressure"
    )
    ctx, _ = _ctx(
        "Queued", job, evicted, currentStage="compile", queue={"reason": "Unschedulable", "since": _ago(400)}
    )
    outcome = _reconcile(ctx)
    assert (outcome.phase, _ready(outcome).reason) == ("Compiling", "BackoffBeforeRetry")
    assert outcome.fields["attempt"] == 2
    assert outcome.fields["queue"] is None


def test_deadline_hold_is_level_based():
    running_clock = _job(created_ago=100, started_ago=100)
    waiting = queued(running_clock, [_unschedulable(running_clock)])
    assert waiting is not None
    held = deadline_hold(running_clock, [], waiting)
    assert held == {
        "metadata": {"annotations": {HELD_DEADLINE_ANNOTATION: "600"}},
        "spec": {"activeDeadlineSeconds": None},
    }
    # Once held, nothing more while it waits; nothing for a Job Kueue holds, or one that never had one.
    on_hold = _merge(running_clock, held)
    assert deadline_hold(on_hold, [], waiting) is None
    assert deadline_hold(_job(created_ago=1, started_ago=None, suspend=True), [], waiting) is None
    assert deadline_hold(_job(created_ago=100, started_ago=100, deadline=None), [], waiting) is None
    assert deadline_of(on_hold, 3600) == (600, None)  # no due time while held
    # Scheduled 40 s after the start: back, 40 s longer; then nothing more.
    scheduled = [_running(on_hold, scheduled_ago=60)]
    assert deadline_hold(on_hold, scheduled, None) == {"spec": {"activeDeadlineSeconds": 640}}
    assert deadline_hold(_merge(on_hold, {"spec": {"activeDeadlineSeconds": 640}}), scheduled, None) is None
    # A finished Job is left alone.
    done = _job(created_ago=100, started_ago=100, conditions=[{"type": "Complete", "status": "True"}])
    assert deadline_hold(done, [], waiting) is None
