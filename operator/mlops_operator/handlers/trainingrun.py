"""TrainingRun reconcile: wait for the Dataset, run attempts as Jobs, follow them, retry, finish.

Level-based: every call reads the Job and pods of the current attempt and derives the status from
them, so a restarted operator picks a run up where it was without making a second Job.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..api.v1alpha1 import GROUP, VERSION, DatasetSpec, TrainingRunSpec
from ..builders.training import (
    RUN_LABEL,
    TrainingInputs,
    backoff_seconds,
    build_job,
    build_rendezvous_service,
    job_name,
    service_name,
    spec_hash,
)
from ..k8s.apply import server_side_apply
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..metrics import TRAINING_ATTEMPTS, TRAINING_DURATION, TRAINING_GPU_SECONDS, TRAINING_TIME_TO_START
from ..observation.training import Observation, observe
from ..timeutil import from_rfc3339, to_rfc3339
from .base import READY, Outcome
from .context import ReconcileContext

FINISHED = ("Succeeded", "Failed")
SPEC_ACCEPTED = "SpecAccepted"
CHILDREN_DELETED = "ChildrenDeleted"


def _ready(status: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(READY, status, reason, message[:1024])  # type: ignore[arg-type]


def _read_dataset(ctx: ReconcileContext, name: str) -> Mapping[str, Any] | None:
    try:
        obj: Mapping[str, Any] = ctx.require_clients().custom.get_namespaced_custom_object(
            GROUP, VERSION, ctx.namespace, "datasets", name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return obj


def _dataset_gate(
    spec: TrainingRunSpec, ctx: ReconcileContext
) -> tuple[Mapping[str, Any] | None, Outcome | None]:
    """The Ready Dataset, or the WaitingForDataset outcome saying why not."""
    name = spec.dataset_ref.name
    dataset = _read_dataset(ctx, name)
    if dataset is None:
        return None, Outcome(
            "WaitingForDataset",
            (
                _ready(
                    "False", "DatasetNotFound", f"Dataset {name} does not exist in namespace {ctx.namespace}"
                ),
            ),
        )
    ready: Mapping[str, Any] = find_condition(dataset.get("status", {}).get("conditions", []), READY) or {}
    if ready.get("status") != "True" or not dataset.get("status", {}).get("fingerprint"):
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "not reconciled yet"
        return None, Outcome(
            "WaitingForDataset", (_ready("False", "DatasetNotReady", f"Dataset {name} is not Ready ({why})"),)
        )
    return dataset, None


def _inputs(
    spec: TrainingRunSpec, ctx: ReconcileContext, dataset: Mapping[str, Any], attempt: int, fingerprint: str
) -> TrainingInputs:
    return TrainingInputs(
        name=ctx.name,
        namespace=ctx.namespace,
        uid=str(ctx.body["metadata"]["uid"]),
        spec=spec,
        dataset=DatasetSpec.model_validate(dataset["spec"]),
        dataset_fingerprint=fingerprint,
        attempt=attempt,
        default_image=ctx.config.trainer_image,
        extra_tolerations=ctx.config.workload_tolerations,
    )


def _read_job(ctx: ReconcileContext, name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    clients = ctx.require_clients()
    try:
        job = clients.batch.read_namespaced_job(name, ctx.namespace)
    except ApiException as error:
        if error.status == 404:
            return None, []
        raise
    uid = job.metadata.uid
    pods = clients.core.list_namespaced_pod(
        ctx.namespace, label_selector=f"batch.kubernetes.io/controller-uid={uid}"
    )
    serialize = clients.api.sanitize_for_serialization
    return serialize(job), [serialize(p) for p in pods.items]


def _start_attempt(spec: TrainingRunSpec, ctx: ReconcileContext, inputs: TrainingInputs) -> None:
    api, manager = ctx.require_clients().api, ctx.config.field_manager
    if inputs.distributed:
        server_side_apply(api, build_rendezvous_service(inputs), manager)
    server_side_apply(api, build_job(inputs), manager)
    TRAINING_ATTEMPTS.labels(namespace=ctx.namespace).inc()


def _delete_job(ctx: ReconcileContext, name: str) -> None:
    try:
        # Pods get SIGTERM and their grace period: the trainer writes a checkpoint before it exits.
        ctx.require_clients().batch.delete_namespaced_job(
            name, ctx.namespace, propagation_policy="Background"
        )
    except ApiException as error:
        if error.status != 404:
            raise


def _gpu_seconds(spec: TrainingRunSpec, start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    seconds = max(0.0, (from_rfc3339(end) - from_rfc3339(start)).total_seconds())
    return seconds * spec.distributed.nodes * spec.resources.gpus_per_worker


def _spec_accepted(spec: TrainingRunSpec, status: Mapping[str, Any]) -> ConditionUpdate:
    locked = status.get("specHash")
    if locked and locked != spec_hash(spec):
        return ConditionUpdate(
            SPEC_ACCEPTED,
            "False",
            "ImmutableAfterStart",
            "the spec changed after the run started; only suspend and ttlSecondsAfterFinished may change. "
            "The run goes on with the spec it started with: create a new TrainingRun to train differently",
        )
    return ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", "")


def _finished(spec: TrainingRunSpec, ctx: ReconcileContext) -> Outcome:
    """A finished run keeps its status; after ttlSecondsAfterFinished its children go."""
    status = ctx.status
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    conditions = [
        ConditionUpdate(
            READY,
            ready.get("status", "False"),
            ready.get("reason", status["phase"]),
            ready.get("message", ""),
        )
    ]
    conditions.append(_spec_accepted(spec, status))
    completion = status.get("completionTime")
    ttl = spec.ttl_seconds_after_finished
    if ttl is not None and completion and ctx.now() >= from_rfc3339(completion) + timedelta(seconds=ttl):
        clients = ctx.require_clients()
        selector = f"{RUN_LABEL}={ctx.name}"
        for job in clients.batch.list_namespaced_job(ctx.namespace, label_selector=selector).items:
            _delete_job(ctx, job.metadata.name)
        try:
            clients.core.delete_namespaced_service(service_name(ctx.name), ctx.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
        conditions.append(
            ConditionUpdate(
                CHILDREN_DELETED, "True", "TTLExpired", f"children deleted {ttl}s after the run finished"
            )
        )
    return Outcome(status["phase"], tuple(conditions))


def reconcile(spec: TrainingRunSpec, ctx: ReconcileContext) -> Outcome:
    status = ctx.status
    if status.get("phase") in FINISHED:
        return _finished(spec, ctx)
    now = to_rfc3339(ctx.now())
    attempt = int(status.get("attempt") or 0)
    if attempt == 0:
        return _first_attempt(spec, ctx, now)
    accepted = _spec_accepted(spec, status)
    name = status.get("jobName") or job_name(ctx.name, attempt)
    job, pods = _read_job(ctx, name)
    seen = observe(job, pods)
    if seen.state == "Succeeded":
        return _succeeded(spec, ctx, seen, accepted, now)
    if seen.state == "Failed":
        return _failed(spec, ctx, seen, accepted, now)
    if spec.suspend:
        if job is not None:
            _delete_job(ctx, name)
        return Outcome(
            "Suspended",
            (
                _ready(
                    "False",
                    "Suspended",
                    f"suspended at attempt {attempt}; set suspend: false to resume from the last checkpoint",
                ),
                accepted,
            ),
            events=(Event("Suspended", f"deleted Job {name}; its pods checkpoint on SIGTERM"),)
            if job is not None
            else (),
        )
    next_attempt = status.get("nextAttemptTime")
    if job is None and next_attempt and ctx.now() < from_rfc3339(next_attempt):
        last = (status.get("failures") or [{}])[-1]
        return Outcome(
            "Pending",
            (
                _ready(
                    "False",
                    "BackoffBeforeRetry",
                    f"attempt {attempt} starts at {next_attempt}, after {last.get('reason')}: "
                    f"{last.get('message', '')}",
                ),
                accepted,
            ),
        )
    if job is None:
        # A new attempt, a resume after suspend, or a Job someone deleted: (re)create it.
        dataset, waiting = _dataset_gate(spec, ctx)
        if waiting is not None:
            return Outcome(waiting.phase, (*waiting.conditions, accepted))
        assert dataset is not None
        _start_attempt(spec, ctx, _inputs(spec, ctx, dataset, attempt, str(status.get("datasetFingerprint"))))
        return Outcome(
            "Starting",
            (_ready("False", "Starting", f"attempt {attempt}: Job {name} created"), accepted),
            {"jobName": name, "attemptStartTime": now, "nextAttemptTime": None},
        )
    if seen.state == "Running":
        if status.get("phase") != "Running" and attempt == 1 and status.get("startTime"):
            TRAINING_TIME_TO_START.observe((ctx.now() - from_rfc3339(status["startTime"])).total_seconds())
        return Outcome(
            "Running",
            (
                _ready("False", "Running", f"attempt {attempt} of {spec.retry.max_attempts} is running"),
                accepted,
            ),
        )
    if seen.unschedulable:
        return Outcome("Starting", (_ready("False", "Unschedulable", seen.unschedulable[:1024]), accepted))
    return Outcome(
        "Starting",
        (_ready("False", "Starting", f"attempt {attempt}: waiting for pods of Job {name}"), accepted),
    )


def _first_attempt(spec: TrainingRunSpec, ctx: ReconcileContext, now: str) -> Outcome:
    dataset, waiting = _dataset_gate(spec, ctx)
    if waiting is not None:
        return waiting
    assert dataset is not None
    if spec.suspend:
        return Outcome("Suspended", (_ready("False", "Suspended", "suspended before it started"),))
    fingerprint = str(dataset["status"]["fingerprint"])
    inputs = _inputs(spec, ctx, dataset, 1, fingerprint)
    _start_attempt(spec, ctx, inputs)
    return Outcome(
        "Starting",
        (
            _ready("False", "Starting", f"attempt 1: Job {inputs.job_name} created"),
            ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""),
        ),
        {
            "attempt": 1,
            "jobName": inputs.job_name,
            "datasetFingerprint": fingerprint,
            "specHash": spec_hash(spec),
            "startTime": now,
            "attemptStartTime": now,
        },
        events=(
            Event(
                "Started",
                f"pinned Dataset {spec.dataset_ref.name} at {fingerprint}; "
                f"attempt 1 is Job {inputs.job_name}",
            ),
        ),
    )


def _numeric(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _succeeded(
    spec: TrainingRunSpec, ctx: ReconcileContext, seen: Observation, accepted: ConditionUpdate, now: str
) -> Outcome:
    status, result = ctx.status, seen.result or {}
    finished = seen.finished_at or now
    gpu_seconds = float(status.get("gpuSeconds") or 0) + _gpu_seconds(
        spec, status.get("attemptStartTime"), finished
    )
    TRAINING_GPU_SECONDS.labels(namespace=ctx.namespace).inc(
        _gpu_seconds(spec, status.get("attemptStartTime"), finished)
    )
    if status.get("startTime"):
        TRAINING_DURATION.labels(result="Succeeded").observe(
            (from_rfc3339(finished) - from_rfc3339(status["startTime"])).total_seconds()
        )
    artifacts = result.get("artifacts") or {}
    checkpoint = result.get("checkpoint") or {}
    wandb = result.get("wandb") or {}
    fields = {
        "completionTime": finished,
        "metrics": _numeric(result.get("metrics") or {}),
        "modelURI": spec.output.uri if artifacts else None,
        "checkpointURI": checkpoint.get("uri"),
        "wandbRun": wandb.get("path"),
        "gpuSeconds": round(gpu_seconds, 3),
    }
    message = f"attempt {status.get('attempt')} succeeded"
    if "accuracy" in fields["metrics"]:  # type: ignore[operator]
        message += f" (accuracy {fields['metrics']['accuracy']:.4f})"  # type: ignore[index]
    if not result:
        message += "; the trainer left no result summary in its termination message"
    return Outcome(
        "Succeeded",
        (_ready("True", "Succeeded", message), accepted),
        {k: v for k, v in fields.items() if v is not None},
    )


def _failed(
    spec: TrainingRunSpec,
    ctx: ReconcileContext,
    seen: Observation,
    accepted: ConditionUpdate,
    now: str,
) -> Outcome:
    status = ctx.status
    attempt = int(status["attempt"])
    failure = seen.failure
    assert failure is not None
    finished = seen.finished_at or now
    used = _gpu_seconds(spec, status.get("attemptStartTime"), finished)
    failures = list(status.get("failures") or [])
    if not any(f.get("attempt") == attempt for f in failures):
        TRAINING_GPU_SECONDS.labels(namespace=ctx.namespace).inc(used)
        failures.append(
            {
                k: v
                for k, v in {
                    "attempt": attempt,
                    "reason": failure.reason,
                    "message": failure.message[:1024],
                    "retryable": failure.retryable,
                    "exitCode": failure.exit_code,
                    "time": finished,
                }.items()
                if v is not None
            }
        )
    failures = failures[-20:]
    gpu_seconds = round(float(status.get("gpuSeconds") or 0) + used, 3)
    if failure.retryable and attempt < spec.retry.max_attempts:
        delay = backoff_seconds(attempt, spec.retry.backoff_seconds, spec.retry.max_backoff_seconds)
        at = to_rfc3339(ctx.now() + timedelta(seconds=delay))
        return Outcome(
            "Pending",
            (
                _ready(
                    "False",
                    "BackoffBeforeRetry",
                    f"attempt {attempt} failed ({failure.reason}: {failure.message}); "
                    f"attempt {attempt + 1} starts at {at}",
                ),
                accepted,
            ),
            {
                "attempt": attempt + 1,
                "jobName": job_name(ctx.name, attempt + 1),
                "nextAttemptTime": at,
                "failures": failures,
                "gpuSeconds": gpu_seconds,
            },
            events=(
                Event(
                    "AttemptFailed",
                    f"attempt {attempt} failed, retrying: {failure.reason}: {failure.message}"[:1024],
                    "Warning",
                ),
            ),
        )
    why = "not retryable" if not failure.retryable else f"{spec.retry.max_attempts} attempts used"
    if status.get("startTime"):
        TRAINING_DURATION.labels(result="Failed").observe(
            (from_rfc3339(finished) - from_rfc3339(status["startTime"])).total_seconds()
        )
    return Outcome(
        "Failed",
        (
            _ready("False", failure.reason, f"attempt {attempt} failed ({why}): {failure.message}"[:1024]),
            accepted,
        ),
        {"completionTime": finished, "failures": failures, "gpuSeconds": gpu_seconds},
    )


def is_due(spec: TrainingRunSpec, ctx: ReconcileContext) -> bool:
    """Timer ticks look again at unfinished runs, and at finished ones until their TTL is served."""
    status = ctx.status
    if status.get("observedGeneration") != ctx.generation:
        return True
    phase = status.get("phase")
    if phase not in FINISHED:
        return phase != "Suspended" or not spec.suspend
    deleted = any(c.get("type") == CHILDREN_DELETED for c in status.get("conditions", []))
    return spec.ttl_seconds_after_finished is not None and not deleted
