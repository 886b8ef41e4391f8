"""InferenceDeployment reconcile: serve a Ready ModelVersion on Triton; a new version is a canary.

Each call:
1. reads the ModelVersion the spec names. Not there, not Ready, or built for another GPU: nothing
   changes in the workload. With a version already serving, Ready stays True and `CanaryWaiting`
   says why the new one waits; with none, the InferenceDeployment is Pending (or Failed for a GPU
   mismatch, which no waiting fixes).
2. publishes the version's Triton model repository (builders/triton.py) to its content-addressed
   prefix next to the engine, with the tenant's S3 credentials (the ModelVersion's pinned Dataset),
   unless that prefix already holds it;
3. applies, server-side with one field manager, the Services and the workload: an Argo Rollouts
   Rollout with an AnalysisTemplate where Argo Rollouts is installed and the strategy is canary, a
   Deployment otherwise (builders/serving.py). A new ModelVersion changes the pod template: the
   Rollout starts a canary through the spec's steps;
4. reads the workload's status into the InferenceDeployment's: stable and canary versions, weight,
   step, replicas, the endpoint. An aborted canary (failed analysis) is `Degraded/AnalysisFailed`
   naming the failed metric and its value; pointing the spec at another version afterwards starts a
   new canary with no `kubectl argo rollouts retry`: a new pod template clears the Rollout's abort
   (Argo Rollouts v1.10.1, tests/integration/test_rollouts_and_prometheus.py), so the operator never
   patches a Rollout's status.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from ..builders.serving import (
    MODELVERSION_ANNOTATION,
    UID_LABEL,
    ServingInputs,
    Workload,
    analysis_template_name,
    autoscaler_name,
    build_analysis_template,
    build_autoscaler,
    build_deployment,
    build_rollout,
    build_service,
    canary_service_name,
    endpoint,
    replicas_handover,
    weight_of_step,
)
from ..builders.triton import TritonBuildError, build_model_repository
from ..engine.cache import Cache, ObjectKey
from ..integrations.endpoints import EndpointNotAllowedError
from ..integrations.s3 import S3UnavailableError, split_object_uri
from ..integrations.triton_repository import publish_repository
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..k8s.rawapi import resource_path
from ..metrics import ROLLOUTS_ABORTED, ROLLOUTS_PROMOTED, ROLLOUTS_STARTED
from ..observation.serving import serving_problem
from .base import MAX_MESSAGE, READY, Outcome, Result
from .context import ReconcileContext
from .reads import read_object
from .secrets import CredentialsUnavailableError
from .stores import open_store

CANARY_WAITING = "CanaryWaiting"
REPLICAS_HANDOVER = "replicas-handover"  # suffix of the field manager that holds replicas for autoscaling
METADATA_MAX_BYTES = 1024 * 1024


def _ready(status: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(READY, status, reason, message[:MAX_MESSAGE])  # type: ignore[arg-type]


def waiting_on_modelversion(cache: Cache, mv: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """InferenceDeployments that serve, or wait for, this ModelVersion."""
    meta = mv["metadata"]
    for idep in cache.in_namespace("InferenceDeployment", str(meta["namespace"])):
        if ((idep.get("spec") or {}).get("modelVersionRef") or {}).get("name") == meta["name"]:
            yield ("InferenceDeployment", str(meta["namespace"]), str(idep["metadata"]["name"]))


# -- the version to serve ----------------------------------------------------------------------------


def _not_servable(
    spec: InferenceDeploymentSpec, mv: Mapping[str, Any] | None, name: str
) -> tuple[str, str] | None:
    """(reason, message) when this ModelVersion cannot be rolled out (yet), else None."""
    if mv is None:
        return "ModelVersionNotFound", f"ModelVersion {name} does not exist"
    status = mv.get("status") or {}
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if status.get("phase") != "Ready" or ready.get("status") != "True":
        why = f"{ready.get('reason')}: {ready.get('message', '')}" if ready else "not reconciled yet"
        return "ModelVersionNotReady", f"ModelVersion {name} is {status.get('phase') or 'Pending'} ({why})"
    engine = status.get("engine") or {}
    if not engine.get("uri") or not engine.get("metadataURI"):
        return "ModelVersionNotReady", f"ModelVersion {name} has no compiled engine in its status"
    if engine.get("format") == "tensorrt":
        built_on = engine.get("gpuProduct")
        if spec.resources.gpus == 0:
            return "EngineGPUMismatch", (
                f"ModelVersion {name} is a TensorRT engine built on {built_on or engine.get('gpu')}: "
                "it runs only on that GPU, and resources.gpus is 0"
            )
        wanted = spec.resources.gpu_product
        if wanted and built_on and wanted != built_on:
            return "EngineGPUMismatch", (
                f"ModelVersion {name} is a TensorRT engine built on {built_on}, and resources.gpuProduct "
                f"asks for {wanted}: an engine runs only on the GPU model it was built on; set gpuProduct to "
                f"{built_on} or compile a ModelVersion on {wanted}"
            )
    return None


def _published(
    spec: InferenceDeploymentSpec, ctx: ReconcileContext, mv: Mapping[str, Any]
) -> dict[str, str] | tuple[str, str]:
    """The published repository of this ModelVersion ({modelVersion, engineURI, uri}): from status
    when it was published for this very engine, else built and published now; or (reason, message)."""
    engine = mv["status"]["engine"]
    known = ctx.status.get("repository") or {}
    settings = _hash_of(
        {
            "triton": spec.triton.wire(),
            "gpus": spec.resources.gpus,
            "cpuBackend": ctx.config.triton_cpu_backend,
        }
    )
    if (
        known.get("modelVersion") == mv["metadata"]["name"]
        and known.get("engineURI") == engine["uri"]
        and known.get("settingsHash") == settings
    ):
        return dict(known)
    dataset = DatasetSpec.model_validate((mv["status"].get("pinned") or {})["datasetSpec"])
    try:
        store = open_store(ctx, dataset.source)
        bucket, key = split_object_uri(str(engine["metadataURI"]))
        metadata = json.loads(store.get_bytes(bucket, key, max_bytes=METADATA_MAX_BYTES))
        repository = build_model_repository(
            str(mv["spec"]["modelName"]),
            metadata,
            str(engine["uri"]),
            spec.triton,
            spec.resources.gpus,
            cpu_backend=ctx.config.triton_cpu_backend,
        )
        prefix = publish_repository(store, str(engine["uri"]).rsplit("/", 1)[0], repository)
    except TritonBuildError as error:
        return "InvalidModel", f"cannot serve ModelVersion {mv['metadata']['name']}: {error}"
    except (EndpointNotAllowedError, CredentialsUnavailableError, S3UnavailableError, ValueError) as error:
        return "RepositoryUnavailable", f"cannot publish the Triton model repository: {error}"
    return {
        "modelVersion": str(mv["metadata"]["name"]),
        "engineURI": str(engine["uri"]),
        "uri": prefix,
        "settingsHash": settings,
    }


def _serving_inputs(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    mv: Mapping[str, Any],
    repository: Mapping[str, str],
    *,
    workload_exists: bool,
) -> ServingInputs:
    status = mv["status"]
    engine = status["engine"]
    pinned = status.get("pinned") or {}
    return ServingInputs(
        name=ctx.name,
        namespace=ctx.namespace,
        uid=ctx.uid,
        spec=spec,
        model_version=str(mv["metadata"]["name"]),
        model_name=str(mv["spec"]["modelName"]),
        repository_uri=repository["uri"],
        dataset=DatasetSpec.model_validate(pinned["datasetSpec"]),
        fetch_image=str(pinned.get("image") or ctx.config.trainer_image),
        gpu_product=engine.get("gpuProduct") if engine.get("format") == "tensorrt" else None,
        prometheus_address=ctx.config.prometheus_address,
        extra_tolerations=ctx.config.workload_tolerations,
        workload_exists=workload_exists,
    )


# -- the workload --------------------------------------------------------------------------------------


def _workload_kind(spec: InferenceDeploymentSpec, ctx: ReconcileContext) -> Workload:
    return "Rollout" if ctx.require_clients().rollouts and spec.rollout.strategy == "canary" else "Deployment"


def _owned(ctx: ReconcileContext, kind: str) -> Mapping[str, Any] | None:
    owned = [o for o in ctx.cache.owned(kind, ctx.uid) if not o["metadata"].get("deletionTimestamp")]
    return owned[0] if owned else None


def _children(inputs: ServingInputs, kind: Workload) -> list[dict[str, Any]]:
    if kind == "Rollout":
        children = [
            build_service(inputs),
            build_service(inputs, canary=True),
            build_analysis_template(inputs),
            build_rollout(inputs),
        ]
    else:
        children = [build_service(inputs), build_deployment(inputs)]
    if inputs.spec.autoscaling is not None:
        children.append(build_autoscaler(inputs, kind))  # after the workload it scales
    return children


def _hash_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _apply(
    ctx: ReconcileContext,
    inputs: ServingInputs,
    children: list[dict[str, Any]],
    kind: Workload,
    workload: Mapping[str, Any] | None,
) -> Mapping[str, Any]:
    """Server-side apply, one field manager; the workload as the apiserver returned it."""
    raw, manager = ctx.require_clients().raw, ctx.config.field_manager
    autoscaler = ctx.status.get("autoscaler")
    if inputs.spec.autoscaling is None and autoscaler:
        # First, so it does not scale the workload that spec.replicas sizes again.
        raw.delete("HorizontalPodAutoscaler", ctx.namespace, str(autoscaler))
    if inputs.spec.autoscaling is not None and workload is not None:
        # The workload is applied without replicas: hand the field to a manager of its own first,
        # or server-side apply would reset it. A 409 means the autoscaler has set replicas since
        # (it owns the field now): already handed over.
        current = (workload.get("spec") or {}).get("replicas")
        try:
            raw.apply(
                replicas_handover(inputs, kind, int(current or inputs.spec.autoscaling.min_replicas)),
                f"{manager}-{REPLICAS_HANDOVER}",
                force=False,
            )
        except ApiException as error:
            if error.status != 409:
                raise
    written: dict[str, Any] = {}
    for child in children:
        result = raw.apply(child, manager)
        if child["kind"] == kind:
            written = result
    written.setdefault("kind", kind)
    ctx.cache.upsert(kind, written)
    return written


def _retire_other_workload(
    ctx: ReconcileContext, inputs: ServingInputs, kind: Workload, serving: bool
) -> tuple[Event, ...]:
    """Delete the workload of the other kind once this one serves: a Deployment made before Argo
    Rollouts was installed, now replaced by a Rollout (the strategy itself is immutable)."""
    other: Workload = "Deployment" if kind == "Rollout" else "Rollout"
    stale = _owned(ctx, other)
    if stale is None or not serving:
        return ()
    raw = ctx.require_clients().raw
    name = str(stale["metadata"]["name"])
    raw.delete(other, ctx.namespace, name)
    if other == "Rollout":
        raw.delete("Service", ctx.namespace, canary_service_name(inputs))
        raw.delete("AnalysisTemplate", ctx.namespace, analysis_template_name(inputs))
    return (Event("WorkloadReplaced", f"the {kind} serves: deleted the {other} {name} it replaces"),)


def _template_version(workload: Mapping[str, Any]) -> str | None:
    annotations = ((workload.get("spec") or {}).get("template") or {}).get("metadata", {}).get(
        "annotations"
    ) or {}
    version = annotations.get(MODELVERSION_ANNOTATION)
    return str(version) if version else None


UNREADABLE_ANALYSIS = "its AnalysisRun could not be read"


def _failed_analysis(ctx: ReconcileContext, rollout: Mapping[str, Any]) -> str:
    """The failed metric of the Rollout's latest failed AnalysisRun, with its last value."""
    # Only the aborted revision's runs (Argo Rollouts labels them with the pod template hash).
    pod_hash = (rollout.get("status") or {}).get("currentPodHash")
    query = [("labelSelector", f"rollouts-pod-template-hash={pod_hash}")] if pod_hash else []
    try:
        runs = (
            ctx.require_clients()
            .raw.request("GET", resource_path("AnalysisRun", ctx.namespace), query=query)
            .get("items", [])
        )
    except ApiException:
        return f"the analysis failed ({UNREADABLE_ANALYSIS})"
    uid = rollout["metadata"].get("uid")
    mine = [
        r
        for r in runs
        if any(o.get("uid") == uid for o in r["metadata"].get("ownerReferences", []))
        and (r.get("status") or {}).get("phase") in ("Failed", "Error")
    ]
    if not mine:
        return str((rollout.get("status") or {}).get("message") or "the canary was aborted")
    latest = max(mine, key=lambda r: str(r["metadata"].get("creationTimestamp")))
    parts = []
    for result in (latest.get("status") or {}).get("metricResults", []):
        if result.get("phase") not in ("Failed", "Error"):
            continue
        measurements = result.get("measurements") or []
        value = measurements[-1].get("value") if measurements else None
        parts.append(
            f"{result.get('name')} = {value} ({result.get('phase')}, {result.get('failed', 0)} failed)"
        )
    return "; ".join(parts) or str((latest.get("status") or {}).get("message") or "the analysis failed")


