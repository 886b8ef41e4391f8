"""The compile and evaluate stages of a ModelVersion: one Job per stage and attempt, built from the
pin (`status.pinned`), observed through the Job and its pods, retried with backoff when the failure
is retryable.

Waiting for capacity is a queue, not a failure (as for a TrainingRun): while a stage's Job is held
suspended by Kueue (WaitingForAdmission, Preempted) or its pod cannot be placed (Unschedulable, or
NoNodeFits when no node could ever take it), the ModelVersion is `Queued`, with `status.queue`. Which
stage waits is `status.currentStage` (the phase no longer says it), so a restart resumes it. Queueing
is never a failed attempt and never makes a new Job; only the user's optional
scheduling.queueTimeoutSeconds gives up (QueueTimeoutExceeded, not retried, the Job deleted).

Every stage Job has a deadline (activeDeadlineSeconds: the spec's compile/evaluation.deadlineSeconds,
else MLOPS_STAGE_DEADLINE_SECONDS), counted from when it was admitted and its pod scheduled. Kueue's
admission starts the Job (its startTime) then; a pod the scheduler cannot place does not stop the Job
controller's clock, so while it waits the operator holds the deadline off (activeDeadlineSeconds
removed, kept in an annotation) and puts it back, lengthened by the wait, once the pod is scheduled
(`deadline_hold`). A stage past its deadline fails with StageDeadlineExceeded, not retried: a build
that ran past its deadline will most likely do so again (the model, the workspace or the GPU make it
slow, or it hangs), and every further attempt would hold a GPU for the whole deadline once more. The
operator enforces the deadline itself too (the Job is deleted), for a Job the Job controller has not
stopped, and looks again at the deadline, so a running stage is never left without a due time. The
start deadline of a pod that cannot start (an image pull, a config error) counts from its scheduling.

A finished stage Job is deleted (propagation Background) once its result is in status: the next
reconcile after the status write finds it finished and no longer the current stage's Job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from math import ceil
from typing import Any

from ...api.v1alpha1 import DatasetSpec, ModelVersionSpec
from ...builders.modelversion import (
    STAGE_SECTIONS,
    Stage,
    StageInputs,
    build_stage_job,
    compile_hash,
    default_engine_uri,
    job_name,
)
from ...builders.training import backoff_seconds
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ...k8s.rawapi import MERGE_PATCH, resource_path
from ...metrics import MODELVERSION_COMPILE_SECONDS
from ...observation.pods import PERMANENT_START_FAILURES
from ...observation.queueing import Queued, queued, scheduled_since, workload_of
from ...observation.training import Observation, finite_metrics, observe
from ...timeutil import from_rfc3339, to_rfc3339
from ..base import MAX_MESSAGE, READY, Outcome, Result, Unchanged, ready
from ..context import ReconcileContext
from ..reads import read_through_job
from .common import SPEC_ACCEPTED, with_status
from .gates import judge
from .source import resolve_source

MAX_ATTEMPTS = 3  # per stage, for retryable failures (eviction, node loss, S3 blips)
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 10, 300
ARTIFACT_KEYS = {"tensorrt": "model.plan", "onnx": "model.onnx"}
STAGE_PHASES: dict[str, Stage] = {"Compiling": "compile", "Evaluating": "evaluate"}
PROGRESS_PHASES: dict[Stage, str] = {stage: phase for phase, stage in STAGE_PHASES.items()}
QUEUED = "Queued"  # either stage's Job waits for capacity; status.currentStage says which
STAGE_DEADLINE_EXCEEDED = "StageDeadlineExceeded"
QUEUE_TIMEOUT_EXCEEDED = "QueueTimeoutExceeded"
# The stage's deadline (seconds), kept here while the operator holds activeDeadlineSeconds off a Job
# whose pod waits for a node.
HELD_DEADLINE_ANNOTATION = "mlops.dev/stage-deadline-seconds"
# After the deadline, the operator waits this long for the Job controller to stop the Job before it
# deletes the Job itself.
DEADLINE_GRACE = timedelta(seconds=2)


def deadline_seconds(spec: ModelVersionSpec, ctx: ReconcileContext, stage: Stage) -> int:
    """How long one attempt of `stage` may run: the spec's, else the operator's default."""
    section = spec.compile if stage == "compile" else spec.evaluation
    return section.deadline_seconds or ctx.config.stage_deadline_seconds


def current_stage(status: Mapping[str, Any]) -> Stage | None:
    """The stage a ModelVersion is in (its Job is status.jobName), from its status; None outside the
    stages. A Queued version says it in currentStage; one written by an operator that had no Queued
    phase is Compiling or Evaluating (and an engine in status means compile is done)."""
    phase = status.get("phase")
    if phase in STAGE_PHASES:
        return STAGE_PHASES[str(phase)]
    if phase != QUEUED:
        return None
    if status.get("currentStage") == "compile":
        return "compile"
    return "evaluate" if status.get("currentStage") == "evaluate" or status.get("engine") else "compile"


def _job_finished(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Job's Complete or Failed condition, when it has one that is True."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition  # type: ignore[no-any-return]
    return None


def _held_deadline(job: Mapping[str, Any]) -> int | None:
    held = ((job.get("metadata") or {}).get("annotations") or {}).get(HELD_DEADLINE_ANNOTATION)
    try:
        return int(held) if held is not None else None
    except ValueError:
        return None


def deadline_of(job: Mapping[str, Any], default_seconds: int) -> tuple[int, datetime | None]:
    """(The stage's deadline in seconds, when it is reached): activeDeadlineSeconds counts from the
    Job's startTime, so a Job that has not started (suspended by Kueue) has no due time yet, nor has
    one whose deadline the operator holds off while its pod waits for a node. A Job made without one
    (by an older operator) gets `default_seconds`."""
    active = (job.get("spec") or {}).get("activeDeadlineSeconds")
    held = _held_deadline(job)
    seconds = held if held is not None else int(active or default_seconds)
    started = (job.get("status") or {}).get("startTime")
    if not started or (held is not None and active is None):
        return seconds, None
    # Put back after a wait, activeDeadlineSeconds is the deadline plus the wait: due at the same time.
    return seconds, from_rfc3339(started) + timedelta(seconds=int(active or default_seconds))


def deadline_hold(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], waiting: Queued | None
) -> dict[str, Any] | None:
    """The merge patch that keeps the Job controller's clock (activeDeadlineSeconds, from the Job's
    startTime) from counting the time its pod waits for a node; None: nothing to change.

    A Job Kueue holds suspended has no startTime (admission sets it): nothing to do. While the pod
    is unschedulable the deadline is removed (kept in HELD_DEADLINE_ANNOTATION); once the pod is
    scheduled it is put back, lengthened by the wait, so it falls due a deadline after the
    scheduling. Level-based: the Job and its pods say which, whenever the operator looks."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    started = status.get("startTime")
    if not started or spec.get("suspend") or _job_finished(job) is not None:
        return None
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return None
    active, held = spec.get("activeDeadlineSeconds"), _held_deadline(job)
    if waiting is not None:
        if active is None:
            return None  # held already, or made without a deadline
        annotation = str(held if held is not None else int(active))
        return {
            "metadata": {"annotations": {HELD_DEADLINE_ANNOTATION: annotation}},
            "spec": {"activeDeadlineSeconds": None},
        }
    if held is None or active is not None:
        return None
    since = scheduled_since(job, pods) or str(started)
    waited = max(0, ceil((from_rfc3339(since) - from_rfc3339(str(started))).total_seconds()))
    return {"spec": {"activeDeadlineSeconds": held + waited}}


