"""TrainingRun reconcile: wait for the Dataset, run attempts as Jobs, follow them, retry, finish.

Level-based: every call derives the status from the run's Jobs and pods as the watches delivered
them (matched by owner UID), so a restarted operator picks a run up where it was without making a
second Job. Rules that keep attempts honest:
- the first attempt pins the spec, the Dataset's source and fingerprint and the image; every later
  attempt (a retry, a resume) is built from that pin, whatever the spec says now;
- an attempt starts only when every earlier attempt's Job, and with it every pod, is gone (Jobs are
  deleted in the foreground, so a pod in its grace period keeps its Job), so two attempts never write
  the same checkpoint prefix;
- waiting for capacity is a queue, not a failure: a Job Kueue holds suspended, or pods the scheduler
  cannot place, make the run `Queued` (never a failed attempt, never a new Job) until the user's
  optional queue timeout;
- an attempt whose pods, once admitted and scheduled, do not run within the start deadline fails,
  with the kubelet's reason (an image pull, a config error, FailedCreate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from ..api.v1alpha1 import DatasetSpec, TrainingRunSpec
from ..builders.training import (
    TrainingInputs,
    backoff_seconds,
    build_job,
    build_rendezvous_service,
    job_name,
    service_name,
    spec_hash,
)
from ..engine.cache import Cache, ObjectKey
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..metrics import (
    TRAINING_ATTEMPTS,
    TRAINING_DURATION,
    TRAINING_GPU_SECONDS,
    TRAINING_QUEUE_SECONDS,
    TRAINING_TIME_TO_START,
)
from ..observation.pods import PERMANENT_START_FAILURES
from ..observation.queueing import Queued, queued, scheduled_since, workload_of
from ..observation.training import Failure, Observation, finite_metrics, observe
from ..redaction import redact
from ..timeutil import from_rfc3339, to_rfc3339
from .base import ENGINE_REASONS, MAX_MESSAGE, READY, Outcome, Result, Unchanged
from .base import ready as ready_condition
from .context import ReconcileContext
from .reads import read_object, read_through_job

FINISHED = ("Succeeded", "Failed")
SPEC_ACCEPTED = "SpecAccepted"
CHILDREN_DELETED = "ChildrenDeleted"
START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
QUEUE_TIMEOUT_EXCEEDED = "QueueTimeoutExceeded"
# Failures whose pods never ran and never will: their Jobs go at once (a run that failed otherwise
# keeps its Job, pods and logs for whoever debugs it).
NEVER_RAN = (START_DEADLINE_EXCEEDED, QUEUE_TIMEOUT_EXCEEDED)
# A Job that has made no pod for this long is asked why (its FailedCreate events), then every PROBE.
NO_PODS_GRACE = timedelta(seconds=10)
PROBE_INTERVAL = 30.0


def _seconds_until(ctx: ReconcileContext, moment: str) -> float:
    return max(0.0, (from_rfc3339(moment) - ctx.now()).total_seconds())


# -- the Dataset ------------------------------------------------------------------------------------


def waiting_on_dataset(cache: Cache, dataset: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Runs not started yet that name this Dataset: a change of it may let them start."""
    meta = dataset["metadata"]
    for run in cache.in_namespace("TrainingRun", str(meta["namespace"])):
        ref = (run.get("spec") or {}).get("datasetRef") or {}
        if ref.get("name") == meta["name"] and not (run.get("status") or {}).get("attempt"):
            yield ("TrainingRun", str(meta["namespace"]), str(run["metadata"]["name"]))


def _read_dataset(ctx: ReconcileContext, name: str) -> Mapping[str, Any] | None:
    return read_object(ctx, "Dataset", "datasets", name)


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
                ready_condition(
                    "False", "DatasetNotFound", f"Dataset {name} does not exist in namespace {ctx.namespace}"
                ),
            ),
        )
    ready: Mapping[str, Any] = find_condition(dataset.get("status", {}).get("conditions", []), READY) or {}
    if ready.get("status") != "True" or not dataset.get("status", {}).get("fingerprint"):
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "not reconciled yet"
        return None, Outcome(
            "WaitingForDataset",
            (ready_condition("False", "DatasetNotReady", f"Dataset {name} is not Ready ({why})"),),
        )
    return dataset, None


# -- the pin ------------------------------------------------------------------------------------------


