"""DriftMonitor reconcile: resolve what is served and what landed, start a check Job when one is due,
observe it, and put its result in status.

Level-based like a ModelVersion's stages. Each call reads what the watches delivered (the
ModelVersion or InferenceDeployment, the TrainingRun of the model's lineage, the current Dataset,
the check Jobs and their pods by owner UID) and the status:
- No check running: a check is due (`builders.driftmonitor.due_check`) when the current Dataset's
  fingerprint, the model, the training data or the check's spec fields differ from the last check's
  (`status.lastCheck`), or the cron schedule came due; otherwise it waits until the schedule's next
  time (`status.nextCheckTime`). Starting one records `status.check` (number, attempt, Job, inputs)
  and `status.pinned` (the S3 settings and URIs every attempt is built from) with the Job.
- One check at a time; its Job name is `<name>-check-<number>-a<attempt>`, the number being one
  more than the last finished check's, so a restart (or a kill -9 between the Job's creation and
  the status write) finds the same Job instead of making a second one.
- A check's pod writes the result summary (mlops_contract.drift) to its termination message; the
  summary becomes status (share, columns, report URI), the `Drifted` condition (abnormal-true: a
  Warning event DriftDetected when it turns True, none when it turns False) and the drift gauges.
- A failed attempt is retried with the stage Jobs' backoff when retryable; a check that failed for
  good is recorded (lastCheck.outcome Failed: not re-run until a new trigger), Ready=False with the
  reason, the earlier result left in place.
- Finished Jobs whose check is recorded are deleted.
The check runs in the Job, under the spec's ServiceAccount and the workloads' pod hardening, never on
the operator's threads. Kueue queueing of check Jobs is not followed (a queued check is Checking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..api.v1alpha1 import DatasetSpec
from ..api.v1alpha1.driftmonitor import DriftMonitorSpec
from ..builders.driftmonitor import (
    CHECK_LABEL,
    CheckInputs,
    JobInputs,
    build_check_job,
    check_hash,
    drift_result,
    due_check,
    job_name,
    output_uri,
    reference_uri,
)
from ..builders.training import backoff_seconds
from ..engine.cache import Cache, ObjectKey
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..metrics import set_drift
from ..observation.pods import PERMANENT_START_FAILURES
from ..observation.training import observe
from ..timeutil import from_rfc3339, to_rfc3339
from .base import MAX_MESSAGE, READY, Outcome, Result, Unchanged, ready
from .context import ReconcileContext
from .reads import read_object, read_through_job

KIND = "DriftMonitor"
DRIFTED = "Drifted"
MAX_ATTEMPTS = 3
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 10, 300


@dataclass(frozen=True)
class Target:
    """What a check runs on now."""

    model_version: str
    engine_uri: str
    model_uri: str
    reference_dataset_uri: str
    reference_fingerprint: str
    current: Mapping[str, Any]  # the current Dataset's spec
    current_fingerprint: str


def _pending(reason: str, message: str) -> Outcome:
    return Outcome("Pending", (ready("False", reason, message),))


def _is_ready(obj: Mapping[str, Any]) -> tuple[bool, str]:
    said: Mapping[str, Any] = find_condition((obj.get("status") or {}).get("conditions", []), READY) or {}
    why = f"{said.get('reason')}: {said.get('message')}" if said else "not reconciled yet"
    return said.get("status") == "True", why


def _served_version(spec: DriftMonitorSpec, ctx: ReconcileContext) -> str | Outcome:
    if spec.model_version_ref is not None:
        return spec.model_version_ref.name
    assert spec.inference_deployment_ref is not None  # the schema's rule: exactly one
    name = spec.inference_deployment_ref.name
    idep = read_object(ctx, "InferenceDeployment", "inferencedeployments", name)
    if idep is None:
        return _pending("InferenceDeploymentNotFound", f"InferenceDeployment {name} does not exist")
    stable = (idep.get("status") or {}).get("stableVersion")
    if not stable:
        return _pending("NothingServed", f"InferenceDeployment {name} serves no ModelVersion yet")
    return str(stable)


def resolve(spec: DriftMonitorSpec, ctx: ReconcileContext) -> Target | Outcome:
    """The served model, its training data and the current data; or what the monitor waits for."""
    served = _served_version(spec, ctx)
    if isinstance(served, Outcome):
        return served
    mv = read_object(ctx, "ModelVersion", "modelversions", served)
    if mv is None:
        return _pending("ModelVersionNotFound", f"ModelVersion {served} does not exist")
    ok, why = _is_ready(mv)
    mv_status = mv.get("status") or {}
    engine = mv_status.get("engine") or {}
    # The workload reads the compile output as evaluate does: the prefix holding metadata.json and
    # the artifact it names (status.engine.uri).
    artifact = engine.get("metadataURI") or engine.get("uri")
    engine_uri = str(artifact).rsplit("/", 1)[0] + "/" if artifact else None
    if not ok or not engine_uri:
        return _pending("ModelVersionNotReady", f"ModelVersion {served} is not Ready ({why})")
    lineage = mv_status.get("lineage") or {}
    run_name = lineage.get("trainingRun")
    if not run_name:
        return _pending(
            "NoTrainingLineage",
            f"ModelVersion {served} was not trained by a TrainingRun here (an artifactURI source): there "
            "is no training data to compare with",
        )
    run = read_object(ctx, "TrainingRun", "trainingruns", str(run_name))
    run_status = (run or {}).get("status") or {}
    training = ((run_status.get("pinned") or {}).get("datasetSpec") or {}).get("source") or {}
    reference_fingerprint = run_status.get("datasetFingerprint") or lineage.get("datasetFingerprint")
    model_uri = lineage.get("sourceURI") or run_status.get("modelURI")
    if run is None or not training.get("uri") or not reference_fingerprint or not model_uri:
        return _pending(
            "TrainingDataUnavailable",
            f"TrainingRun {run_name} of ModelVersion {served} is gone or records no pinned Dataset, "
            "fingerprint and model: the reference data is unknown",
        )
    name = spec.current_dataset_ref.name
    dataset = read_object(ctx, "Dataset", "datasets", name)
    if dataset is None:
        return _pending("DatasetNotFound", f"Dataset {name} (current data) does not exist")
    ok, why = _is_ready(dataset)
    fingerprint = (dataset.get("status") or {}).get("fingerprint")
    if not ok or not fingerprint:
        return _pending("DatasetNotReady", f"Dataset {name} (current data) is not Ready ({why})")
    return Target(
        served,
        str(engine_uri),
        str(model_uri),
        str(training["uri"]),
        str(reference_fingerprint),
        dataset["spec"],
        str(fingerprint),
    )


# -- Jobs ---------------------------------------------------------------------------------------------


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def clean_up_finished_jobs(ctx: ReconcileContext) -> None:
    """Delete finished check Jobs whose check is recorded (numbered at most lastCheck.number, and not
    the running check's current Job). A Job of a check not recorded yet (made just before a restart)
    stays: its result is still to be read."""
    recorded = int((ctx.status.get("lastCheck") or {}).get("number") or 0)
    current = (ctx.status.get("check") or {}).get("jobName")
    for job in ctx.cache.owned("Job", ctx.uid):
        meta = job["metadata"]
        try:
            number = int((meta.get("labels") or {}).get(CHECK_LABEL, "0"))
        except ValueError:
            number = 0
        if meta["name"] == current or meta.get("deletionTimestamp") or not _finished(job):
            continue
        if number <= recorded or (ctx.status.get("check") and number < int(ctx.status["check"]["number"])):
            ctx.require_clients().raw.delete("Job", ctx.namespace, meta["name"], propagation="Background")
            ctx.cache.delete("Job", ctx.namespace, meta["name"])


def _job(ctx: ReconcileContext, name: str) -> Mapping[str, Any] | None:
    job = next((j for j in ctx.cache.owned("Job", ctx.uid) if j["metadata"]["name"] == name), None)
    return job if job is not None else read_through_job(ctx, name)


def _start_job(
    spec: DriftMonitorSpec, ctx: ReconcileContext, check: Mapping[str, Any], pinned: Mapping[str, Any]
) -> None:
    inputs = JobInputs(
        name=ctx.name,
        namespace=ctx.namespace,
        uid=ctx.uid,
        spec=spec,
        check=int(check["number"]),
        attempt=int(check["attempt"]),
        image=str(pinned["image"]),
        current=DatasetSpec.model_validate(pinned["datasetSpec"]),
        current_fingerprint=str(check["currentFingerprint"]),
        reference_dataset_uri=str(pinned["referenceDatasetURI"]),
        reference_fingerprint=str(check["referenceFingerprint"]),
        model_uri=str(pinned["modelURI"]),
        engine_uri=str(check["engineURI"]),
        output_uri=str(check["outputURI"]),
        extra_tolerations=ctx.config.workload_tolerations,
        scratch_size_limit=ctx.config.scratch_size_limit,
        deadline_seconds=spec.deadline_seconds or ctx.config.stage_deadline_seconds,
    )
    created = ctx.require_clients().raw.apply(build_check_job(inputs), ctx.config.field_manager)
    ctx.cache.upsert("Job", created)


# -- reconcile ----------------------------------------------------------------------------------------


def _drifted_condition(ctx: ReconcileContext) -> ConditionUpdate | None:
    """The Drifted condition as it stands (restated with every outcome, so it never goes missing)."""
    held = find_condition(ctx.status.get("conditions") or [], DRIFTED)
    if held is None:
        return None
    return ConditionUpdate(
        DRIFTED, held["status"], held.get("reason") or "Unknown", held.get("message") or ""
    )


def _with_drifted(ctx: ReconcileContext, outcome: Result) -> Result:
    held = _drifted_condition(ctx)
    if isinstance(outcome, Unchanged) or held is None or any(c.type == DRIFTED for c in outcome.conditions):
        return outcome
    return Outcome(
        outcome.phase, (*outcome.conditions, held), outcome.fields, outcome.events, outcome.requeue_after
    )


def _export(ctx: ReconcileContext, drifted: bool, share: Any, columns: Iterable[Mapping[str, Any]]) -> None:
    """The drift gauges of this monitor (set from status on every reconcile, so a restarted or newly
    leading replica exports them too)."""
    set_drift(
        ctx.namespace,
        ctx.name,
        drifted,
        float(share) if isinstance(share, int | float) else None,
        [
            (str(c["name"]), str(c.get("method") or ""), float(c["score"]))
            for c in columns
            if c.get("score") is not None
        ],
    )


def reconcile(spec: DriftMonitorSpec, ctx: ReconcileContext) -> Result:
    if ctx.status.get("lastCheckTime"):
        held = find_condition(ctx.status.get("conditions") or [], DRIFTED) or {}
        _export(
            ctx, held.get("status") == "True", ctx.status.get("driftShare"), ctx.status.get("columns") or []
        )
    clean_up_finished_jobs(ctx)
    if ctx.status.get("check"):
        return _with_drifted(ctx, _run_check(spec, ctx, ctx.status["check"]))
    target = resolve(spec, ctx)
    if isinstance(target, Outcome):
        return _with_drifted(ctx, target)
    return _with_drifted(ctx, _maybe_start(spec, ctx, target))


def _created(ctx: ReconcileContext) -> datetime:
    stamp = ctx.body["metadata"].get("creationTimestamp")
    return from_rfc3339(str(stamp)) if stamp else ctx.now()


def _maybe_start(spec: DriftMonitorSpec, ctx: ReconcileContext, target: Target) -> Result:
    inputs = CheckInputs(
        target.model_version,
        target.engine_uri,
        target.reference_fingerprint,
        target.current_fingerprint,
        check_hash(spec),
    )
    last = ctx.status.get("lastCheck")
    due = due_check(inputs, last, spec.schedule, _created(ctx), ctx.now())
    next_time = to_rfc3339(due.next_time) if due.next_time else None
    wait = max(1.0, (due.next_time - ctx.now()).total_seconds()) if due.next_time else None
    if due.trigger is None:
        return _settled(ctx, next_time, wait)
    number = int((last or {}).get("number") or 0) + 1
    check = {
        "number": number,
        "trigger": due.trigger,
        "modelVersion": target.model_version,
        "currentFingerprint": target.current_fingerprint,
        "referenceFingerprint": target.reference_fingerprint,
        "engineURI": target.engine_uri,
        "specHash": inputs.spec_hash,
        "jobName": job_name(ctx.name, number, 1),
        "attempt": 1,
        "outputURI": output_uri(target.model_uri, ctx.name, ctx.uid, number),
        "startTime": to_rfc3339(ctx.now()),
    }
    pinned = {
        "datasetSpec": dict(target.current),
        "referenceDatasetURI": target.reference_dataset_uri,
        "modelURI": target.model_uri,
        "image": spec.image or ctx.config.trainer_image,
    }
    _start_job(spec, ctx, check, pinned)
    message = (
        f"check {number} ({due.trigger}): Job {check['jobName']} compares Dataset "
        f"{spec.current_dataset_ref.name} ({target.current_fingerprint}) with the training data of "
        f"ModelVersion {target.model_version}"
    )
    return Outcome(
        "Checking",
        (ready(_ready_status(ctx), "Checking", message),),
        {"check": check, "pinned": pinned, "jobName": check["jobName"], "nextCheckTime": next_time},
        requeue_after=wait,
    )


def _ready_status(ctx: ReconcileContext) -> str:
    """Ready while checking: True once a check has succeeded (the last result stands meanwhile)."""
    return "True" if ctx.status.get("lastCheckTime") else "False"


def _settled(ctx: ReconcileContext, next_time: str | None, wait: float | None) -> Result:
    """Nothing due: the last check's outcome stands (restated after a wait for the model or the data),
    with the schedule's next time."""
    status = ctx.status
    last = status.get("lastCheck") or {}
    phase = str(last.get("outcome") or "Pending")
    settled = status.get("phase") == phase and status.get("nextCheckTime") == next_time
    if settled and status.get("observedGeneration") == ctx.generation:
        return Unchanged(wait)
    held: Mapping[str, Any] = find_condition(status.get("conditions") or [], READY) or {}
    if phase in ("Drifted", "NoDrift") and held.get("reason") != "Checked":
        condition = ready(
            "True", "Checked", f"check {last.get('number')}: {phase}; nothing checked since has changed"
        )
    else:
        condition = ConditionUpdate(
            READY, held.get("status", "Unknown"), held.get("reason") or "Waiting", held.get("message") or ""
        )
    return Outcome(phase, (condition,), {"nextCheckTime": next_time}, requeue_after=wait)


def _run_check(spec: DriftMonitorSpec, ctx: ReconcileContext, check: Mapping[str, Any]) -> Result:
    name = str(check["jobName"])
    number, attempt = int(check["number"]), int(check.get("attempt") or 1)
    job = _job(ctx, name)
    if job is None:
        at = check.get("nextAttemptTime")
        if at and ctx.now() < from_rfc3339(str(at)):
            return Unchanged(max(0.0, (from_rfc3339(str(at)) - ctx.now()).total_seconds()))
        pinned = ctx.status.get("pinned") or {}
        _start_job(spec, ctx, check, pinned)
        return Outcome(
            "Checking",
            (ready(_ready_status(ctx), "Checking", f"check {number} attempt {attempt}: Job {name} created"),),
            {"check": {**check, "nextAttemptTime": None}, "jobName": name},
        )
    pods = ctx.cache.owned("Pod", str(job["metadata"]["uid"]))
    seen = observe(job, pods)
    now = to_rfc3339(ctx.now())
    if seen.state == "Succeeded":
        return _checked(spec, ctx, check, seen.result or {}, seen.finished_at or now)
    if seen.state == "Failed":
        assert seen.failure is not None
        f = seen.failure
        return _failed(ctx, check, f.reason, f.message, f.retryable, seen.finished_at or now)
    if seen.stuck and seen.stuck[0] in PERMANENT_START_FAILURES:
        ctx.require_clients().raw.delete("Job", ctx.namespace, name, propagation="Background")
        return _failed(ctx, check, seen.stuck[0], f"the check pod cannot start: {seen.stuck[1]}", False, now)
    doing = "running" if seen.state == "Running" else (seen.unschedulable or "starting")
    if seen.stuck:
        doing = f"the pod cannot start yet: {seen.stuck[0]}: {seen.stuck[1]}"
    return Outcome(
        "Checking",
        (
            ready(
                _ready_status(ctx), "Checking", f"check {number} attempt {attempt} of {MAX_ATTEMPTS}: {doing}"
            ),
        ),
    )


def _recorded(check: Mapping[str, Any], outcome: str, time: str) -> dict[str, Any]:
    keys = (
        "number",
        "trigger",
        "modelVersion",
        "currentFingerprint",
        "referenceFingerprint",
        "engineURI",
        "specHash",
    )
    return {**{k: check[k] for k in keys if check.get(k) is not None}, "time": time, "outcome": outcome}


def _checked(
    spec: DriftMonitorSpec,
    ctx: ReconcileContext,
    check: Mapping[str, Any],
    summary: Mapping[str, Any],
    finished: str,
) -> Outcome:
    pinned = ctx.status.get("pinned") or {}
    reference = reference_uri(str(pinned.get("modelURI") or ""))
    result = drift_result(summary, str(check.get("outputURI") or ""), reference)
    if result is None:
        return _failed(
            ctx,
            check,
            "NoDriftResult",
            "the check Job succeeded without a drift result in its termination message: the image does not "
            "speak the drift contract (mlops_contract.drift)",
            False,
            finished,
        )
    outcome = "Drifted" if result.drifted else "NoDrift"
    share = result.fields.get("driftShare")
    share_text = f"{share:.2f}" if isinstance(share, float) else "unknown"
    threshold = result.fields.get("shareThreshold") or spec.drift_share_threshold
    names = result.fields.get("driftedColumns")
    if result.drifted:
        message = (
            f"drifted share {share_text} >= {threshold} ({names or 'no column named'}) in check "
            f"{check['number']}; report {result.fields['reportURI']}"
        )
    else:
        message = f"drifted share {share_text} < {threshold} in check {check['number']}"
    drifted = ConditionUpdate(DRIFTED, "True" if result.drifted else "False", outcome, message[:MAX_MESSAGE])
    before = find_condition(ctx.status.get("conditions") or [], DRIFTED) or {}
    events: tuple[Event, ...] = ()
    if result.drifted and before.get("status") != "True":
        events = (Event("DriftDetected", message[:MAX_MESSAGE], "Warning"),)
    _export(ctx, result.drifted, share, result.columns)
    fields = {
        **result.fields,
        "modelVersion": check.get("modelVersion"),
        "currentFingerprint": check.get("currentFingerprint"),
        "referenceFingerprint": check.get("referenceFingerprint"),
        "lastCheckTime": finished,
        "lastCheck": _recorded(check, outcome, finished),
        "check": None,
        "pinned": None,
        "jobName": None,
    }
    return Outcome(
        outcome,
        (ready("True", "Checked", f"check {check['number']} ({check.get('trigger')}): {message}"), drifted),
        fields,
        events=events,
        requeue_after=1.0,  # the Job is cleaned up and the next due time computed on the next look
    )


def _failed(  # noqa: PLR0917 - the failure's parts, as the stage Jobs' _stage_failed takes them
    ctx: ReconcileContext, check: Mapping[str, Any], reason: str, message: str, retryable: bool, finished: str
) -> Outcome:
    number, attempt = int(check["number"]), int(check.get("attempt") or 1)
    if retryable and attempt < MAX_ATTEMPTS:
        delay = backoff_seconds(attempt, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
        at = to_rfc3339(ctx.now() + timedelta(seconds=delay))
        retry = {
            **check,
            "attempt": attempt + 1,
            "jobName": job_name(ctx.name, number, attempt + 1),
            "nextAttemptTime": at,
        }
        return Outcome(
            "Checking",
            (
                ready(
                    "False",
                    "BackoffBeforeRetry",
                    f"check {number} attempt {attempt} failed ({reason}: {message}); "
                    f"attempt {attempt + 1} starts at {at}",
                ),
            ),
            {"check": retry, "jobName": retry["jobName"]},
            events=(
                Event(
                    "AttemptFailed",
                    f"check {number} attempt {attempt} failed, retrying: {reason}: {message}"[:MAX_MESSAGE],
                    "Warning",
                ),
            ),
            requeue_after=float(delay),
        )
    why = "not retryable" if not retryable else f"{MAX_ATTEMPTS} attempts used"
    return Outcome(
        "Failed",
        (ready("False", reason, f"check {number} attempt {attempt} failed ({why}): {message}"),),
        {"lastCheck": _recorded(check, "Failed", finished), "check": None, "pinned": None, "jobName": None},
        events=(
            Event(
                "CheckFailed", f"check {number} failed ({why}): {reason}: {message}"[:MAX_MESSAGE], "Warning"
            ),
        ),
        requeue_after=1.0,
    )


# -- what wakes a DriftMonitor ------------------------------------------------------------------------


def _monitors(cache: Cache, namespace: str) -> Iterable[Mapping[str, Any]]:
    return cache.in_namespace(KIND, namespace)


def _keys(cache: Cache, body: Mapping[str, Any], matches: Any) -> Iterable[ObjectKey]:
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    for monitor in _monitors(cache, namespace):
        if matches(monitor.get("spec") or {}, monitor.get("status") or {}, name):
            yield (KIND, namespace, str(monitor["metadata"]["name"]))


def watching_dataset(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """DriftMonitors whose current data is this Dataset (a new fingerprint starts a check)."""
    return _keys(
        cache, body, lambda spec, status, name: (spec.get("currentDatasetRef") or {}).get("name") == name
    )


def watching_modelversion(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """DriftMonitors of this ModelVersion (named, or the one an InferenceDeployment they follow serves)."""
    return _keys(
        cache,
        body,
        lambda spec, status, name: (
            (spec.get("modelVersionRef") or {}).get("name") == name
            or status.get("modelVersion") == name
            or (status.get("check") or {}).get("modelVersion") == name
            or bool(spec.get("inferenceDeploymentRef"))
        ),
    )


def watching_deployment(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """DriftMonitors that follow this InferenceDeployment (a promotion changes what they check)."""
    return _keys(
        cache, body, lambda spec, status, name: (spec.get("inferenceDeploymentRef") or {}).get("name") == name
    )


def watching_training(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """DriftMonitors still waiting on the training data (TrainingDataUnavailable)."""
    return _keys(
        cache,
        body,
        lambda spec, status, name: (
            (find_condition(status.get("conditions") or [], READY) or {}).get("reason")
            == "TrainingDataUnavailable"
        ),
    )
