"""The start clock of a Job Kueue has just admitted: between Kueue's unsuspend and the Job
controller's next sync the Job has no startTime; the time it queued must not count as starting."""

from __future__ import annotations

from typing import Any

from mlops_operator.builders.pod import KUEUE_QUEUE_LABEL
from mlops_operator.observation.queueing import admitted_not_started, scheduled_since
from tests.unit.test_trainingrun_queueing import _ago, _cache, _ctx, _reconcile
from tests.unit.test_trainingrun_queueing import _job as _run_job

NOW = "2026-01-01T12:30:00Z"


def _job(
    *, queue: str | None = "team", suspend: bool = False, start_time: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": start_time} if start_time else {}
    return {
        "metadata": {
            "name": "r-a1",
            "creationTimestamp": "2026-01-01T12:00:00Z",
            "labels": {KUEUE_QUEUE_LABEL: queue} if queue else {},
        },
        "spec": {"suspend": suspend},
        "status": status,
    }


def test_an_unsuspended_kueue_job_without_a_start_time_starts_its_clock_now() -> None:
    assert admitted_not_started(_job())
    assert scheduled_since(_job(), [], NOW) == NOW
    # Without `now` (callers that only want what the objects say): nothing to report.
    assert scheduled_since(_job(), []) is None


def test_a_started_suspended_or_unqueued_job_keeps_the_clock_the_objects_give() -> None:
    started = _job(start_time="2026-01-01T12:29:00Z")
    assert not admitted_not_started(started)
    assert scheduled_since(started, [], NOW) == "2026-01-01T12:29:00Z"
    assert not admitted_not_started(_job(suspend=True))  # still queued: no clock at all
    assert scheduled_since(_job(suspend=True), [], NOW) is None
    assert not admitted_not_started(_job(queue=None))  # no Kueue: the Job controller started it
    assert scheduled_since(_job(queue=None), [], NOW) is None


def test_a_run_kueue_has_just_admitted_after_a_long_queue_is_starting_not_failed() -> None:
    # Queued 20 minutes (past the 600 s start deadline); Kueue has unsuspended the Job, the Job
    # controller has not given it a startTime nor made its pod yet. Before, the clock fell back to
    # the attempt's start and the run failed StartDeadlineExceeded at the instant it was admitted.
    ctx = _ctx(
        _cache(_run_job(queue="team-a")),
        phase="Queued",
        queue={"reason": "WaitingForAdmission", "message": "waiting", "since": _ago(1190)},
    )
    outcome = _reconcile(ctx)
    assert outcome.phase == "Starting"
    assert "failures" not in outcome.fields
    assert outcome.fields.get("attempt", 1) == 1