def past_deadline(job: Mapping[str, Any], default_seconds: int, now: datetime) -> bool:
    """Whether the Job ran past its deadline: the Job controller says so (Failed, DeadlineExceeded),
    or it is still unfinished a grace period after the deadline."""
    finished = _job_finished(job)
    if finished is not None:
        return finished.get("type") == "Failed" and finished.get("reason") == "DeadlineExceeded"
    _, due = deadline_of(job, default_seconds)
    return due is not None and now >= due + DEADLINE_GRACE


def finished_jobs(ctx: ReconcileContext) -> list[str]:
    """This ModelVersion's finished stage Jobs whose result is in status: every finished Job but the
    one the current stage is waiting on (status.jobName while Compiling, Evaluating or Queued)."""
    current = ctx.status.get("jobName") if current_stage(ctx.status) is not None else None
    return sorted(
        str(job["metadata"]["name"])
        for job in ctx.cache.owned("Job", ctx.uid)
        if job["metadata"]["name"] != current
        and _job_finished(job) is not None
        and not job["metadata"].get("deletionTimestamp")
    )


def clean_up_finished_jobs(ctx: ReconcileContext) -> None:
    """Delete the finished stage Jobs whose result is recorded (their pods go with them)."""
    for name in finished_jobs(ctx):
        ctx.require_clients().raw.delete("Job", ctx.namespace, name, propagation="Background")
        ctx.cache.delete("Job", ctx.namespace, name)


