"""What a training attempt's Job and pods say: running, done with a result, or failed and why.

Pure: the handler hands in the objects it observed (from the watch cache), this turns them into one
`Observation`, tested as plain data. Which exit codes are retryable, and the result summary in the
termination message, come from the workloads' contract (`mlops_contract`), as the trainer's do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mlops_contract import result as trainer_result
from mlops_contract.exitcodes import is_retryable

from ..builders.training import CONTAINER
from ..redaction import redact
from .pods import stuck_container, unschedulable

State = Literal["Missing", "Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Failure:
    retryable: bool
    reason: str
    message: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Observation:
    state: State
    unschedulable: str | None = None
    result: Mapping[str, Any] | None = None
    failure: Failure | None = None
    started_at: str | None = None
    finished_at: str | None = None
    stuck: tuple[str, str] | None = None  # (kubelet reason, message) of a container that cannot start


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER and "terminated" in (status.get("state") or {}):
            return status["state"]["terminated"]  # type: ignore[no-any-return]
    return None


def classify_pod_failure(pod: Mapping[str, Any]) -> Failure:
    """Why a pod failed, and whether another attempt can help."""
    status = pod.get("status", {})
    if status.get("reason") == "Evicted":
        return Failure(True, "Evicted", status.get("message") or "the pod was evicted")
    if status.get("reason") in {"NodeLost", "NodeShutdown", "Terminated"}:
        return Failure(
            True, "NodeLost", status.get("message") or f"the node went away ({status.get('reason')})"
        )
    disruption = _condition(pod, "DisruptionTarget")
    if disruption:
        return Failure(True, "Preempted", disruption.get("message") or str(disruption.get("reason")))
    terminated = _terminated(pod)
    if terminated is None:
        return Failure(True, "PodFailed", status.get("message") or "the pod failed before its container ran")
    code = int(terminated.get("exitCode", -1))
    summary = trainer_result.parse_summary(terminated.get("message"))
    if terminated.get("reason") == "OOMKilled":
        return Failure(False, "OOMKilled", "the trainer ran out of memory; raise resources.memory", code)
    if summary is not None and trainer_result.is_summary(summary):
        return Failure(
            bool(summary.get(trainer_result.RETRYABLE)),
            str(summary.get(trainer_result.REASON) or "TrainerFailed"),
            redact(str(summary.get(trainer_result.MESSAGE) or ""))[:1024],
            code,
        )
    # The log tail stands in for a trainer that crashed before writing its summary: redact it whole,
    # before cutting it, so a cut never leaves the end of a secret without the key that names it.
    message = (
        redact(terminated.get("message") or "").strip()[-1024:] or f"the trainer exited with code {code}"
    )
    return Failure(is_retryable(code), f"ExitCode{code}", message, code)


def observe(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> Observation:
    """One reading of an attempt's Job and pods."""
    if job is None:
        return Observation("Missing")
    started = job.get("status", {}).get("startTime")
    if complete := _condition(job, "Complete"):
        # The Job's completion can reach the cache before its pods' ends do (after a re-list the jobs
        # informer may list first): a pod still running here has its final state, and the trainer's
        # result, on the way. Declaring Succeeded now would record no result, for good.
        ending = [
            p
            for p in pods
            if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            and not p.get("metadata", {}).get("deletionTimestamp")
        ]
        if ending:
            return Observation("Running", started_at=started)
        done = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        # Rank 0 (index 0, or the only pod) reports the run's result.
        done.sort(
            key=lambda p: (
                p.get("metadata", {})
                .get("annotations", {})
                .get("batch.kubernetes.io/job-completion-index", "")
            )
        )
        terminated = _terminated(done[0]) if done else None
        result = trainer_result.parse_summary(terminated.get("message")) if terminated else None
        return Observation(
            "Succeeded",
            result=result or {},
            started_at=started,
            finished_at=complete.get("lastTransitionTime"),
        )
    job_failed = _condition(job, "Failed")
    if (job.get("spec") or {}).get("suspend") and not job_failed:
        # Held by Kueue (not yet admitted, or evicted): the Job controller deletes its pods, and those
        # ending meanwhile are not failures (it does not count them either).
        return Observation("Pending", started_at=started)
    failed_pods = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    if failed_pods or job_failed:
        if failed_pods:
            failure = classify_pod_failure(failed_pods[0])
        else:
            assert job_failed is not None
            failure = Failure(
                True, str(job_failed.get("reason") or "JobFailed"), str(job_failed.get("message") or "")
            )
        finished = job_failed.get("lastTransitionTime") if job_failed else None
        return Observation("Failed", failure=failure, started_at=started, finished_at=finished)
    for pod in pods:
        if stuck := stuck_container(pod):
            return Observation("Pending", started_at=started, stuck=stuck)
        if why := unschedulable(pod):
            return Observation("Pending", unschedulable=why, started_at=started)
    # A pod that already succeeded while the Job is not Complete yet is still part of a running Job.
    active = [p for p in pods if p.get("status", {}).get("phase") in ("Running", "Succeeded")]
    if active:
        return Observation("Running", started_at=started)
    return Observation("Pending", started_at=started)


def finite_metrics(values: Any) -> dict[str, float]:
    """A workload's reported metrics, finite numbers only (at most 64, names cut to 128): a NaN or an
    infinity has no place in status (nor in JSON); anything but a mapping reports nothing."""
    if not isinstance(values, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in list(values.items())[:64]:
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and abs(float(value)) < float("inf")
        ):
            out[redact(str(key))[:128]] = float(value)  # redacted before it is cut: no half secret
    return out
