"""ModelVersion reconcile: wait for the trained model, compile it, evaluate it, check the gates,
register it, move its aliases.

Level-based like TrainingRun: each call reads what the watches delivered (the TrainingRun, the
Dataset, the stage Jobs and their pods, by owner UID) and the status, and does the next step.
- Compile starting pins what the artifact depends on (`status.pinned`, `status.specHash`): the
  trained model's URI, the Dataset whose S3 settings and held-out split are used, the image; every
  attempt of both stages is built from the pin. A later change of those fields is refused
  (SpecAccepted=False); stage, aliases and the registry credentials may change (promotion).
- Registration is idempotent: the registry is asked for the version tagged with this object's UID
  before one is created, so a restart or a lost response never makes a second version.
- With a registry, a finalizer lets deletion archive the version (deletionPolicy Archive); an SRE
  lets a deletion through an unreachable registry with the annotation SKIP_CLEANUP_ANNOTATION.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..api.v1alpha1 import DatasetSpec, ModelVersionSpec
from ..builders.modelversion import (
    Stage,
    StageInputs,
    build_stage_job,
    check_gates,
    compile_hash,
    default_engine_uri,
    job_name,
)
from ..builders.training import backoff_seconds
from ..engine.cache import Cache, ObjectKey
from ..integrations.endpoints import EndpointNotAllowedError, require_allowed
from ..integrations.registry import (
    ModelRegistry,
    RegisteredVersion,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    VersionRequest,
)
from ..integrations.s3 import S3UnavailableError, split_object_uri
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..metrics import MODELVERSION_COMPILE_SECONDS, MODELVERSION_GATE_FAILURES, MODELVERSION_REGISTRATIONS
from ..observation.pods import PERMANENT_START_FAILURES
from ..observation.training import Observation, finite_metrics, observe
from ..timeutil import from_rfc3339, to_rfc3339
from .base import ENGINE_REASONS, MAX_MESSAGE, READY, Outcome, Result, Unchanged
from .context import ReconcileContext
from .reads import read_object, read_through_job
from .secrets import CredentialsUnavailableError, read_secret_values
from .stores import open_store

PLURAL = "modelversions"
FINALIZER = "mlops.dev/registry"
# Set to "true" on a ModelVersion being deleted: remove the finalizer without touching the registry
# (the documented way through a registry that will not come back).
SKIP_CLEANUP_ANNOTATION = "mlops.dev/skip-registry-cleanup"
SPEC_ACCEPTED = "SpecAccepted"
PROMOTED = "Promoted"
SETTLED = ("Ready", "Rejected", "Failed")
MAX_ATTEMPTS = 3  # per stage, for retryable failures (eviction, node loss, S3 blips)
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 10, 300
# While the source or the registry is unavailable, retry after half the time it has been failing,
# within these bounds: quick after a blip, gentle on a long outage, no counter in status.
RETRY_MIN, RETRY_MAX = timedelta(seconds=5), timedelta(minutes=5)
STAGE_ALIASES = {"Development": "development", "Staging": "staging", "Production": "production"}
SOURCE_KEYS = ("model.onnx", "metadata.json")
ARTIFACT_KEYS = {"tensorrt": "model.plan", "onnx": "model.onnx"}
STAGE_PHASES: dict[str, Stage] = {"Compiling": "compile", "Evaluating": "evaluate"}


def _ready(status: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(READY, status, reason, message[:MAX_MESSAGE])  # type: ignore[arg-type]


def _accepted(spec: ModelVersionSpec, status: Mapping[str, Any]) -> ConditionUpdate:
    locked = status.get("specHash")
    if locked and locked != compile_hash(spec):
        return ConditionUpdate(
            SPEC_ACCEPTED,
            "False",
            "ImmutableAfterStart",
            "the spec changed after compile started; only stage, registry.aliases, "
            "registry.credentialsSecretRef, registry.deletionPolicy, scheduling and serviceAccountName "
            "may change. This version goes on with the spec it started with: create a new ModelVersion "
            "to compile differently",
        )
    return ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", "")


def _retry_after(ctx: ReconcileContext, reason: str) -> float:
    """Half the time Ready has had `reason`, within RETRY_MIN..RETRY_MAX."""
    ready: Mapping[str, Any] = find_condition(ctx.status.get("conditions", []), READY) or {}
    since = ready.get("lastTransitionTime") if ready.get("reason") == reason else None
    failing_for = ctx.now() - from_rfc3339(since) if since else timedelta(0)
    return min(max(failing_for / 2, RETRY_MIN), RETRY_MAX).total_seconds()


def _desired_aliases(spec: ModelVersionSpec) -> list[str]:
    aliases = list(spec.registry.aliases) if spec.registry else []
    stage_alias = STAGE_ALIASES.get(spec.stage)
    if stage_alias and stage_alias not in aliases:
        aliases.append(stage_alias)
    return sorted(aliases)


# -- what waits on what -------------------------------------------------------------------------------


def _not_started(mv: Mapping[str, Any]) -> bool:
    return not (mv.get("status") or {}).get("specHash")


def waiting_on_training(cache: Cache, run: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """ModelVersions not compiling yet that promote this TrainingRun."""
    meta = run["metadata"]
    for mv in cache.in_namespace("ModelVersion", str(meta["namespace"])):
        ref = ((mv.get("spec") or {}).get("source") or {}).get("trainingRunRef") or {}
        if ref.get("name") == meta["name"] and _not_started(mv):
            yield ("ModelVersion", str(meta["namespace"]), str(mv["metadata"]["name"]))


def waiting_on_dataset(cache: Cache, dataset: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """ModelVersions not compiling yet that name this Dataset for evaluation or calibration."""
    meta = dataset["metadata"]
    for mv in cache.in_namespace("ModelVersion", str(meta["namespace"])):
        spec = mv.get("spec") or {}
        named = {
            ((spec.get("evaluation") or {}).get("datasetRef") or {}).get("name"),
            (((spec.get("compile") or {}).get("calibration") or {}).get("datasetRef") or {}).get("name"),
        }
        if meta["name"] in named and _not_started(mv):
            yield ("ModelVersion", str(meta["namespace"]), str(mv["metadata"]["name"]))


def _registered_model(mv: Mapping[str, Any]) -> tuple[str, str, str] | None:
    registry = (mv.get("spec") or {}).get("registry")
    if not registry:
        return None
    name = registry.get("collection") or (mv.get("spec") or {}).get("modelName")
    return str(registry.get("provider", "wandb")), str(registry.get("trackingURI") or ""), str(name)


def sharing_a_model(cache: Cache, mv: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Ready ModelVersions of the same registered model: an alias this one took may have left them."""
    model = _registered_model(mv)
    if model is None or not ((mv.get("status") or {}).get("registry") or {}).get("aliases"):
        return
    meta = mv["metadata"]
    for other in cache.in_namespace("ModelVersion", str(meta["namespace"])):
        if other["metadata"]["name"] == meta["name"]:
            continue
        if (other.get("status") or {}).get("registry") and _registered_model(other) == model:
            yield ("ModelVersion", str(meta["namespace"]), str(other["metadata"]["name"]))