def _stage_inputs(ctx: ReconcileContext, spec: ModelVersionSpec, stage: Stage, attempt: int) -> StageInputs:
    pinned = ctx.status["pinned"]
    engine = ctx.status.get("engine") or {}
    return StageInputs(
        name=ctx.name,
        namespace=ctx.namespace,
        uid=ctx.uid,
        spec=spec,
        stage=stage,
        attempt=attempt,
        image=str(pinned["image"]),
        model_uri=str(pinned["modelURI"]),
        engine_uri=str(pinned["engineURI"]),
        dataset=DatasetSpec.model_validate(pinned["datasetSpec"]),
        calibration_uri=pinned.get("calibrationURI"),
        gpu_product=engine.get("gpuProduct") if stage == "evaluate" else spec.compile.gpu_product,
        extra_tolerations=ctx.config.workload_tolerations,
        scratch_size_limit=ctx.config.scratch_size_limit,
        deadline_seconds=deadline_seconds(spec, ctx, stage),
    )


def _start_job(ctx: ReconcileContext, inputs: StageInputs) -> None:
    created = ctx.require_clients().raw.apply(build_stage_job(inputs), ctx.config.field_manager)
    ctx.cache.upsert("Job", created)  # the next reconcile sees it before its watch event arrives


def start_compile(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    source = resolve_source(spec, ctx)
    if isinstance(source, Outcome):
        return source
    now = to_rfc3339(ctx.now())
    pinned = {
        "spec": spec.wire(),
        "modelURI": source.model_uri,
        "engineURI": default_engine_uri(source.model_uri, ctx.name, ctx.uid),
        "datasetSpec": dict(source.dataset_spec),
        "image": spec.compile.image or ctx.config.trainer_image,
    }
    if source.calibration_uri:
        pinned["calibrationURI"] = source.calibration_uri
    fields: dict[str, Any] = {
        "pinned": pinned,
        "specHash": compile_hash(spec),
        "lineage": dict(source.lineage),
        "attempt": 1,
        "jobName": job_name(ctx.name, "compile", 1),
        "currentStage": "compile",
        "compileStartTime": now,
    }
    # The pin goes into status with the Job: the next reconcile builds every attempt from it.
    _start_job(ctx, _stage_inputs(with_status(ctx, fields), spec, "compile", 1))
    target = f"{spec.compile.target} ({spec.compile.precision})"
    return Outcome(
        "Compiling",
        (
            ready(
                "False",
                "Compiling",
                f"attempt 1: Job {fields['jobName']} compiles {source.model_uri} for {target}",
            ),
            ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""),
        ),
        fields,
    )


