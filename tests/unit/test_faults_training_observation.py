"""What the fault suite's watch-cut test caught, as data (tests/integration/faults): after a re-list
the Job's completion can reach the cache before its pod's final state does (the jobs informer listed
again first). The run must not be declared Succeeded without the trainer's result: it would keep
metrics {} and no modelURI for good, since a finished run is not reconciled again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mlops_operator.api.v1alpha1 import TrainingRunSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import trainingrun
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339
from tests.samples import load, valid_samples

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = TrainingRunSpec.model_validate(
    load(next(p for p in valid_samples() if "trainingrun" in p.name))["spec"]
)


def _owned(kind: str, name: str, owner: str, uid: str, **extra: Any) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": "ns",
        "uid": uid,
        "resourceVersion": "1",
        "creationTimestamp": to_rfc3339(NOW - timedelta(seconds=60)),
        "labels": {"job-name": name.rsplit("-", 1)[0] if kind == "Pod" else name},
        "ownerReferences": [{"uid": owner, "controller": True, "kind": "X", "name": "x"}],
    }
    return {"kind": kind, "metadata": meta, **extra}


def test_a_complete_job_whose_pod_result_is_not_seen_yet_is_no_success_without_a_result() -> None:
    done = to_rfc3339(NOW - timedelta(seconds=5))
    job = _owned(
        "Job",
        "r-a1",
        "run-uid",
        "job-uid",
        status={
            "startTime": to_rfc3339(NOW - timedelta(seconds=60)),
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": done}],
        },
    )
    # The cache's copy of the pod predates its end: Running, no termination message yet.
    pod = _owned("Pod", "r-a1-xyz", "job-uid", "pod-uid", status={"phase": "Running"})
    cache = Cache()
    cache.upsert(
        "TrainingRun", {"kind": "TrainingRun", "metadata": {"name": "r", "namespace": "ns", "uid": "run-uid"}}
    )
    cache.upsert("Job", job)
    cache.upsert("Pod", pod)
    status = {
        "phase": "Running",
        "attempt": 1,
        "jobName": "r-a1",
        "attemptStartTime": to_rfc3339(NOW - timedelta(seconds=60)),
        "startTime": to_rfc3339(NOW - timedelta(seconds=60)),
        "specHash": trainingrun.spec_hash(SPEC),
        "observedGeneration": 1,
    }
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "generation": 1}, "status": status}
    ctx = ReconcileContext(body, None, OperatorConfig(), now=lambda: NOW, cache=cache)
    try:
        result = trainingrun.reconcile(SPEC, ctx)
    except RuntimeError as error:
        if "API clients" not in str(error):
            raise
        return  # it reads the pods through the API (this context has no clients): fine
    claimed = isinstance(result, Outcome) and result.phase == "Succeeded"
    assert not claimed, f"Succeeded without the trainer's result: {result}"