# -- the source -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The trained model and the Dataset (S3 settings, held-out split) a ModelVersion compiles from."""

    model_uri: str
    dataset_spec: Mapping[str, Any]
    lineage: Mapping[str, Any]
    calibration_uri: str | None = None


def _ready_dataset(ctx: ReconcileContext, name: str, purpose: str) -> Mapping[str, Any] | Outcome:
    dataset = read_object(ctx, "Dataset", "datasets", name)
    if dataset is None:
        return Outcome(
            "Pending",
            (_ready("False", "DatasetNotFound", f"Dataset {name} ({purpose}) does not exist"),),
        )
    ready: Mapping[str, Any] = (
        find_condition((dataset.get("status") or {}).get("conditions", []), READY) or {}
    )
    if ready.get("status") != "True":
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "not reconciled yet"
        return Outcome(
            "Pending",
            (_ready("False", "DatasetNotReady", f"Dataset {name} ({purpose}) is not Ready ({why})"),),
        )
    return dataset


def _hash_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _from_training(spec: ModelVersionSpec, ctx: ReconcileContext, name: str) -> Source | Outcome:
    run = read_object(ctx, "TrainingRun", "trainingruns", name)
    if run is None:
        return Outcome(
            "WaitingForTraining",
            (
                _ready(
                    "False", "TrainingRunNotFound", f"TrainingRun {name} does not exist in {ctx.namespace}"
                ),
            ),
        )
    status = run.get("status") or {}
    phase = status.get("phase")
    run_ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if phase == "Failed":
        return Outcome(
            "Failed",
            (
                _ready(
                    "False",
                    "TrainingFailed",
                    f"TrainingRun {name} failed ({run_ready.get('reason')}: {run_ready.get('message', '')})",
                ),
            ),
            {"completionTime": to_rfc3339(ctx.now())},
        )
    if phase != "Succeeded":
        return Outcome(
            "WaitingForTraining",
            (
                _ready(
                    "False", "WaitingForTraining", f"TrainingRun {name} is {phase or 'not reconciled yet'}"
                ),
            ),
        )
    pinned = status.get("pinned") or {}
    model_uri = status.get("modelURI")
    if not model_uri or not pinned.get("datasetSpec"):
        return Outcome(
            "Failed",
            (
                _ready(
                    "False",
                    "NoModelArtifact",
                    f"TrainingRun {name} succeeded without recording a model artifact (status.modelURI) "
                    "or its Dataset (status.pinned): it was not trained by this operator's trainer",
                ),
            ),
            {"completionTime": to_rfc3339(ctx.now())},
        )
    dataset_name = str((run.get("spec") or {}).get("datasetRef", {}).get("name", ""))
    dataset_spec: Mapping[str, Any] = pinned["datasetSpec"]
    if spec.evaluation.dataset_ref:
        evaluation = _ready_dataset(ctx, spec.evaluation.dataset_ref.name, "evaluation")
        if isinstance(evaluation, Outcome):
            return evaluation
        dataset_spec = evaluation["spec"]
    lineage = {
        "trainingRun": name,
        "trainingRunUID": str(run["metadata"].get("uid", "")),
        "dataset": dataset_name,
        "datasetFingerprint": status.get("datasetFingerprint"),
        "trainerImage": pinned.get("image"),
        "hyperparametersSha256": _hash_of((pinned.get("spec") or {}).get("hyperparameters") or {}),
        "sourceURI": model_uri,
    }
    return Source(str(model_uri), dataset_spec, {k: v for k, v in lineage.items() if v})


