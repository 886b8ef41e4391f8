"""Whether a workload's Job waits for capacity, and what for: the scheduler, or Kueue's admission.

Waiting for capacity is a queue, not a failure (as for Kubernetes Jobs, Kubeflow Trainer and Kueue):
a Job that Kueue holds suspended, or pods the scheduler cannot place, are `Queued`, never a failed
attempt, and the start deadline counts only from when they were admitted and scheduled. Pure: the
handlers hand in the Job, its pods and its Kueue Workload as the watches delivered them.

"Can a node ever take this pod" is the scheduler's own verdict, read from its message: a filter
that no preemption can resolve (a node selector or GPU product no node has, a request above a
node's allocatable) marks the node "Preemption is not helpful for scheduling". When that holds for
every node, the pod stays pending as Kubernetes leaves it (a cluster autoscaler may add the node),
but it is `NoNodeFits`, not merely busy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..builders.pod import KUEUE_QUEUE_LABEL as QUEUE_NAME_LABEL
from ..redaction import redact
from ..timeutil import from_rfc3339

MAX_MESSAGE = 1024

# Busy: pods the scheduler cannot place now. NoNodeFits: no node could take them even empty.
# WaitingForAdmission: a Job Kueue holds suspended until its ClusterQueue has quota.
# Preempted: a Job Kueue admitted, then evicted (preemption, a reclaimed quota): queued again.
QueueReason = Literal["Unschedulable", "NoNodeFits", "WaitingForAdmission", "Preempted"]

_NOT_HELPFUL = "Preemption is not helpful for scheduling"
# Filter results no amount of waiting or preemption changes, when no preemption verdict is given.
_UNRESOLVABLE_FILTERS = (
    "didn't match Pod's node affinity/selector",
    "had untolerated taint",
    "didn't match pod topology spread constraints (missing required label)",
)
# The scheduler's whole message when the cluster has no node at all (ErrNoNodesAvailable).
_NO_NODES = "no nodes available to schedule pods"
_COUNTED = re.compile(r"(\d+) ([^,]+?)(?=, \d+ |\.?$)")
_AVAILABLE = re.compile(r"0/(\d+) nodes are available: (.*)$")


@dataclass(frozen=True)
class Queued:
    reason: QueueReason
    message: str
    since: str | None = None  # when this wait began, as the objects record it
    local_queue: str | None = None
    cluster_queue: str | None = None

    @property
    def never_fits(self) -> bool:
        return self.reason == "NoNodeFits"

    def status(self, since: str) -> dict[str, str]:
        """status.queue (QueueStatus) for a stretch of waiting that began at `since`."""
        fields = {
            "reason": self.reason,
            "message": self.message[:MAX_MESSAGE],
            "since": since,
            "localQueue": self.local_queue,
            "clusterQueue": self.cluster_queue,
        }
        return {k: v for k, v in fields.items() if v is not None}


def _conditions(obj: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not obj:
        return []
    return list((obj.get("status") or {}).get("conditions") or [])


def _condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in _conditions(obj) if c.get("type") == type_), None)


def _true(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    cond = _condition(obj, type_)
    return cond if cond is not None and cond.get("status") == "True" else None


def _text(value: object) -> str:
    return redact(str(value or "")).strip()[:MAX_MESSAGE]


def _counts(segment: str) -> dict[str, int]:
    """'2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint' -> {reason: nodes}."""
    out: dict[str, int] = {}
    for count, reason in _COUNTED.findall(segment.strip()):
        out[reason.strip()] = out.get(reason.strip(), 0) + int(count)
    return out


def scheduler_says_never(message: str) -> bool:
    """Whether the scheduler's FailedScheduling message says no node could ever take the pod.

    'preemption: 0/N nodes are available: N Preemption is not helpful for scheduling.' is its verdict
    that every node fails a filter preemption cannot resolve. Without a preemption part (a pod that
    may not preempt), the filters' own reasons decide; "Insufficient X" alone stays busy, since the
    scheduler does not say then whether X is used or absent. No nodes at all never fits either."""
    if message.strip().startswith(_NO_NODES):
        return True
    filters, _, preemption = message.partition("preemption:")
    if match := _AVAILABLE.search(preemption.strip()):
        total, reasons = int(match.group(1)), _counts(match.group(2))
        return total == 0 or reasons.get(_NOT_HELPFUL, 0) >= total
    # The filters' histogram ends at its first ". ": post-filter messages (DRA's "no new claims to
    # deallocate", "preemption: not eligible ...") follow it.
    match = _AVAILABLE.search(filters.strip().split(". ", 1)[0].rstrip("."))
    if match is None:
        return False
    total = int(match.group(1))
    if total == 0:
        return True
    # A node may be counted under several reasons: never only when every reason is unresolvable.
    reasons = _counts(match.group(2))
    unresolvable = {r: n for r, n in reasons.items() if any(f in r for f in _UNRESOLVABLE_FILTERS)}
    return bool(reasons) and unresolvable == reasons and sum(reasons.values()) >= total


def _live(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        p
        for p in pods
        if not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def unschedulable_pods(pods: Sequence[Mapping[str, Any]]) -> Queued | None:
    """Pods the scheduler has tried and cannot place: busy or never, with its message."""
    waiting = []
    for pod in _live(pods):
        cond = _condition(pod, "PodScheduled")
        if cond is not None and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            waiting.append((pod, cond))
    if not waiting:
        return None
    never = [w for w in waiting if scheduler_says_never(str(w[1].get("message") or ""))]
    pod, cond = (never or waiting)[0]
    times = [str(c["lastTransitionTime"]) for _, c in waiting if c.get("lastTransitionTime")]
    since = min(times, key=from_rfc3339) if times else None
    name = (pod.get("metadata") or {}).get("name")
    head = f"pod {name}" if len(waiting) == 1 else f"{len(waiting)} pods (e.g. {name})"
    message = _text(cond.get("message") or "Unschedulable")
    if never:
        return Queued(
            "NoNodeFits",
            f"{head}: no node can take it as it asks ({message}); it stays pending until one joins",
            since,
        )
    return Queued("Unschedulable", f"{head} waiting for capacity: {message}", since)


def suspended_by_kueue(job: Mapping[str, Any], workload: Mapping[str, Any] | None) -> Queued | None:
    """A Job held suspended by its admission controller (Kueue): waiting for admission, or evicted
    and waiting again. The operator never suspends a Job itself (suspending a run deletes its Job),
    so a suspended Job of ours is always held by one."""
    if not (job.get("spec") or {}).get("suspend"):
        return None
    labels = (job.get("metadata") or {}).get("labels") or {}
    local_queue = labels.get(QUEUE_NAME_LABEL) or ((workload or {}).get("spec") or {}).get("queueName")
    admission = ((workload or {}).get("status") or {}).get("admission") or {}
    cluster_queue = admission.get("clusterQueue")
    suspended = _true(job, "Suspended")
    since = (
        str(suspended["lastTransitionTime"]) if suspended and suspended.get("lastTransitionTime") else None
    )
    since = since or (job.get("metadata") or {}).get("creationTimestamp")
    where = f"LocalQueue {local_queue}" if local_queue else "its admission controller"
    evicted = _true(workload, "Evicted")
    preempted = _true(workload, "Preempted")
    if evicted or preempted:
        why = preempted or evicted
        assert why is not None
        return Queued(
            "Preempted",
            f"evicted by Kueue ({why.get('reason')}: {_text(why.get('message'))}); "
            f"queued again in {where}, it resumes from its last checkpoint when admitted",
            str(why.get("lastTransitionTime") or since or "") or None,
            local_queue,
            cluster_queue,
        )
    if workload is None:
        message = f"the Job is suspended, waiting for {where} to admit it (no Kueue Workload seen yet)"
    elif _true(workload, "QuotaReserved") or _true(workload, "Admitted"):
        message = f"admitted by Kueue in {where}; waiting for the Job to be started"
    else:
        pending = _condition(workload, "QuotaReserved")
        detail = _text((pending or {}).get("message")) or "waiting for quota"
        message = f"waiting in {where} for Kueue to admit it: {detail}"
    return Queued("WaitingForAdmission", message, since, local_queue, cluster_queue)


def queued(
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    workload: Mapping[str, Any] | None = None,
) -> Queued | None:
    """Whether this Job waits for capacity, and why; None when it runs, starts, or is finished."""
    if job is None or _true(job, "Complete") or _true(job, "Failed"):
        return None
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return suspended_by_kueue(job, workload) or unschedulable_pods(pods)


def scheduled_since(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: str | None = None
) -> str | None:
    """When the attempt's start clock starts: the latest of the Job's start (reset when Kueue
    admits it) and its pods' scheduling. A start deadline counts from here: image pulls, config
    errors and FailedCreate are stuck pods; the wait before is the queue.

    A Job Kueue has just unsuspended, before the Job controller has given it a startTime, has not
    started yet: with `now` given, its clock starts now (not at the Job's creation, long queued)."""
    moments = [str((job.get("status") or {}).get("startTime") or "")]
    resumed = _condition(job, "Suspended")  # False, JobResumed: when the Job was last admitted
    if resumed is not None and resumed.get("status") == "False" and resumed.get("lastTransitionTime"):
        moments.append(str(resumed["lastTransitionTime"]))
    if now is not None and admitted_not_started(job):
        moments.append(now)
    for pod in _live(pods):
        cond = _condition(pod, "PodScheduled")
        if cond is not None and cond.get("status") == "True" and cond.get("lastTransitionTime"):
            moments.append(str(cond["lastTransitionTime"]))
    moments = [m for m in moments if m]
    return max(moments, key=from_rfc3339) if moments else None


def admitted_not_started(job: Mapping[str, Any]) -> bool:
    """A Job in a Kueue LocalQueue that is no longer suspended (admitted) but that the Job controller
    has not started yet (no status.startTime): the moment between Kueue's unsuspend and the Job
    controller's next sync, in which an operator that reads it must not count the queued time."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    # Still Suspended=True: a startTime there is the previous admission's (a re-admitted, preempted
    # Job, where the Job controller does not clear it on suspension).
    return (
        bool(labels.get(QUEUE_NAME_LABEL))
        and not (job.get("spec") or {}).get("suspend")
        and (not (job.get("status") or {}).get("startTime") or _true(job, "Suspended") is not None)
    )


def workload_of(job: Mapping[str, Any], workloads: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest Kueue Workload owned by this Job (Kueue makes one per Job; a re-created one after a
    spec change replaces it)."""
    mine = [w for w in workloads if not (w.get("metadata") or {}).get("deletionTimestamp")]
    if not mine:
        return None
    return max(mine, key=lambda w: str((w.get("metadata") or {}).get("creationTimestamp") or ""))
