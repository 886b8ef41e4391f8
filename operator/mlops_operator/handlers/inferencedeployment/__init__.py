"""InferenceDeployment reconcile: serve a Ready ModelVersion on Triton; a new version is a canary.
One module per concern (Argo Rollouts' `rollout/` package is the model): `version` (which
ModelVersion, and whether it can be served), `repository` (publishing its Triton repository),
`children` (the desired children, applied and repaired), `canary` (why a canary was aborted),
`status` (the workload's status read into the InferenceDeployment's), `registry_aliases` (the
registry's aliases moved to what serves).

Each call, level-based:
1. reads the ModelVersion the spec names (spec.modelVersionRef), or the one the ModelPipeline it
   follows promoted last (spec.modelVersionFrom: its status.latestPromoted; no pipeline, or nothing
   promoted yet, waits like a missing version, and status.resolvedFrom says what it resolved to).
   Not there, not Ready, being deleted, or built for another GPU: the spec is not applied
   (observedGeneration stays, `CanaryWaiting` says why). A canary whose own ModelVersion went away
   is aborted (the stable keeps serving, `CanaryAborted`); the stable version's ModelVersion being
   deleted goes on serving, and Ready's reason says so.
2. publishes the version's Triton model repository (repository.py);
3. compares the desired children with what the watches hold and applies, server-side with one field
   manager, every one that is missing or drifted (all of them when the desired set changed): an
   Argo Rollouts Rollout with its Services and AnalysisTemplate where Argo Rollouts is served and the
   strategy is canary, a Deployment otherwise (also while Argo Rollouts is not installed: a fallback
   that status and an event name; the other kind is retired once the new one serves);
4. reads the workload's status into the InferenceDeployment's (status.py);
5. moves spec.registryAliases to the registry versions of what serves (registry_aliases.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from ...api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from ...builders.serving import (
    ANALYSIS_DISABLED,
    ServingInputs,
    Workload,
    analysis_address,
    analysis_disabled,
    autoscaler_name,
)
from ...builders.serving import (
    children as build_children,
)
from ...integrations.endpoints import EndpointNotAllowedError
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ...metrics import ROLLOUTS_ABORTED, ROLLOUTS_STARTED
from ...timeutil import to_rfc3339
from ..base import READY, Outcome, Result
from ..context import ReconcileContext
from ..reads import read_object
from . import registry_aliases
from .canary import UNREADABLE_ANALYSIS
from .children import (
    owned_one,
    recreate_missing,
    retire_other_workload,
    set_abort,
    sync_children,
    workload_kind,
)
from .repository import hash_of, published
from .status import CANARY_ABORTED, CANARY_WAITING, Situation, observe, ready
from .version import (
    DELETING,
    NOT_FOUND,
    NOT_READY,
    Resolution,
    following_pipeline,
    not_servable,
    resolve,
    template_version,
    waiting_on_modelversion,
)

__all__ = [
    "CANARY_WAITING",
    "UNREADABLE_ANALYSIS",
    "following_pipeline",
    "hash_of",
    "observe",
    "published",
    "reconcile",
    "waiting_on_modelversion",
]

WITHDRAWN_REASONS = frozenset({NOT_FOUND, DELETING, NOT_READY})
CANARY_WITHDRAWN = "CanaryWithdrawn"  # the Warning event of the operator's abort (Ready says CanaryAborted)
ROLLOUTS_GONE = (
    "Argo Rollouts is not installed (its CRDs are not served): a Deployment serves, and a new version "
    "replaces the old one without canary steps or analysis until it is"
)


def _serving_inputs(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    mv: Mapping[str, Any],
    repository: Mapping[str, Any],
    *,
    prometheus: str | None,
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
        prometheus_address=prometheus,
        extra_tolerations=ctx.config.workload_tolerations,
        workload_exists=workload_exists,
    )


def _other(kind: Workload) -> Workload:
    return "Deployment" if kind == "Rollout" else "Rollout"


def _withdrawn(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    workload: Mapping[str, Any],
    name: str | None,
    problem: tuple[str, str] | None,
) -> tuple[str, str] | None:
    """Why the canary the Rollout runs can no longer be promoted: its ModelVersion is gone, being
    deleted or not Ready (the spec's, or an earlier one still in flight). None when it may go on."""
    canary = template_version(workload)
    if canary is None or canary == ctx.status.get("stableVersion"):
        return None
    if canary != name:
        problem = not_servable(spec, read_object(ctx, "ModelVersion", "modelversions", canary), canary)
    # Only the version itself going away withdraws it; an S3 blip or a refused analysis address
    # (the spec's, not the version's) leaves the canary running.
    return problem if problem is not None and problem[0] in WITHDRAWN_REASONS else None


def _waiting(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    kind: Workload,
    workload: Mapping[str, Any] | None,
    *,
    name: str | None,
    problem: tuple[str, str],
    fallback: str | None,
    note: tuple[str, str] | None,
) -> Outcome:
    """The spec's version cannot be rolled out: whatever serves goes on serving."""
    status = ctx.status
    other = owned_one(ctx, _other(kind))
    if workload is None and other is not None:
        kind, workload, other = _other(kind), other, None  # the old kind serves until the new can
    if workload is None:
        phase = "Failed" if problem[0] in ("EngineGPUMismatch", "InvalidModel") else "Pending"
        return Outcome(phase, (ready("False", problem[0], problem[1]),))
    events = _repair_while_waiting(spec, ctx, kind, workload)
    withdrawn = _withdrawn(spec, ctx, workload, name, problem) if kind == "Rollout" else None
    serving = template_version(workload)
    if withdrawn is not None and not (workload.get("status") or {}).get("abort"):
        workload = set_abort(ctx, workload, True)
        ROLLOUTS_ABORTED.labels(namespace=ctx.namespace).inc()
        message = f"aborted the canary of {serving}: {withdrawn[1]}; {status.get('stableVersion')} keeps 100%"
        events = (*events, Event(CANARY_WITHDRAWN, message, "Warning"))
    # The spec names the stable version, whose ModelVersion went away: the note says it (in Ready).
    waiting = None if note is not None and name == status.get("stableVersion") else problem
    situation = Situation(waiting=waiting, withdrawn=withdrawn, note=note, fallback=fallback, other=other)
    outcome = observe(spec, ctx, kind, workload, situation)
    # The spec was not applied: observedGeneration stays where the last applied spec left it, and
    # CanaryWaiting (or Ready) says why.
    fields = {**outcome.fields, "observedGeneration": status.get("observedGeneration")}
    return Outcome(outcome.phase, outcome.conditions, fields, events=(*outcome.events, *events))


def _repair_while_waiting(
    spec: InferenceDeploymentSpec, ctx: ReconcileContext, kind: Workload, workload: Mapping[str, Any]
) -> tuple[Event, ...]:
    """While the spec's version waits, the children of the version the workload runs that are
    missing (a Service deleted by hand) are created again from its ModelVersion and the repository
    the status records for it; none when those are gone too."""
    serving = template_version(workload)
    known = ctx.status.get("repository") or {}
    if not serving or known.get("modelVersion") != serving or kind != ctx.status.get("workloadKind"):
        return ()
    mv = read_object(ctx, "ModelVersion", "modelversions", serving)
    status = (mv or {}).get("status") or {}
    if mv is None or not status.get("engine") or not (status.get("pinned") or {}).get("datasetSpec"):
        return ()
    try:
        prometheus = analysis_address(spec, ctx.config)
    except EndpointNotAllowedError:
        return ()
    inputs = _serving_inputs(spec, ctx, mv, known, prometheus=prometheus, workload_exists=True)
    return recreate_missing(ctx, inputs, build_children(inputs, kind), kind)


def _sync(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    kind: Workload,
    mv: Mapping[str, Any],
    repository: Mapping[str, Any],
    *,
    prometheus: str | None,
) -> tuple[ServingInputs, str, Mapping[str, Any], tuple[Event, ...]]:
    workload = owned_one(ctx, kind)
    inputs = _serving_inputs(
        spec, ctx, mv, repository, prometheus=prometheus, workload_exists=workload is not None
    )
    desired = build_children(inputs, kind)
    before = template_version(workload)
    written, events = sync_children(ctx, inputs, desired, kind, workload)
    assert written is not None  # the workload was applied if it was missing
    if before is not None and before != inputs.model_version:
        ROLLOUTS_STARTED.labels(namespace=ctx.namespace).inc()
        events = (*events, Event("RolloutStarted", f"rolling out {inputs.model_version}, replacing {before}"))
    return inputs, hash_of(desired), written, events


def _analysis_condition(
    ctx: ReconcileContext, inputs: ServingInputs, kind: Workload
) -> tuple[ConditionUpdate, tuple[Event, ...]]:
    """AnalysisDisabled=True while a canary's analysis steps have no Prometheus to query."""
    why = analysis_disabled(inputs, kind)
    if why is None:
        return ConditionUpdate(ANALYSIS_DISABLED, "False", "AnalysisEnabled", ""), ()
    said = find_condition(ctx.status.get("conditions", []), ANALYSIS_DISABLED) or {}
    events = () if said.get("status") == "True" else (Event(ANALYSIS_DISABLED, why),)
    return ConditionUpdate(ANALYSIS_DISABLED, "True", ANALYSIS_DISABLED, why), events


def reconcile(spec: InferenceDeploymentSpec, ctx: ReconcileContext) -> Result:
    followed = spec.model_version_from.pipeline_ref.name if spec.model_version_from else None
    pipeline = read_object(ctx, "ModelPipeline", "modelpipelines", followed) if followed else None
    resolution = resolve(spec, pipeline, ctx.status.get("resolvedFrom"), to_rfc3339(ctx.now()))
    outcome = _serve(spec, ctx, resolution)
    outcome = replace(
        outcome,
        fields={**outcome.fields, "resolvedFrom": resolution.record},
        events=(*resolution.events, *outcome.events),
    )
    # Then the registry is told what serves (registry_aliases.py); its outage never changes serving.
    return registry_aliases.sync(spec, ctx, outcome)


def _serve(spec: InferenceDeploymentSpec, ctx: ReconcileContext, resolution: Resolution) -> Outcome:
    status = ctx.status
    name = resolution.name
    mv = read_object(ctx, "ModelVersion", "modelversions", name) if name else None
    kind = workload_kind(spec, ctx)
    fallback = ROLLOUTS_GONE if spec.rollout.strategy == "canary" and kind == "Deployment" else None
    workload = owned_one(ctx, kind)
    stable = status.get("stableVersion")
    # The stable version serves on while its ModelVersion is being deleted (the in-use finalizer
    # holds it): judged on the rest, and Ready's reason says so.
    problem = resolution.problem or not_servable(spec, mv, str(name), deleting_ok=name == stable)
    note = _stable_note(spec, ctx, stable, mv if name == stable else None)
    repository: dict[str, Any] | None = None
    prometheus: str | None = None
    if problem is None:
        try:
            prometheus = analysis_address(spec, ctx.config)
        except EndpointNotAllowedError as error:
            problem = "EndpointNotAllowed", f"spec.rollout.analysis.prometheusAddress: {error}"
    if problem is None:
        assert mv is not None
        found = published(spec, ctx, mv)
        if isinstance(found, tuple):
            problem = found
        else:
            repository = found
    if problem is not None:
        return _waiting(spec, ctx, kind, workload, name=name, problem=problem, fallback=fallback, note=note)
    assert mv is not None
    assert repository is not None
    try:
        inputs, applied, workload, events = _sync(spec, ctx, kind, mv, repository, prometheus=prometheus)
    except ApiException as error:
        if error.status != 404 or kind != "Rollout":
            raise
        # Argo Rollouts' kinds are gone (its CRDs removed) before the operator heard of it: serve
        # from a Deployment now instead of failing every apply with 404.
        kind, fallback = "Deployment", f"{ROLLOUTS_GONE} (the apiserver answered 404 for Rollouts)"
        inputs, applied, workload, events = _sync(spec, ctx, kind, mv, repository, prometheus=prometheus)
    if fallback and status.get("workloadKind") != "Deployment":
        events = (*events, Event("RolloutsUnavailable", fallback, "Warning"))
    said: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if (
        kind == "Rollout"
        and (workload.get("status") or {}).get("abort")
        and said.get("reason") == CANARY_ABORTED
        and template_version(workload) == inputs.model_version
    ):
        # The operator aborted this canary when its ModelVersion went away; it is back and Ready.
        workload = set_abort(ctx, workload, False)
        events = (
            *events,
            Event("CanaryRetried", f"{inputs.model_version} is servable again: canary resumed"),
        )
    other = owned_one(ctx, _other(kind))
    situation = Situation(inputs=inputs, note=note, fallback=fallback, other=other)
    outcome = observe(spec, ctx, kind, workload, situation)
    events += retire_other_workload(ctx, inputs, kind, outcome.phase == "Available")
    analysis, analysis_events = _analysis_condition(ctx, inputs, kind)
    events += analysis_events
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
    conditions = (*outcome.conditions, analysis)
    return Outcome(outcome.phase, conditions, fields, events=(*outcome.events, *events))


def _stable_note(
    spec: InferenceDeploymentSpec, ctx: ReconcileContext, stable: str | None, mv: Mapping[str, Any] | None
) -> tuple[str, str] | None:
    """(Ready reason, message) when the stable version's ModelVersion is gone or being deleted: it
    serves on (its pods hold their repository), and the status says so until another serves."""
    if not stable:
        return None
    mv = mv or read_object(ctx, "ModelVersion", "modelversions", stable)
    act = "point spec.modelVersionRef at another version"
    if spec.model_version_from is not None:
        act = f"let ModelPipeline {spec.model_version_from.pipeline_ref.name} promote another version"
    if mv is None:
        return "ModelVersionDeleted", f"ModelVersion {stable}, which serves, no longer exists: {act}"
    if mv["metadata"].get("deletionTimestamp"):
        return DELETING, (
            f"ModelVersion {stable}, which serves, is being deleted (it stays while it serves): {act}"
        )
    return None