def _from_artifact(spec: ModelVersionSpec, ctx: ReconcileContext, uri: str) -> Source | Outcome:
    assert spec.evaluation.dataset_ref is not None  # the schema's rule
    evaluation = _ready_dataset(ctx, spec.evaluation.dataset_ref.name, "evaluation")
    if isinstance(evaluation, Outcome):
        return evaluation
    source = DatasetSpec.model_validate(evaluation["spec"]).source
    prefix = uri.rstrip("/") + "/"
    try:
        store = open_store(ctx, source)
        missing = [key for key in SOURCE_KEYS if not store.exists(*split_object_uri(prefix + key))]
    except (EndpointNotAllowedError, CredentialsUnavailableError, S3UnavailableError, ValueError) as error:
        return _source_unavailable(ctx, f"cannot check {prefix}: {error}")
    if missing:
        return _source_unavailable(ctx, f"{prefix} has no {' and no '.join(missing)}")
    lineage = {"dataset": spec.evaluation.dataset_ref.name, "sourceURI": prefix}
    return Source(prefix, evaluation["spec"], lineage)


def _source_unavailable(ctx: ReconcileContext, message: str) -> Outcome:
    return Outcome(
        "Pending",
        (_ready("False", "SourceUnavailable", message),),
        requeue_after=_retry_after(ctx, "SourceUnavailable"),
    )


