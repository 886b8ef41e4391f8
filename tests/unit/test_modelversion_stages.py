"""ModelVersion stage Jobs as data: the deadline of a running stage, and which finished Jobs go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.builders.modelversion import compile_hash
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import modelversion
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.handlers.modelversion.stages import finished_jobs, past_deadline
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "mv-uid"
SPEC = ModelVersionSpec.model_validate(
    {
        "modelName": "digits",
        "source": {"artifactURI": "s3://b/m/"},
        "evaluation": {"datasetRef": {"name": "digits"}},
        "compile": {"target": "onnx", "deadlineSeconds": 600},
    }
)


def _job(
    name: str, *, started: datetime | None, deadline: int | None = 600, **condition: str
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if started is not None:
        status["startTime"] = to_rfc3339(started)
    if condition:
        status["conditions"] = [{"status": "True", "lastTransitionTime": to_rfc3339(NOW), **condition}]
    spec = {"activeDeadlineSeconds": deadline} if deadline else {}
    return {
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"{name}-uid",
            "resourceVersion": "1",
            "ownerReferences": [{"uid": UID, "controller": True, "kind": "ModelVersion", "name": "mv"}],
        },
        "spec": spec,
        "status": status,
    }


def _running_pod(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-x",
            "namespace": "ns",
            "uid": "pod-uid",
            "resourceVersion": "1",
            "ownerReferences": [{"uid": job["metadata"]["uid"], "controller": True, "kind": "Job"}],
        },
        "status": {"phase": "Running"},
    }


def _ctx(phase: str, job_name: str, *children: dict[str, Any]) -> ReconcileContext:
    body = {
        "kind": "ModelVersion",
        "metadata": {"name": "mv", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "5"},
        "spec": SPEC.wire(),
        "status": {
            "phase": phase,
            "observedGeneration": 1,
            "specHash": compile_hash(SPEC),
            "attempt": 1,
            "jobName": job_name,
            "pinned": {"spec": SPEC.wire()},
            "conditions": [{"type": "Ready", "status": "False", "reason": phase, "message": ""}],
        },
    }
    cache = Cache()
    cache.upsert("ModelVersion", body)
    for child in children:
        cache.upsert(str(child["kind"]), child)
    return ReconcileContext(body, None, OperatorConfig(stage_deadline_seconds=3600), lambda: NOW, cache)


def test_a_stage_past_its_deadline_is_over_whether_or_not_the_job_controller_said_so():
    started = NOW - timedelta(seconds=601)
    assert not past_deadline(_job("j", started=NOW - timedelta(seconds=100)), 3600, NOW)
    assert not past_deadline(_job("j", started=None), 3600, NOW)  # queued: not started, no deadline yet
    assert past_deadline(_job("j", started=started - timedelta(seconds=5)), 3600, NOW)
    stopped = _job("j", started=started, type="Failed", reason="DeadlineExceeded")
    assert past_deadline(stopped, 3600, NOW)
    assert not past_deadline(
        _job("j", started=started, type="Failed", reason="BackoffLimitExceeded"), 3600, NOW
    )
    assert not past_deadline(_job("j", started=started, type="Complete"), 3600, NOW)
    # A Job made before deadlines existed gets the operator's default.
    assert not past_deadline(_job("j", started=started, deadline=None), 3600, NOW)
    assert past_deadline(_job("j", started=NOW - timedelta(hours=2), deadline=None), 3600, NOW)


def test_a_running_stage_is_due_again_at_its_deadline():
    job = _job("mv-compile-a1", started=NOW - timedelta(seconds=100))
    outcome = modelversion.reconcile(SPEC, _ctx("Compiling", "mv-compile-a1", job, _running_pod(job)))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Compiling"
    assert outcome.requeue_after is not None
    assert 500 <= outcome.requeue_after <= 503  # 600 s from the start, plus the grace period


def test_a_stage_the_job_controller_stopped_fails_with_stage_deadline_exceeded_not_retried():
    job = _job(
        "mv-compile-a1", started=NOW - timedelta(seconds=700), type="Failed", reason="DeadlineExceeded"
    )
    outcome = modelversion.reconcile(SPEC, _ctx("Compiling", "mv-compile-a1", job))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Failed"
    ready = next(c for c in outcome.conditions if c.type == "Ready")
    assert ready.reason == "StageDeadlineExceeded"
    assert "600s" in ready.message
    assert "spec.compile.deadlineSeconds" in ready.message
    assert outcome.fields["failures"][-1]["retryable"] is False


def test_finished_jobs_go_once_their_result_is_recorded_never_the_one_the_stage_waits_on():
    compiled = _job("mv-compile-a1", started=NOW, type="Complete")
    evaluating = _job("mv-evaluate-a1", started=NOW)
    failed_attempt = _job("mv-evaluate-a0", started=NOW, type="Failed", reason="BackoffLimitExceeded")
    assert finished_jobs(_ctx("Evaluating", "mv-evaluate-a1", compiled, evaluating, failed_attempt)) == [
        "mv-compile-a1",
        "mv-evaluate-a0",
    ]
    # The current stage's Job, finished but its result not yet in status (the write may have failed).
    assert finished_jobs(_ctx("Compiling", "mv-compile-a1", compiled)) == []
    # Settled: every finished Job's result is in status.
    done = _job("mv-evaluate-a1", started=NOW, type="Complete")
    assert finished_jobs(_ctx("Ready", "mv-evaluate-a1", compiled, done)) == [
        "mv-compile-a1",
        "mv-evaluate-a1",
    ]


def test_a_deadline_changed_after_compile_started_applies_to_the_next_attempt():
    job = _job("mv-compile-a1", started=NOW - timedelta(seconds=100), deadline=None)  # made before deadlines
    ctx = _ctx("Compiling", "mv-compile-a1", job, _running_pod(job))
    longer = ModelVersionSpec.model_validate(
        {**SPEC.wire(), "compile": {"target": "onnx", "deadlineSeconds": 900}}
    )
    outcome = modelversion.reconcile(longer, ctx)
    assert isinstance(outcome, Outcome)
    ready = next(c for c in outcome.conditions if c.type == "SpecAccepted")
    assert ready.status == "True"  # not a compile-relevant change
    assert outcome.requeue_after is not None
    assert 800 <= outcome.requeue_after <= 803  # the spec's deadline now, not the pinned one