def _pin(spec: TrainingRunSpec, dataset: Mapping[str, Any], image: str) -> dict[str, Any]:
    """What every attempt of this run is built from: the spec it started with (without suspend and
    the TTL, which may change), the Dataset's source, and the image it resolved to."""
    frozen = spec.wire()
    frozen.pop("suspend", None)
    frozen.pop("ttlSecondsAfterFinished", None)
    return {"spec": frozen, "datasetSpec": dict(dataset["spec"]), "image": image}


def _pinned_spec(ctx: ReconcileContext, spec: TrainingRunSpec) -> TrainingRunSpec:
    """The spec the run started with, with today's suspend and TTL (the two fields that may change).
    A run started before pinning existed goes on with its current spec."""
    pinned = ctx.status.get("pinned")
    if not pinned:
        return spec
    return TrainingRunSpec.model_validate(
        {
            **pinned["spec"],
            "suspend": spec.suspend,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        }
    )


def _inputs_from_pin(ctx: ReconcileContext, started: TrainingRunSpec, attempt: int) -> TrainingInputs:
    status = ctx.status
    pinned = status.get("pinned")
    if not pinned:
        raise RuntimeError(
            "this run started under an operator version that did not pin its spec; "
            "create a new TrainingRun to train again"
        )
    return _inputs(
        ctx,
        spec=started,
        dataset=DatasetSpec.model_validate(pinned["datasetSpec"]),
        attempt=attempt,
        status=status,
        image=str(pinned["image"]),
    )


def _inputs(
    ctx: ReconcileContext,
    *,
    spec: TrainingRunSpec,
    dataset: DatasetSpec,
    attempt: int,
    status: Mapping[str, Any],
    image: str,
) -> TrainingInputs:
    return TrainingInputs(
        name=ctx.name,
        namespace=ctx.namespace,
        uid=ctx.uid,
        spec=spec,
        dataset=dataset,
        dataset_fingerprint=str(status.get("datasetFingerprint")),
        attempt=attempt,
        default_image=image,
        extra_tolerations=ctx.config.workload_tolerations,
        scratch_size_limit=ctx.config.scratch_size_limit,
        shm_size_limit=ctx.config.shm_size_limit,
    )


# -- children -----------------------------------------------------------------------------------------


def _jobs(ctx: ReconcileContext) -> list[Mapping[str, Any]]:
    return ctx.cache.owned("Job", ctx.uid)