def _resolve_source(spec: ModelVersionSpec, ctx: ReconcileContext) -> Source | Outcome:
    if spec.source.training_run_ref:
        source = _from_training(spec, ctx, spec.source.training_run_ref.name)
    else:
        assert spec.source.artifact_uri is not None  # the schema's rule: exactly one
        source = _from_artifact(spec, ctx, spec.source.artifact_uri)
    if isinstance(source, Outcome) or not spec.compile.calibration:
        return source
    calibration = _ready_dataset(ctx, spec.compile.calibration.dataset_ref.name, "calibration")
    if isinstance(calibration, Outcome):
        return calibration
    return Source(source.model_uri, source.dataset_spec, source.lineage, calibration["spec"]["source"]["uri"])


# -- the stages -------------------------------------------------------------------------------------


def _pinned_spec(ctx: ReconcileContext, spec: ModelVersionSpec) -> ModelVersionSpec:
    """The spec compile started with, with today's promotion and scheduling fields."""
    pinned = (ctx.status.get("pinned") or {}).get("spec")
    if not pinned:
        return spec
    current = spec.wire()
    merged = dict(pinned)
    for name in ("stage", "scheduling", "serviceAccountName"):
        merged.pop(name, None)
        if name in current:
            merged[name] = current[name]
    if merged.get("registry") and spec.registry:
        registry = dict(merged["registry"])
        for name in ("aliases", "credentialsSecretRef", "deletionPolicy"):
            registry.pop(name, None)
            if name in current["registry"]:
                registry[name] = current["registry"][name]
        merged["registry"] = registry
    return ModelVersionSpec.model_validate(merged)


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
    )


def _start_job(ctx: ReconcileContext, inputs: StageInputs) -> None:
    created = ctx.require_clients().raw.apply(build_stage_job(inputs), ctx.config.field_manager)
    ctx.cache.upsert("Job", created)  # the next reconcile sees it before its watch event arrives


