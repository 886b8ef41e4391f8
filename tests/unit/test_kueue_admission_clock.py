"""The start clock of a Job Kueue has just admitted: between Kueue's unsuspend and the Job
controller's next sync the Job has no startTime; the time it queued must not count as starting."""

from __future__ import annotations

from typing import Any

from mlops_operator.builders.pod import KUEUE_QUEUE_LABEL
from mlops_operator.observation.queueing import admitted_not_started, scheduled_since

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