def _pods_problem(ctx: ReconcileContext, kind: str, workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """What keeps the workload's current pods from running (observation/serving.py). Read only while
    the workload has not settled: a serving InferenceDeployment costs no walk over the pods."""
    pods = (
        p
        for p in ctx.cache.in_namespace("Pod", ctx.namespace)
        if (p["metadata"].get("labels") or {}).get(UID_LABEL) == ctx.uid
    )
    current = (workload.get("status") or {}).get("currentPodHash") if kind == "Rollout" else None
    return serving_problem(workload, pods, current)


def _settled(kind: str, workload: Mapping[str, Any]) -> bool:
    """Whether every pod of the workload runs its current template (a finished rollout)."""
    observed = workload.get("status") or {}
    spec = workload.get("spec") or {}
    if str(observed.get("observedGeneration")) != str(workload["metadata"].get("generation")):
        return False
    if kind == "Rollout":
        return (
            bool(observed.get("stableRS"))
            and observed.get("stableRS") == observed.get("currentPodHash")
            and (observed.get("phase") == "Healthy")
        )
    replicas = int(spec.get("replicas") or 0)
    return (
        int(observed.get("updatedReplicas") or 0) >= replicas
        and int(observed.get("availableReplicas") or 0) >= replicas
    )


def _observe(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    kind: str,
    workload: Mapping[str, Any],
    *,
    inputs: ServingInputs | None,
    waiting: tuple[str, str] | None,
) -> Outcome:
    """The InferenceDeployment's status from its workload's."""
    status = ctx.status
    observed = workload.get("status") or {}
    serving = _template_version(workload) or status.get("modelVersion")
    stable = status.get("stableVersion")
    replicas, ready = int(observed.get("replicas") or 0), int(observed.get("readyReplicas") or 0)
    step = observed.get("currentStepIndex") if kind == "Rollout" else None
    fields: dict[str, Any] = {
        "workloadKind": kind,
        "modelVersion": serving,
        "replicas": replicas,
        "readyReplicas": ready,
        "currentStep": step,
        "endpoint": endpoint(inputs) if inputs else status.get("endpoint"),
    }
    waiting_condition = (
        ConditionUpdate(CANARY_WAITING, "True", waiting[0], waiting[1][:MAX_MESSAGE])
        if waiting
        else ConditionUpdate(CANARY_WAITING, "False", "NothingWaiting", "")
    )
    events: tuple[Event, ...] = ()
    if kind == "Rollout" and observed.get("abort"):
        if status.get("phase") != "Degraded":
            ROLLOUTS_ABORTED.labels(namespace=ctx.namespace).inc()
        fields |= {"canaryVersion": serving, "canaryWeight": 0}
        said = find_condition(status.get("conditions", []), READY) or {}
        if (
            status.get("phase") == "Degraded"
            and status.get("canaryVersion") == serving
            and said.get("reason") == "AnalysisFailed"
            and UNREADABLE_ANALYSIS not in str(said.get("message"))
        ):
            # Already said why: an aborted canary's AnalysisRuns do not change, so read them once.
            message = str(said.get("message"))
        else:
            why = _failed_analysis(ctx, workload)
            message = (
                f"the canary of {serving} was aborted, {stable or 'the stable version'} keeps 100%: {why}"
            )
        return Outcome("Degraded", (_ready("False", "AnalysisFailed", message), waiting_condition), fields)
    if _settled(kind, workload):
        if stable and stable != serving:
            ROLLOUTS_PROMOTED.labels(namespace=ctx.namespace).inc()
            events = (Event("Promoted", f"{serving} replaced {stable}: it serves all traffic"),)
        fields |= {"stableVersion": serving, "canaryVersion": None, "canaryWeight": None}
        message = f"{serving} serves on {ready} ready replica(s) at {fields['endpoint']}"
        return Outcome(
            "Available", (_ready("True", "Available", message), waiting_condition), fields, events=events
        )
    problem = _pods_problem(ctx, kind, workload)
    if not stable:
        fields |= {"canaryVersion": None, "canaryWeight": None}
        if problem:
            message = f"{serving} does not start ({ready}/{replicas} replicas ready): {problem[1]}"
            return Outcome("Progressing", (_ready("False", problem[0], message), waiting_condition), fields)
        message = f"{serving} is starting: {ready}/{replicas} replicas ready"
        return Outcome("Progressing", (_ready("False", "Starting", message), waiting_condition), fields)
    if problem and not waiting:
        # The old version serves; what keeps the new pods from running is the canary's wait.
        said = find_condition(status.get("conditions", []), CANARY_WAITING) or {}
        message = f"the pods of {serving} do not start: {problem[1]}"[:MAX_MESSAGE]
        waiting_condition = ConditionUpdate(CANARY_WAITING, "True", problem[0], message)
        if said.get("status") != "True" or said.get("reason") != problem[0]:
            events = (Event(problem[0], message, type="Warning"),)
    if stable == serving:
        fields |= {"canaryVersion": None, "canaryWeight": None}
        message = f"{serving} serves; {ready}/{replicas} replicas ready"
        return Outcome(
            "Progressing", (_ready("True", "Available", message), waiting_condition), fields, events=events
        )
    weight = weight_of_step(inputs, step) if inputs is not None else int(status.get("canaryWeight") or 0)
    fields |= {"canaryVersion": serving, "canaryWeight": weight}
    message = f"canary {serving} at {weight}% (step {step}), {stable} stable"
    if observed.get("phase") == "Paused":
        message += f"; paused: {observed.get('message') or 'waiting to be promoted'}"
        return Outcome(
            "Paused", (_ready("True", "Paused", message), waiting_condition), fields, events=events
        )
    return Outcome(
        "Progressing",
        (_ready("True", "CanaryProgressing", message), waiting_condition),
        fields,
        events=events,
    )


# -- the reconcile -------------------------------------------------------------------------------------


def reconcile(spec: InferenceDeploymentSpec, ctx: ReconcileContext) -> Result:
    status = ctx.status
    name = spec.model_version_ref.name
    mv = read_object(ctx, "ModelVersion", "modelversions", name)
    kind = _workload_kind(spec, ctx)
    workload = _owned(ctx, kind)
    problem = _not_servable(spec, mv, name)
    repository: dict[str, str] | None = None
    if problem is None:
        assert mv is not None
        published = _published(spec, ctx, mv)
        if isinstance(published, tuple):
            problem = published
        else:
            repository = published
    if problem is not None:
        if workload is None:
            phase = "Failed" if problem[0] in ("EngineGPUMismatch", "InvalidModel") else "Pending"
            return Outcome(phase, (_ready("False", problem[0], problem[1]),))
        # Whatever serves goes on serving; the new version waits (CanaryWaiting says why).
        return _observe(spec, ctx, kind, workload, inputs=None, waiting=problem)
    assert mv is not None
    assert repository is not None
    inputs = _serving_inputs(spec, ctx, mv, repository, workload_exists=workload is not None)
    children = _children(inputs, kind)
    applied = _hash_of(children)
    before = _template_version(workload) if workload else None
    events: tuple[Event, ...] = ()
    if workload is None or status.get("appliedHash") != applied:
        workload = _apply(ctx, inputs, children, kind, workload)
        if before is not None and before != inputs.model_version:
            ROLLOUTS_STARTED.labels(namespace=ctx.namespace).inc()
            events = (Event("RolloutStarted", f"rolling out {inputs.model_version}, replacing {before}"),)
    outcome = _observe(spec, ctx, kind, workload, inputs=inputs, waiting=None)
    events += _retire_other_workload(ctx, inputs, kind, outcome.phase == "Available")
    fields = {
        **outcome.fields,
        "repository": repository,
        "appliedHash": applied,
        "autoscaler": autoscaler_name(inputs) if spec.autoscaling is not None else None,
    }
    step, canary = fields.get("currentStep"), fields.get("canaryVersion")
    if canary and step is not None and step != status.get("currentStep") and outcome.phase != "Degraded":
        # Every canary step gets an event (the Ready reason stays CanaryProgressing between steps).
        reached = f"canary {canary} reached step {step} ({fields.get('canaryWeight')}% of the pods)"
        events = (*events, Event("CanaryStep", reached))
    return Outcome(outcome.phase, outcome.conditions, fields, events=(*outcome.events, *events))