def _start_compile(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    source = _resolve_source(spec, ctx)
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
        "compileStartTime": now,
    }
    # The pin goes into status with the Job: the next reconcile builds every attempt from it.
    view = ReconcileContext(
        {**ctx.body, "status": {**ctx.status, **fields}}, ctx.clients, ctx.config, ctx.now, ctx.cache
    )
    _start_job(ctx, _stage_inputs(view, spec, "compile", 1))
    target = f"{spec.compile.target} ({spec.compile.precision})"
    return Outcome(
        "Compiling",
        (
            _ready(
                "False",
                "Compiling",
                f"attempt 1: Job {fields['jobName']} compiles {source.model_uri} for {target}",
            ),
            ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""),
        ),
        fields,
    )


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
        "nextAttemptTime": None,
    }
    view = ReconcileContext(
        {**ctx.body, "status": {**status, **fields}}, ctx.clients, ctx.config, ctx.now, ctx.cache
    )
    _start_job(ctx, _stage_inputs(view, spec, "evaluate", 1))
    where = f" on {engine['gpu']}" if engine.get("gpu") else ""
    return Outcome(
        "Evaluating",
        (
            _ready(
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
    gates = check_gates(spec.gates, metrics)
    fields: dict[str, Any] = {
        "metrics": metrics,
        "engine": engine,
        "gates": [g.wire() for g in gates],
        "evaluationSeconds": _seconds_between(started, finished),
        "nextAttemptTime": None,
    }
    failed = [g for g in gates if not g.passed]
    if failed:
        for gate in failed:
            MODELVERSION_GATE_FAILURES.labels(gate=gate.name).inc()
        named = "; ".join(f"{g.name}: {g.message}" for g in failed)
        message = f"{len(failed)} of {len(gates)} acceptance gates failed, nothing was registered: {named}"
        return Outcome(
            "Rejected",
            (_ready("False", "GateFailed", message), accepted),
            {**fields, "completionTime": finished},
        )
    passed = f"{len(gates)} acceptance gates passed" if gates else "no acceptance gates set"
    if spec.registry is None:
        return Outcome(
            "Ready",
            (_ready("True", "Accepted", f"{passed}; not registered (spec.registry is empty)"), accepted),
            {**fields, "completionTime": finished},
        )
    return Outcome(
        "Registering",
        (_ready("False", "Registering", f"{passed}; registering in {spec.registry.provider}"), accepted),
        fields,
        requeue_after=0.0,
    )


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
    phase = status["phase"]
    if retryable and attempt < MAX_ATTEMPTS:
        delay = backoff_seconds(attempt, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
        at = to_rfc3339(ctx.now() + timedelta(seconds=delay))
        return Outcome(
            phase,
            (
                _ready(
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
        (_ready("False", reason, f"{stage} attempt {attempt} failed ({why}): {message}"), accepted),
        {"failures": failures, "completionTime": finished, "nextAttemptTime": None},
    )


def _run_stage(
    spec: ModelVersionSpec, ctx: ReconcileContext, stage: Stage, accepted: ConditionUpdate
) -> Result:
    status = ctx.status
    now = to_rfc3339(ctx.now())
    attempt = int(status.get("attempt") or 1)
    name = str(status.get("jobName") or job_name(ctx.name, stage, attempt))
    phase = str(status["phase"])
    progress = "Compiling" if stage == "compile" else "Evaluating"
    job = _stage_job(ctx, name)
    if job is None:
        next_attempt = status.get("nextAttemptTime")
        if next_attempt and ctx.now() < from_rfc3339(next_attempt):
            return Unchanged(max(0.0, (from_rfc3339(next_attempt) - ctx.now()).total_seconds()))
        _start_job(ctx, _stage_inputs(ctx, spec, stage, attempt))
        return Outcome(
            phase,
            (_ready("False", progress, f"{stage} attempt {attempt}: Job {name} created"), accepted),
            {"jobName": name, "nextAttemptTime": None},
        )
    seen = observe(job, ctx.cache.owned("Pod", str(job["metadata"]["uid"])))
    if seen.state == "Succeeded":
        return (_compiled if stage == "compile" else _evaluated)(spec, ctx, seen, accepted, now)
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
        created = from_rfc3339(job["metadata"].get("creationTimestamp") or now)
        deadline = created + timedelta(seconds=ctx.config.start_deadline_seconds)
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
            phase,
            (
                _ready("False", reason, f"{stage} attempt {attempt}: the pod cannot start yet: {message}"),
                accepted,
            ),
            requeue_after=(deadline - ctx.now()).total_seconds(),
        )
    doing = "running" if seen.state == "Running" else (seen.unschedulable or "starting")
    return Outcome(
        phase, (_ready("False", progress, f"{stage} attempt {attempt} of {MAX_ATTEMPTS}: {doing}"), accepted)
    )


# -- the registry ----------------------------------------------------------------------------------


class _RegistryProblemError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _open_registry(spec: ModelVersionSpec, ctx: ReconcileContext) -> ModelRegistry:
    registry = spec.registry
    assert registry is not None
    try:
        require_allowed(
            registry.tracking_uri,
            ctx.config.registry_endpoint_allowlist,
            setting="MLOPS_REGISTRY_ENDPOINT_ALLOWLIST",
        )
    except EndpointNotAllowedError as error:
        raise _RegistryProblemError("EndpointNotAllowed", str(error)) from None
    credential = None
    if registry.credentials_secret_ref:
        ref = registry.credentials_secret_ref
        try:
            credential = read_secret_values(ctx, ref.name, [ref.key])[ref.key]
        except CredentialsUnavailableError as error:
            raise _RegistryProblemError("CredentialsUnavailable", str(error)) from None
    target = RegistryTarget(
        provider=registry.provider,
        model_name=registry.collection or spec.model_name,
        project=registry.project,
        entity=registry.entity,
        tracking_uri=registry.tracking_uri,
        credential=credential,
    )
    return ctx.require_clients().registry(target, ctx.config.registry_timeout_seconds)


def _registry_problem(ctx: ReconcileContext, error: Exception, doing: str) -> tuple[str, str]:
    if isinstance(error, _RegistryProblemError):
        return error.reason, f"{doing}: {error.message}"
    if isinstance(error, RegistryUnavailableError):
        return "RegistryUnavailable", f"{doing}: the registry is unavailable ({error}); retrying"
    return "RegistryRejected", f"{doing}: the registry refused the request ({error})"


REGISTRY_ERRORS = (_RegistryProblemError, RegistryUnavailableError, RegistryRejectedError)


def _ensure_finalizer(ctx: ReconcileContext) -> None:
    meta = ctx.body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER in finalizers:
        return
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": [*finalizers, FINALIZER]}}
    written = ctx.require_clients().raw.patch_object(PLURAL, ctx.namespace, ctx.name, patch)
    written.setdefault("kind", "ModelVersion")
    ctx.cache.upsert("ModelVersion", written)


def _registry_status(
    spec: ModelVersionSpec, ctx: ReconcileContext, version: RegisteredVersion, applied: Sequence[str]
) -> dict[str, Any]:
    assert spec.registry is not None
    return {
        "provider": spec.registry.provider,
        "modelName": spec.registry.collection or spec.model_name,
        "version": version.version,
        "url": version.url,
        "aliases": sorted(version.aliases),
        "appliedAliases": sorted(applied),
        "archived": version.archived,
        "promotedGeneration": ctx.generation,
    }


def _tags(ctx: ReconcileContext, spec: ModelVersionSpec) -> dict[str, str]:
    status = ctx.status
    lineage = status.get("lineage") or {}
    engine = status.get("engine") or {}
    tags = {
        "mlops.dev/namespace": ctx.namespace,
        "mlops.dev/modelversion": ctx.name,
        "mlops.dev/trainingrun": lineage.get("trainingRun"),
        "mlops.dev/dataset": lineage.get("dataset"),
        "mlops.dev/dataset-fingerprint": lineage.get("datasetFingerprint"),
        "mlops.dev/trainer-image": lineage.get("trainerImage"),
        "mlops.dev/hyperparameters-sha256": lineage.get("hyperparametersSha256"),
        "mlops.dev/source-uri": lineage.get("sourceURI"),
        "mlops.dev/engine-format": engine.get("format"),
        "mlops.dev/engine-precision": engine.get("precision"),
        "mlops.dev/engine-gpu": engine.get("gpu"),
        "mlops.dev/stage": spec.stage,
    }
    return {k: str(v) for k, v in tags.items() if v}


def _apply_aliases(
    spec: ModelVersionSpec, registry: ModelRegistry, version: str, applied_before: Sequence[str]
) -> tuple[RegisteredVersion, list[str]]:
    """Stage Archived archives the version; otherwise the spec's aliases and the stage's alias point
    at it, and aliases the operator put there before and the spec no longer names come off."""
    if spec.stage == "Archived":
        return registry.archive(version), []
    desired = _desired_aliases(spec)
    removed = sorted(set(applied_before) - set(desired))
    return registry.set_aliases(version, add=desired, remove=removed), desired


def _register(spec: ModelVersionSpec, ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    assert spec.registry is not None
    status = ctx.status
    engine = status.get("engine") or {}
    if FINALIZER not in (ctx.body["metadata"].get("finalizers") or []):
        # First the finalizer, in a reconcile of its own: the patch changes the resourceVersion the
        # status write of this reconcile would be conditioned on. Its watch event brings us back.
        _ensure_finalizer(ctx)
        return Unchanged(requeue_after=1.0)
    try:
        registry = _open_registry(spec, ctx)
        registered = registry.register(
            VersionRequest(
                uid=ctx.uid,
                source_uri=str(engine.get("uri") or ""),
                tags=_tags(ctx, spec),
                description=f"ModelVersion {ctx.namespace}/{ctx.name}",
                metrics=dict(status.get("metrics") or {}),
            )
        )
        version, applied = _apply_aliases(spec, registry, registered.version, [])
    except REGISTRY_ERRORS as error:
        reason, message = _registry_problem(ctx, error, f"registering {spec.model_name}")
        return Outcome(
            "Registering",
            (_ready("False", reason, message), accepted),
            requeue_after=_retry_after(ctx, reason),
        )
    MODELVERSION_REGISTRATIONS.labels(provider=spec.registry.provider).inc()
    aliases = ", ".join(version.aliases) or "none"
    return Outcome(
        "Ready",
        (
            _ready(
                "True",
                "Registered",
                f"registered in {spec.registry.provider} as {spec.registry.collection or spec.model_name} "
                f"version {version.version} (aliases: {aliases})",
            ),
            accepted,
        ),
        {"registry": _registry_status(spec, ctx, version, applied), "completionTime": to_rfc3339(ctx.now())},
    )


def _aliases_taken_by_others(ctx: ReconcileContext, mine: Mapping[str, Any]) -> set[str]:
    """Aliases this version's status claims that another ModelVersion of the same registered model
    says it now has: the registry moved them (an alias points at one version at a time)."""
    model = _registered_model(ctx.body)
    claimed = set(mine.get("aliases") or [])
    taken: set[str] = set()
    for other in ctx.cache.in_namespace("ModelVersion", ctx.namespace):
        theirs = (other.get("status") or {}).get("registry") or {}
        if other["metadata"]["name"] == ctx.name or _registered_model(other) != model:
            continue
        if theirs.get("version") != mine.get("version"):
            taken |= claimed & set(theirs.get("aliases") or [])
    return taken


def _ready_object(spec: ModelVersionSpec, ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    status = ctx.status
    current: Mapping[str, Any] = status.get("registry") or {}
    if spec.registry is None or not current.get("version"):
        return _settled(ctx, accepted)
    promote = current.get("promotedGeneration") != ctx.generation
    taken = set() if promote else _aliases_taken_by_others(ctx, current)
    if not promote and not taken:
        return _settled(ctx, accepted)
    version = str(current["version"])
    try:
        registry = _open_registry(spec, ctx)
        if promote:
            found, applied = _apply_aliases(spec, registry, version, current.get("appliedAliases") or [])
        else:
            refreshed = registry.get(version)
            if refreshed is None:
                raise RegistryRejectedError(f"version {version} no longer exists in the registry")
            found, applied = refreshed, list(current.get("appliedAliases") or [])
    except REGISTRY_ERRORS as error:
        reason, message = _registry_problem(ctx, error, f"moving the aliases of version {version}")
        ready = find_condition(status.get("conditions", []), READY) or {}
        return Outcome(
            "Ready",
            (
                _ready("True", str(ready.get("reason") or "Registered"), str(ready.get("message") or "")),
                ConditionUpdate(PROMOTED, "False", reason, message[:MAX_MESSAGE]),
                accepted,
            ),
            requeue_after=_retry_after(ctx, reason),
        )
    fields = {"registry": _registry_status(spec, ctx, found, applied)}
    if not promote:
        fields["registry"]["promotedGeneration"] = current.get("promotedGeneration")
    aliases = ", ".join(found.aliases) or "none"
    moved = sorted(set(current.get("aliases") or []) - set(found.aliases))
    events: tuple[Event, ...] = ()
    if moved and not promote:
        events = (
            Event("AliasMoved", f"aliases {', '.join(moved)} moved off version {version} to another version"),
        )
    summary = f"version {version}" + (" archived" if found.archived else f" (aliases: {aliases})")
    return Outcome(
        "Ready",
        (
            _ready("True", "Registered", f"registered as {fields['registry']['modelName']} {summary}"),
            ConditionUpdate(PROMOTED, "True", "Archived" if found.archived else "AliasesApplied", summary),
            accepted,
        ),
        fields,
        events=events,
    )


def _settled(ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    """Ready, Rejected or Failed: the status stands; only SpecAccepted may change."""
    status = ctx.status
    ready = find_condition(status.get("conditions", []), READY) or {}
    before = find_condition(status.get("conditions", []), SPEC_ACCEPTED) or {}
    if (
        status.get("observedGeneration") == ctx.generation
        and before.get("reason") == accepted.reason
        and ready.get("reason") not in ENGINE_REASONS
    ):
        return Unchanged()
    if ready.get("reason") in ENGINE_REASONS or not ready:
        # An engine error replaced the Ready condition: restate what the phase and status say.
        phase = status["phase"]
        if phase != "Ready":
            restated = _ready("False", str(phase), "")
        elif (status.get("registry") or {}).get("version"):
            restated = _ready("True", "Registered", "")
        else:
            restated = _ready("True", "Accepted", "gates passed; not registered (spec.registry is empty)")
    else:
        restated = ConditionUpdate(READY, ready["status"], ready["reason"], ready.get("message", ""))
    return Outcome(str(status["phase"]), (restated, accepted))


# -- deletion --------------------------------------------------------------------------------------


def _remove_finalizer(ctx: ReconcileContext) -> None:
    meta = ctx.body["metadata"]
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": finalizers or None}}
    ctx.require_clients().raw.patch_object(PLURAL, ctx.namespace, ctx.name, patch)


def _deleting(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    meta = ctx.body["metadata"]
    if FINALIZER not in (meta.get("finalizers") or []):
        return Unchanged()
    current: Mapping[str, Any] = ctx.status.get("registry") or {}
    skip = (meta.get("annotations") or {}).get(SKIP_CLEANUP_ANNOTATION) == "true"
    archive = (
        spec.registry is not None and spec.registry.deletion_policy == "Archive" and current.get("version")
    )
    if archive and not skip:
        version = str(current["version"])
        try:
            _open_registry(spec, ctx).archive(version)
        except REGISTRY_ERRORS as error:
            reason, message = _registry_problem(ctx, error, f"deletion waits to archive version {version}")
            message += (
                f". To delete without archiving: kubectl annotate modelversion {ctx.name} -n {ctx.namespace} "
                f"{SKIP_CLEANUP_ANNOTATION}=true"
            )
            return Outcome(
                str(ctx.status.get("phase") or "Pending"),
                (_ready("False", reason, message),),
                requeue_after=_retry_after(ctx, reason),
            )
    _remove_finalizer(ctx)
    return Unchanged()


# -- the reconcile -----------------------------------------------------------------------------------


def reconcile(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    if ctx.body["metadata"].get("deletionTimestamp"):
        return _deleting(_pinned_spec(ctx, spec), ctx)
    status = ctx.status
    phase = status.get("phase")
    if not status.get("specHash"):
        if phase == "Failed" and status.get("observedGeneration") == ctx.generation:
            # TrainingFailed or NoModelArtifact: settled until the spec names another source.
            return _settled(ctx, ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""))
        return _start_compile(spec, ctx)
    accepted = _accepted(spec, status)
    spec = _pinned_spec(ctx, spec)
    if phase == "Ready":
        return _ready_object(spec, ctx, accepted)
    if phase in SETTLED:
        return _settled(ctx, accepted)
    if phase == "Registering":
        return _register(spec, ctx, accepted)
    if phase in STAGE_PHASES:
        return _run_stage(spec, ctx, STAGE_PHASES[phase], accepted)
    raise RuntimeError(f"unexpected phase {phase!r} after compile started")