def _pods(ctx: ReconcileContext, job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return ctx.cache.owned("Pod", str(job["metadata"]["uid"]))


def _start_attempt(ctx: ReconcileContext, inputs: TrainingInputs) -> None:
    raw, manager = ctx.require_clients().raw, ctx.config.field_manager
    if inputs.distributed:
        raw.apply(build_rendezvous_service(inputs), manager)
    created = raw.apply(build_job(inputs), manager)
    ctx.cache.upsert("Job", created)  # the next reconcile sees it before its watch event arrives
    TRAINING_ATTEMPTS.labels(namespace=ctx.namespace).inc()


def _delete_job(ctx: ReconcileContext, job: Mapping[str, Any]) -> None:
    """Delete in the foreground: the Job stays (with a deletionTimestamp) until all its pods are gone,
    so its absence proves no pod of that attempt runs any more. Pods get SIGTERM and their grace
    period: the trainer writes a checkpoint before it exits."""
    if job["metadata"].get("deletionTimestamp"):
        return
    ctx.require_clients().raw.delete("Job", ctx.namespace, job["metadata"]["name"], propagation="Foreground")


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


# -- finished runs ------------------------------------------------------------------------------------


def _final_ready(status: Mapping[str, Any]) -> ConditionUpdate:
    """Ready of a finished run, as it was written when it finished (unless the engine has since put an
    error there: then as the phase says)."""
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    phase = status["phase"]
    if ready and ready.get("reason") not in ENGINE_REASONS:
        return ConditionUpdate(READY, ready["status"], ready["reason"], ready.get("message", ""))
    if phase == "Succeeded":
        return ready_condition("True", "Succeeded", f"attempt {status.get('attempt')} succeeded")
    last = (status.get("failures") or [{}])[-1]
    return ready_condition(
        "False", str(last.get("reason") or "Failed"), str(last.get("message") or "the run failed")
    )


def _finished(spec: TrainingRunSpec, ctx: ReconcileContext) -> Result:
    """A finished run keeps its status; after ttlSecondsAfterFinished its children go."""
    status = ctx.status
    conditions = [_final_ready(status), _spec_accepted(spec, status)]
    completion = status.get("completionTime")
    ttl = spec.ttl_seconds_after_finished
    requeue: float | None = None
    deleted = find_condition(status.get("conditions", []), CHILDREN_DELETED)
    last_failure = (status.get("failures") or [{}])[-1]
    if status["phase"] == "Failed" and last_failure.get("reason") in NEVER_RAN:
        # Its pods never ran and never will (a bad image, a missing ServiceAccount, a queue given up
        # on): remove them, and with them its place in Kueue's queue.
        for job in _jobs(ctx):
            _delete_job(ctx, job)
    if ttl is not None and completion and not deleted:
        expires = from_rfc3339(completion) + timedelta(seconds=ttl)
        if ctx.now() >= expires:
            for job in _jobs(ctx):
                _delete_job(ctx, job)
            ctx.require_clients().raw.delete("Service", ctx.namespace, service_name(ctx.name))
            conditions.append(
                ConditionUpdate(
                    CHILDREN_DELETED, "True", "TTLExpired", f"children deleted {ttl}s after the run finished"
                )
            )
        else:
            requeue = (expires - ctx.now()).total_seconds()
    if status.get("observedGeneration") == ctx.generation and len(conditions) == 2:
        ready = find_condition(status.get("conditions", []), READY) or {}
        accepted = find_condition(status.get("conditions", []), SPEC_ACCEPTED) or {}
        if (ready.get("reason"), accepted.get("reason")) == (conditions[0].reason, conditions[1].reason):
            return Unchanged(requeue)  # settled: costs nothing
    return Outcome(status["phase"], tuple(conditions), requeue_after=requeue)


# -- the reconcile -----------------------------------------------------------------------------------


def reconcile(spec: TrainingRunSpec, ctx: ReconcileContext) -> Result:
    result = _reconcile(spec, ctx)
    if not isinstance(result, Outcome) or result.phase == "Queued" or "queue" in result.fields:
        return result
    # Whatever ended the wait (admitted, scheduled, the Job deleted, a failure) ends the stretch.
    left = _left_queue(ctx)
    return replace(result, fields={**result.fields, **left}) if left else result


def _reconcile(spec: TrainingRunSpec, ctx: ReconcileContext) -> Result:
    status = ctx.status
    if status.get("phase") in FINISHED:
        return _finished(spec, ctx)
    now = to_rfc3339(ctx.now())
    attempt = int(status.get("attempt") or 0)
    if attempt == 0:
        return _first_attempt(spec, ctx, now)
    accepted = _spec_accepted(spec, status)
    spec = _pinned_spec(ctx, spec)  # from here on: the spec the run started with
    name = status.get("jobName") or job_name(ctx.name, attempt)
    jobs = _jobs(ctx)
    job = next((j for j in jobs if j["metadata"]["name"] == name), None)
    if job is None and status.get("attemptStartTime") and not status.get("nextAttemptTime"):
        job = read_through_job(ctx, name)
    live = job is not None and not job["metadata"].get("deletionTimestamp")
    seen = observe(job, _pods(ctx, job) if job is not None else [])
    if live and seen.state == "Succeeded":
        return _succeeded(spec, ctx, seen, accepted, now)
    if live and seen.state == "Failed":
        assert seen.failure is not None
        return _failed(
            spec, ctx, failure=seen.failure, finished_at=seen.finished_at, accepted=accepted, now=now
        )

    if spec.suspend:
        going = [j for j in jobs if not j["metadata"].get("deletionTimestamp")]
        for j in going:
            _delete_job(ctx, j)
        return Outcome(
            "Suspended",
            (
                ready_condition(
                    "False",
                    "Suspended",
                    f"suspended at attempt {attempt}; set suspend: false to resume from the last checkpoint",
                ),
                accepted,
            ),
            events=(Event("Suspended", f"deleted Job {name}; its pods checkpoint on SIGTERM"),)
            if going
            else (),
        )

    # Earlier attempts (and a suspended attempt's own Job) must be gone, pods and all, first.
    stale = [j for j in jobs if j["metadata"]["name"] != name or j["metadata"].get("deletionTimestamp")]
    if stale:
        for j in stale:
            _delete_job(ctx, j)
        names = ", ".join(sorted(str(j["metadata"]["name"]) for j in stale))
        return Outcome(
            "Pending",
            (
                ready_condition(
                    "False",
                    "WaitingForPreviousAttempt",
                    f"attempt {attempt} starts when Job {names} and its pods are gone",
                ),
                accepted,
            ),
        )

    next_attempt = status.get("nextAttemptTime")
    if job is None and next_attempt and ctx.now() < from_rfc3339(next_attempt):
        last = (status.get("failures") or [{}])[-1]
        return Outcome(
            "Pending",
            (
                ready_condition(
                    "False",
                    "BackoffBeforeRetry",
                    f"attempt {attempt} starts at {next_attempt}, after {last.get('reason')}: "
                    f"{last.get('message', '')}",
                ),
                accepted,
            ),
            requeue_after=_seconds_until(ctx, next_attempt),
        )
    if job is None:
        # A new attempt, a resume after suspend, or a Job someone deleted: (re)create it from the pin.
        inputs = _inputs_from_pin(ctx, spec, attempt)
        _start_attempt(ctx, inputs)
        return Outcome(
            "Starting",
            (ready_condition("False", "Starting", f"attempt {attempt}: Job {name} created"), accepted),
            {"jobName": name, "attemptStartTime": now, "nextAttemptTime": None},
            requeue_after=float(_start_deadline(spec, ctx)),
        )
    repaired = _repair_rendezvous(ctx, spec, attempt) if live else ()
    pods = _pods(ctx, job)
    waiting = queued(job, pods, workload_of(job, ctx.cache.owned("Workload", str(job["metadata"]["uid"]))))
    if waiting is not None:
        return _queued(spec, ctx, waiting, accepted, now, events=repaired)
    if seen.state == "Running":
        if status.get("phase") != "Running" and attempt == 1 and status.get("startTime"):
            TRAINING_TIME_TO_START.observe((ctx.now() - from_rfc3339(status["startTime"])).total_seconds())
        return Outcome(
            "Running",
            (
                ready_condition(
                    "False", "Running", f"attempt {attempt} of {spec.retry.max_attempts} is running"
                ),
                accepted,
            ),
            events=repaired,
        )
    return _starting(spec, ctx, job=job, seen=seen, accepted=accepted, now=now)


def _queued(
    spec: TrainingRunSpec,
    ctx: ReconcileContext,
    waiting: Queued,
    accepted: ConditionUpdate,
    now: str,
    *,
    events: tuple[Event, ...],
) -> Outcome:
    """Waiting for capacity: no failed attempt, no new Job. The stretch is timed from when it began
    (as the objects say, or as first seen), for the histogram, status and the user's queue timeout."""
    status, attempt = ctx.status, int(ctx.status["attempt"])
    previous = status.get("queue") or {}
    since = str(previous.get("since") or waiting.since or now)
    timeout = spec.scheduling.queue_timeout_seconds
    waited = max(0.0, (ctx.now() - from_rfc3339(since)).total_seconds())
    if timeout is not None and waited >= timeout:
        TRAINING_QUEUE_SECONDS.labels(queue=waiting.local_queue or "").observe(waited)
        failure = Failure(
            False,
            QUEUE_TIMEOUT_EXCEEDED,
            f"waited {int(waited)}s for capacity, longer than scheduling.queueTimeoutSeconds "
            f"({timeout}s): {waiting.reason}: {waiting.message}",
        )
        outcome = _failed(spec, ctx, failure=failure, finished_at=now, accepted=accepted, now=now)
        return replace(outcome, fields={**outcome.fields, **_queue_fields(ctx, waited)})
    return Outcome(
        "Queued",
        (ready_condition("False", waiting.reason, f"attempt {attempt}: {waiting.message}"), accepted),
        {"queue": waiting.status(since)},
        events=events,
        requeue_after=max(1.0, timeout - waited) if timeout is not None else None,
    )


def _queue_fields(ctx: ReconcileContext, waited: float) -> dict[str, Any]:
    return {"queue": None, "queuedSeconds": round(float(ctx.status.get("queuedSeconds") or 0) + waited, 3)}


def _left_queue(ctx: ReconcileContext) -> dict[str, Any]:
    """A run that was Queued and is not any more: the stretch it waited, into the histogram and
    status.queuedSeconds, and status.queue cleared."""
    previous = ctx.status.get("queue")
    if not previous:
        return {}
    waited = max(
        0.0, (ctx.now() - from_rfc3339(str(previous.get("since") or to_rfc3339(ctx.now())))).total_seconds()
    )
    TRAINING_QUEUE_SECONDS.labels(queue=str(previous.get("localQueue") or "")).observe(waited)
    return _queue_fields(ctx, waited)


def _repair_rendezvous(ctx: ReconcileContext, spec: TrainingRunSpec, attempt: int) -> tuple[Event, ...]:
    """A distributed attempt's rendezvous Service, put back when someone deleted it: a worker that
    restarts resolves its master through it. Read from the cache (the Service informer), so a run
    whose Service is there costs nothing."""
    if spec.distributed.nodes <= 1:
        return ()
    service = build_rendezvous_service(_inputs_from_pin(ctx, spec, attempt))
    name = service["metadata"]["name"]
    present = any(
        o["metadata"]["name"] == name and not o["metadata"].get("deletionTimestamp")
        for o in ctx.cache.owned("Service", ctx.uid)
    )
    if present:
        return ()
    applied = ctx.require_clients().raw.apply(service, ctx.config.field_manager)
    applied.setdefault("kind", "Service")
    ctx.cache.upsert("Service", applied)
    return (
        Event("ChildRepaired", f"Service {name} (the workers' rendezvous) was missing and is created again"),
    )


def _start_deadline(spec: TrainingRunSpec, ctx: ReconcileContext) -> int:
    override = spec.scheduling.start_deadline_seconds
    return override if override is not None else ctx.config.start_deadline_seconds


def _failed_create(ctx: ReconcileContext, job: Mapping[str, Any]) -> str | None:
    """Why the Job controller cannot make this Job's pods (a missing ServiceAccount or
    PriorityClass, a quota, Pod Security): the message of its latest FailedCreate event."""
    uid = job["metadata"]["uid"]
    events = (
        ctx.require_clients()
        .core.list_namespaced_event(
            ctx.namespace, field_selector=f"involvedObject.uid={uid},reason=FailedCreate", limit=20
        )
        .items
    )
    if not events:
        return None
    latest = max(events, key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    return str(latest.message)


def _starting(
    spec: TrainingRunSpec,
    ctx: ReconcileContext,
    *,
    job: Mapping[str, Any],
    seen: Observation,
    accepted: ConditionUpdate,
    now: str,
) -> Outcome:
    status, attempt = ctx.status, int(ctx.status["attempt"])
    pods = _pods(ctx, job)
    # The start clock runs from when the pods were admitted and scheduled, not while they queued.
    clock = [
        status.get("attemptStartTime") or job["metadata"]["creationTimestamp"],
        scheduled_since(job, pods, now),
    ]
    started = max(from_rfc3339(str(c)) for c in clock if c)
    deadline_seconds = _start_deadline(spec, ctx)
    deadline = started + timedelta(seconds=deadline_seconds)
    reason, message, permanent = (
        "Starting",
        f"attempt {attempt}: waiting for pods of Job {job['metadata']['name']}",
        False,
    )
    requeue = max(0.0, (deadline - ctx.now()).total_seconds())
    if seen.stuck:
        reason, message = seen.stuck
        permanent = reason in PERMANENT_START_FAILURES
    elif not pods and ctx.now() - started >= NO_PODS_GRACE:
        if cause := _failed_create(ctx, job):
            reason, message = "FailedCreate", cause
        requeue = min(requeue, PROBE_INTERVAL)
    elif not pods:
        requeue = min(requeue, NO_PODS_GRACE.total_seconds())
    if ctx.now() >= deadline:
        failure = Failure(
            not permanent,
            START_DEADLINE_EXCEEDED,
            f"the attempt's pods did not start within {deadline_seconds}s of being scheduled "
            f"({reason}: {message})",
        )
        return _failed(spec, ctx, failure=failure, finished_at=now, accepted=accepted, now=now)
    return Outcome(
        "Starting", (ready_condition("False", reason, message), accepted), requeue_after=max(1.0, requeue)
    )


def _first_attempt(spec: TrainingRunSpec, ctx: ReconcileContext, now: str) -> Outcome:
    dataset, waiting = _dataset_gate(spec, ctx)
    if waiting is not None:
        return waiting
    assert dataset is not None
    if spec.suspend:
        return Outcome("Suspended", (ready_condition("False", "Suspended", "suspended before it started"),))
    fingerprint = str(dataset["status"]["fingerprint"])
    pin = _pin(spec, dataset, spec.image or ctx.config.trainer_image)
    first = {"datasetFingerprint": fingerprint}
    inputs = _inputs(
        ctx,
        spec=spec,
        dataset=DatasetSpec.model_validate(pin["datasetSpec"]),
        attempt=1,
        status=first,
        image=pin["image"],
    )
    _start_attempt(ctx, inputs)
    return Outcome(
        "Starting",
        (
            # Its transition event says it once: no separate "Started" event per run.
            ready_condition(
                "False",
                "Starting",
                f"attempt 1: Job {inputs.job_name} created; "
                f"pinned Dataset {spec.dataset_ref.name} at {fingerprint}",
            ),
            ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""),
        ),
        {
            "attempt": 1,
            "jobName": inputs.job_name,
            "datasetFingerprint": fingerprint,
            "specHash": spec_hash(spec),
            "pinned": pin,
            "startTime": now,
            "attemptStartTime": now,
        },
        requeue_after=float(_start_deadline(spec, ctx)),
    )


def _text(value: Any, limit: int = 1024) -> str | None:
    """A workload's string for status: redacted before it is cut, so a cut never keeps half a secret."""
    return redact(str(value))[:limit] if value else None


def _succeeded(
    spec: TrainingRunSpec, ctx: ReconcileContext, seen: Observation, accepted: ConditionUpdate, now: str
) -> Outcome:
    status, result = ctx.status, seen.result or {}
    finished = seen.finished_at or now
    used = _gpu_seconds(spec, status.get("attemptStartTime"), finished)
    gpu_seconds = float(status.get("gpuSeconds") or 0) + used
    TRAINING_GPU_SECONDS.labels(namespace=ctx.namespace).inc(used)
    if status.get("startTime"):
        TRAINING_DURATION.labels(result="Succeeded").observe(
            (from_rfc3339(finished) - from_rfc3339(status["startTime"])).total_seconds()
        )
    artifacts = result.get("artifacts") if isinstance(result.get("artifacts"), Mapping) else {}
    checkpoint = result.get("checkpoint") if isinstance(result.get("checkpoint"), Mapping) else {}
    wandb = result.get("wandb") if isinstance(result.get("wandb"), Mapping) else {}
    raw_metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    metrics = finite_metrics(raw_metrics or {})
    fields: dict[str, Any] = {
        "completionTime": finished,
        "metrics": metrics,
        "modelURI": spec.output.uri if artifacts else None,
        "checkpointURI": _text((checkpoint or {}).get("uri")),
        "wandbRun": _text((wandb or {}).get("path")),
        "gpuSeconds": round(gpu_seconds, 3),
    }
    message = f"attempt {status.get('attempt')} succeeded"
    if "accuracy" in metrics:
        message += f" (accuracy {metrics['accuracy']:.4f})"
    dropped = sorted(set(map(str, raw_metrics or {})) - set(metrics))
    if dropped:
        message += f"; metrics that were not finite numbers were left out: {', '.join(dropped)[:200]}"
    if not result:
        message += "; the trainer left no result summary in its termination message"
    return Outcome(
        "Succeeded",
        (ready_condition("True", "Succeeded", message), accepted),
        {k: v for k, v in fields.items() if v is not None},
        requeue_after=float(spec.ttl_seconds_after_finished)
        if spec.ttl_seconds_after_finished is not None
        else None,
    )


def _failed(
    spec: TrainingRunSpec,
    ctx: ReconcileContext,
    *,
    failure: Failure,
    finished_at: str | None,
    accepted: ConditionUpdate,
    now: str,
) -> Outcome:
    status = ctx.status
    attempt = int(status["attempt"])
    finished = finished_at or now
    used = _gpu_seconds(spec, status.get("attemptStartTime"), finished)
    failures: list[Mapping[str, Any]] = list(status.get("failures") or [])
    message = failure.message[:MAX_MESSAGE]
    if not any(f.get("attempt") == attempt for f in failures):
        TRAINING_GPU_SECONDS.labels(namespace=ctx.namespace).inc(used)
        failures.append(
            {
                k: v
                for k, v in {
                    "attempt": attempt,
                    "reason": failure.reason[:128],
                    "message": message,
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
                ready_condition(
                    "False",
                    "BackoffBeforeRetry",
                    f"attempt {attempt} failed ({failure.reason}: {message}); "
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
                    f"attempt {attempt} failed, retrying: {failure.reason}: {message}"[:MAX_MESSAGE],
                    "Warning",
                ),
            ),
            requeue_after=float(delay),
        )
    why = "not retryable" if not failure.retryable else f"{spec.retry.max_attempts} attempts used"
    if status.get("startTime"):
        TRAINING_DURATION.labels(result="Failed").observe(
            (from_rfc3339(finished) - from_rfc3339(status["startTime"])).total_seconds()
        )
    return Outcome(
        "Failed",
        (ready_condition("False", failure.reason, f"attempt {attempt} failed ({why}): {message}"), accepted),
        {"completionTime": finished, "failures": failures, "gpuSeconds": gpu_seconds},
    )
