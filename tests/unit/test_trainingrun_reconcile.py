"""TrainingRun reconcile decisions from observed children, as data: the cache holds the Job and pods
a watch would have delivered, the reconcile reads only from it.

These paths make no API call (the context has no clients: a call would raise), which is itself part
of what is tested: following a run costs no request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import TrainingRunSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import trainingrun
from mlops_operator.handlers.base import Outcome, Unchanged
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339
from tests.samples import load, valid_samples

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN = load(next(p for p in valid_samples() if "trainingrun" in p.name))
SPEC = TrainingRunSpec.model_validate(RUN["spec"])


def _owned(kind: str, name: str, owner: str, uid: str, **extra: Any) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": "ns",
        "uid": uid,
        "resourceVersion": "1",
        "creationTimestamp": to_rfc3339(NOW - timedelta(seconds=30)),
        "ownerReferences": [{"uid": owner, "controller": True, "kind": "X", "name": "x"}],
    }
    return {"kind": kind, "metadata": meta, **extra}


def _stuck_pod(reason: str, message: str) -> dict[str, Any]:
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}
        ],
    }
    return _owned("Pod", "r-a1-xyz", "job-uid", "pod-uid", status=status)


def _ctx(cache: Cache, started_ago: timedelta, spec: TrainingRunSpec = SPEC) -> ReconcileContext:
    status = {
        "phase": "Starting",
        "attempt": 1,
        "jobName": "r-a1",
        "attemptStartTime": to_rfc3339(NOW - started_ago),
        "startTime": to_rfc3339(NOW - started_ago),
        "specHash": trainingrun.spec_hash(spec),
        "observedGeneration": 1,
    }
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "generation": 1}, "status": status}
    config = OperatorConfig(start_deadline_seconds=300)
    return ReconcileContext(body, None, config, now=lambda: NOW, cache=cache)


def _cache(*objects: dict[str, Any]) -> Cache:
    cache = Cache()  # as the engine's: the run itself, its Job, and whatever pods the test adds
    cache.upsert(
        "TrainingRun", {"kind": "TrainingRun", "metadata": {"name": "r", "namespace": "ns", "uid": "run-uid"}}
    )
    cache.upsert("Job", _owned("Job", "r-a1", "run-uid", "job-uid", status={}))
    for obj in objects:
        cache.upsert(obj["kind"], obj)
    return cache


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "trainer:nope"'),
        ("CreateContainerConfigError", 'secret "wandb" not found'),
    ],
)
def test_a_pod_that_cannot_start_says_why_before_the_deadline(reason, message):
    outcome = trainingrun.reconcile(SPEC, _ctx(_cache(_stuck_pod(reason, message)), timedelta(seconds=60)))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Starting"
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason, ready.message) == ("False", reason, message)
    assert outcome.requeue_after == 240  # woken again when the deadline falls due, not polled


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [("ImagePullBackOff", True), ("CreateContainerConfigError", True), ("InvalidImageName", False)],
)
def test_the_start_deadline_fails_the_attempt_retryable_or_not(reason, retryable):
    outcome = trainingrun.reconcile(SPEC, _ctx(_cache(_stuck_pod(reason, "m")), timedelta(seconds=301)))
    assert isinstance(outcome, Outcome)
    failure = outcome.fields["failures"][-1]
    assert failure["reason"] == "StartDeadlineExceeded"
    assert failure["retryable"] is retryable
    assert reason in failure["message"]
    if retryable:
        assert (outcome.phase, outcome.fields["attempt"]) == ("Pending", 2)
    else:
        assert outcome.phase == "Failed"


def test_the_runs_own_start_deadline_overrides_the_operators():
    spec = SPEC.model_copy(
        update={"scheduling": SPEC.scheduling.model_copy(update={"start_deadline_seconds": 30})}
    )
    cache = _cache(_stuck_pod("ImagePullBackOff", "m"))
    outcome = trainingrun.reconcile(spec, _ctx(cache, timedelta(seconds=31), spec))
    assert isinstance(outcome, Outcome)
    assert outcome.fields["failures"][-1]["reason"] == "StartDeadlineExceeded"
    assert "within 30s" in outcome.fields["failures"][-1]["message"]


def test_a_user_pod_with_copied_labels_is_not_the_runs():
    # Owned by some other Job: the run sees no pod at all, so it is still waiting, not failed.
    impostor = _owned("Pod", "impostor", "other-job", "other-pod", status={"phase": "Failed"})
    outcome = trainingrun.reconcile(SPEC, _ctx(_cache(impostor), timedelta(seconds=5)))
    assert isinstance(outcome, Outcome)
    assert (outcome.phase, outcome.conditions[0].reason) == ("Starting", "Starting")


def test_a_settled_run_costs_nothing():
    status = {
        "phase": "Succeeded",
        "attempt": 1,
        "observedGeneration": 1,
        "completionTime": to_rfc3339(NOW),
        "specHash": trainingrun.spec_hash(SPEC),
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done"},
            {"type": "SpecAccepted", "status": "True", "reason": "Accepted", "message": ""},
        ],
    }
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "generation": 1}, "status": status}
    no_ttl = SPEC.model_copy(update={"ttl_seconds_after_finished": None})
    assert trainingrun.reconcile(no_ttl, ReconcileContext(body, None, now=lambda: NOW)) == Unchanged(None)
    with_ttl = SPEC.model_copy(update={"ttl_seconds_after_finished": 600})
    assert trainingrun.reconcile(with_ttl, ReconcileContext(body, None, now=lambda: NOW)) == Unchanged(600.0)