def _patch_job(ctx: ReconcileContext, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
    """Merge-patch the stage Job; the cache holds what the apiserver returned."""
    written = ctx.require_clients().raw.request(
        "PATCH", resource_path("Job", ctx.namespace, name), body=patch, content_type=MERGE_PATCH
    )
    ctx.cache.upsert("Job", written)
    return written


def _stage_job(ctx: ReconcileContext, name: str) -> Mapping[str, Any] | None:
    job = next((j for j in ctx.cache.owned("Job", ctx.uid) if j["metadata"]["name"] == name), None)
    return job if job is not None else read_through_job(ctx, name)


def _gfd_product(gpu_name: str | None) -> str | None:
    """The nvidia.com/gpu.product label GPU Feature Discovery gives a GPU of this name."""
    if not gpu_name:
        return None
    product = "-".join(gpu_name.split())
    return product[:63].rstrip("-_.") or None


def _seconds_between(start: str | None, end: str) -> float | None:
    if not start:
        return None
    return round(max(0.0, (from_rfc3339(end) - from_rfc3339(start)).total_seconds()), 3)


def _compiled(
    spec: ModelVersionSpec, ctx: ReconcileContext, seen: Observation, accepted: ConditionUpdate, now: str
) -> Outcome:
    status, result = ctx.status, seen.result or {}
    engine_result = result.get("engine") if isinstance(result.get("engine"), Mapping) else {}
    artifacts = result.get("artifacts") if isinstance(result.get("artifacts"), Mapping) else {}
    pinned = status["pinned"]
    target = spec.compile.target
    gpu = (engine_result or {}).get("gpu")
    engine = {
        "uri": (artifacts or {}).get("engine") or f"{pinned['engineURI']}{ARTIFACT_KEYS[target]}",
        "metadataURI": (artifacts or {}).get("metadata") or f"{pinned['engineURI']}metadata.json",
        "format": (engine_result or {}).get("format") or target,
        "precision": (engine_result or {}).get("precision"),
        "tensorrtVersion": (engine_result or {}).get("tensorrtVersion"),
        "gpu": gpu,
        "gpuProduct": spec.compile.gpu_product or _gfd_product(gpu) if target == "tensorrt" else None,
        "computeCapability": (engine_result or {}).get("computeCapability"),
        "sizeBytes": (engine_result or {}).get("sizeBytes"),
    }
    engine = {k: v for k, v in engine.items() if v is not None}
    finished = seen.finished_at or now
    seconds = _seconds_between(status.get("compileStartTime"), finished)
    if seconds is not None:
        MODELVERSION_COMPILE_SECONDS.labels(target=target).observe(seconds)
    fields = {
        "engine": engine,
        "compileSeconds": seconds,
        "attempt": 1,
        "jobName": job_name(ctx.name, "evaluate", 1),
        "currentStage": "evaluate",
        "nextAttemptTime": None,
    }
    _start_job(ctx, _stage_inputs(with_status(ctx, fields), spec, "evaluate", 1))
    where = f" on {engine['gpu']}" if engine.get("gpu") else ""
    return Outcome(
        "Evaluating",
        (
            ready(
                "False",
                "Evaluating",
                f"compiled {engine['format']}{where} in {seconds}s; Job {fields['jobName']} evaluates it "
                f"on the {spec.evaluation.split} split",
            ),
            accepted,
        ),
        {k: v for k, v in fields.items() if v is not None or k == "nextAttemptTime"},
    )


def _evaluated(
    spec: ModelVersionSpec, ctx: ReconcileContext, seen: Observation, accepted: ConditionUpdate, now: str
) -> Outcome:
    status, result = ctx.status, seen.result or {}
    metrics = finite_metrics(result.get("metrics"))
    evaluation = result.get("evaluation") if isinstance(result.get("evaluation"), Mapping) else {}
    engine = dict(status.get("engine") or {})
    if (evaluation or {}).get("runtime"):
        engine["runtime"] = str(evaluation["runtime"])[:256]  # type: ignore[index]
    finished = seen.finished_at or now
    started = (find_condition(status.get("conditions", []), READY) or {}).get("lastTransitionTime")
    fields: dict[str, Any] = {
        "metrics": metrics,
        "accuracy": round(metrics["accuracy"], 4) if "accuracy" in metrics else None,
        "engine": engine,
        "evaluationSeconds": _seconds_between(started, finished),
        "nextAttemptTime": None,
    }
    return judge(spec, metrics, fields, finished, accepted)


def _stage_failed(
    spec: ModelVersionSpec,
    ctx: ReconcileContext,
    stage: Stage,
    *,
    reason: str,
    message: str,
    retryable: bool,
    exit_code: int | None,
    finished: str,
    accepted: ConditionUpdate,
) -> Outcome:
    status = ctx.status
    attempt = int(status.get("attempt") or 1)
    failures: list[Mapping[str, Any]] = list(status.get("failures") or [])
    if not any(f.get("stage") == stage and f.get("attempt") == attempt for f in failures):
        entry = {
            "stage": stage,
            "attempt": attempt,
            "reason": reason[:128],
            "message": message[:MAX_MESSAGE],
            "retryable": retryable,
            "exitCode": exit_code,
            "time": finished,
        }
        failures.append({k: v for k, v in entry.items() if v is not None})
    failures = failures[-20:]
    phase = PROGRESS_PHASES[stage]  # a Queued stage that fails waits out its backoff as Compiling/Evaluating
    if retryable and attempt < MAX_ATTEMPTS:
        delay = backoff_seconds(attempt, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
        at = to_rfc3339(ctx.now() + timedelta(seconds=delay))
        return Outcome(
            phase,
            (
                ready(
                    "False",
                    "BackoffBeforeRetry",
                    f"{stage} attempt {attempt} failed ({reason}: {message}); "
                    f"attempt {attempt + 1} starts at {at}",
                ),
                accepted,
            ),
            {
                "attempt": attempt + 1,
                "jobName": job_name(ctx.name, stage, attempt + 1),
                "nextAttemptTime": at,
                "failures": failures,
            },
            events=(
                Event(
                    "AttemptFailed",
                    f"{stage} attempt {attempt} failed, retrying: {reason}: {message}"[:MAX_MESSAGE],
                    "Warning",
                ),
            ),
            requeue_after=float(delay),
        )
    why = "not retryable" if not retryable else f"{MAX_ATTEMPTS} attempts used"
    return Outcome(
        "Failed",
        (ready("False", reason, f"{stage} attempt {attempt} failed ({why}): {message}"), accepted),
        {"failures": failures, "completionTime": finished, "nextAttemptTime": None},
    )


def _start_deadline(spec: ModelVersionSpec, ctx: ReconcileContext) -> int:
    override = spec.scheduling.start_deadline_seconds
    return override if override is not None else ctx.config.start_deadline_seconds


def run_stage(
    spec: ModelVersionSpec, ctx: ReconcileContext, stage: Stage, accepted: ConditionUpdate
) -> Result:
    """One step of `stage`; status.queue and status.currentStage follow the outcome's phase."""
    result = _run_stage(spec, ctx, stage, accepted)
    if not isinstance(result, Outcome):
        return result
    fields: dict[str, Any] = {}
    if ctx.status.get("queue") and result.phase != QUEUED and "queue" not in result.fields:
        fields["queue"] = None  # whatever ended the wait (admitted, scheduled, a failure) ends it
    now_in: Stage | None = STAGE_PHASES.get(result.phase, stage if result.phase == QUEUED else None)
    if "currentStage" not in result.fields and ctx.status.get("currentStage") != now_in:
        fields["currentStage"] = now_in
    return replace(result, fields={**result.fields, **fields}) if fields else result


def _run_stage(
    spec: ModelVersionSpec, ctx: ReconcileContext, stage: Stage, accepted: ConditionUpdate
) -> Result:
    status = ctx.status
    now = to_rfc3339(ctx.now())
    attempt = int(status.get("attempt") or 1)
    name = str(status.get("jobName") or job_name(ctx.name, stage, attempt))
    progress = PROGRESS_PHASES[stage]  # the phase while it runs (status.phase may be Queued)
    job = _stage_job(ctx, name)
    if job is None:
        next_attempt = status.get("nextAttemptTime")
        if next_attempt and ctx.now() < from_rfc3339(next_attempt):
            return Unchanged(max(0.0, (from_rfc3339(next_attempt) - ctx.now()).total_seconds()))
        _start_job(ctx, _stage_inputs(ctx, spec, stage, attempt))
        return Outcome(
            progress,
            (ready("False", progress, f"{stage} attempt {attempt}: Job {name} created"), accepted),
            {"jobName": name, "nextAttemptTime": None},
        )
    job_uid = str(job["metadata"]["uid"])
    pods = ctx.cache.owned("Pod", job_uid)
    seen = observe(job, pods)
    if seen.state == "Succeeded":
        return (_compiled if stage == "compile" else _evaluated)(spec, ctx, seen, accepted, now)
    waiting = queued(job, pods, workload_of(job, ctx.cache.owned("Workload", job_uid)))
    if waiting is not None:
        return _queued(spec, ctx, stage, job, pods=pods, waiting=waiting, accepted=accepted, now=now)
    if (patch := deadline_hold(job, pods, None)) is not None:
        job = _patch_job(ctx, name, patch)  # scheduled after a wait: the deadline counts from here
    limit, due = deadline_of(job, deadline_seconds(spec, ctx, stage))
    if past_deadline(job, limit, ctx.now()):
        if _job_finished(job) is None:  # the Job controller has not stopped it: the operator does
            ctx.require_clients().raw.delete("Job", ctx.namespace, name, propagation="Background")
        section = STAGE_SECTIONS[stage]
        return _stage_failed(
            spec,
            ctx,
            stage,
            reason=STAGE_DEADLINE_EXCEEDED,
            message=(
                f"Job {name} ran past its deadline of {limit}s and was stopped "
                f"(spec.{section}.deadlineSeconds, or the operator's MLOPS_STAGE_DEADLINE_SECONDS); not "
                "retried: another attempt would most likely hold its GPU as long again"
            ),
            retryable=False,
            exit_code=None,
            finished=seen.finished_at or now,
            accepted=accepted,
        )
    # A stage still running is due again at its deadline (and the grace period after it).
    at_deadline = (due + DEADLINE_GRACE - ctx.now()).total_seconds() if due is not None else None
    if seen.state == "Failed":
        assert seen.failure is not None
        failure = seen.failure
        return _stage_failed(
            spec,
            ctx,
            stage,
            reason=failure.reason,
            message=failure.message,
            retryable=failure.retryable,
            exit_code=failure.exit_code,
            finished=seen.finished_at or now,
            accepted=accepted,
        )
    if seen.stuck:
        reason, message = seen.stuck
        # The start clock runs from when the pod was admitted and scheduled, not while it queued.
        clock = [job["metadata"].get("creationTimestamp") or now, scheduled_since(job, pods)]
        started = max(from_rfc3339(str(c)) for c in clock if c)
        deadline = started + timedelta(seconds=_start_deadline(spec, ctx))
        if reason in PERMANENT_START_FAILURES or ctx.now() >= deadline:
            ctx.require_clients().raw.delete("Job", ctx.namespace, name, propagation="Foreground")
            return _stage_failed(
                spec,
                ctx,
                stage,
                reason=reason,
                message=f"the {stage} pod cannot start: {message}",
                retryable=reason not in PERMANENT_START_FAILURES,
                exit_code=None,
                finished=now,
                accepted=accepted,
            )
        return Outcome(
            progress,
            (
                ready("False", reason, f"{stage} attempt {attempt}: the pod cannot start yet: {message}"),
                accepted,
            ),
            requeue_after=min((deadline - ctx.now()).total_seconds(), at_deadline or float("inf")),
        )
    doing = "running" if seen.state == "Running" else (seen.unschedulable or "starting")
    return Outcome(
        progress,
        (ready("False", progress, f"{stage} attempt {attempt} of {MAX_ATTEMPTS}: {doing}"), accepted),
        requeue_after=max(0.0, at_deadline) if at_deadline is not None else None,
    )


def _queued(
    spec: ModelVersionSpec,
    ctx: ReconcileContext,
    stage: Stage,
    job: Mapping[str, Any],
    *,
    pods: Sequence[Mapping[str, Any]],
    waiting: Queued,
    accepted: ConditionUpdate,
    now: str,
) -> Outcome:
    """The stage's Job waits for capacity: no failed attempt, no new Job, no deadline running. The
    stretch is timed from when it began (as the objects say, or as first seen) for the user's queue
    timeout, which alone gives up on it."""
    status, name = ctx.status, str(job["metadata"]["name"])
    attempt = int(status.get("attempt") or 1)
    previous = status.get("queue") or {}
    since = str(previous.get("since") or waiting.since or now)
    waited = max(0.0, (ctx.now() - from_rfc3339(since)).total_seconds())
    timeout = spec.scheduling.queue_timeout_seconds
    if timeout is not None and waited >= timeout:
        ctx.require_clients().raw.delete("Job", ctx.namespace, name, propagation="Background")
        outcome = _stage_failed(
            spec,
            ctx,
            stage,
            reason=QUEUE_TIMEOUT_EXCEEDED,
            message=(
                f"Job {name} waited {int(waited)}s for capacity, longer than "
                f"scheduling.queueTimeoutSeconds ({timeout}s), and was deleted: {waiting.reason}: "
                f"{waiting.message}"
            ),
            retryable=False,
            exit_code=None,
            finished=now,
            accepted=accepted,
        )
        return replace(outcome, fields={**outcome.fields, "queue": None})
    if (patch := deadline_hold(job, pods, waiting)) is not None:
        _patch_job(ctx, name, patch)  # the Job controller's deadline must not run out in the queue
    return Outcome(
        QUEUED,
        (ready("False", waiting.reason, f"{stage} attempt {attempt}: {waiting.message}"), accepted),
        {"queue": waiting.status(since), "currentStage": stage},
        requeue_after=max(1.0, timeout - waited) if timeout is not None else None,
    )
