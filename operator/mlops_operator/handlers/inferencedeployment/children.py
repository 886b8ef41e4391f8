"""The InferenceDeployment's children: what they should be, and making them so.

Level-based: every reconcile compares the desired children (the endpoint Service, the workload,
the AnalysisTemplate, the autoscaler: builders/serving.py `children`) with what the watches hold,
and server-side applies, under the operator's one field manager, every child that is missing or
drifted (builders/drift.py: the operator wants something else, or a hand edit). Only the operator's
own fields are sent: fields another controller owns (the autoscaler's replicas, Argo Rollouts'
annotations) are never in the manifests, so applying never takes them
(tests/integration/test_inferencedeployment.py reads managedFields).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from ...api.v1alpha1 import InferenceDeploymentSpec
from ...builders.drift import drifted, observed_hash
from ...builders.serving import (
    ServingInputs,
    Workload,
    analysis_template_name,
    obsolete_children,
    replicas_handover,
)
from ...engine.cache import controller_uid
from ...k8s.events import Event
from ...k8s.rawapi import MERGE_PATCH, resource_path
from ..context import ReconcileContext

REPLICAS_HANDOVER = "replicas-handover"  # suffix of the field manager that holds replicas for autoscaling


def workload_kind(spec: InferenceDeploymentSpec, ctx: ReconcileContext) -> Workload:
    """A Rollout for a canary where Argo Rollouts is served (now: the flag follows its CRD), else a
    Deployment."""
    return "Rollout" if ctx.require_clients().rollouts and spec.rollout.strategy == "canary" else "Deployment"


def owned_one(ctx: ReconcileContext, kind: str) -> Mapping[str, Any] | None:
    """The child of `kind` this InferenceDeployment controls, as the watches hold it (not deleting)."""
    owned = [o for o in ctx.cache.owned(kind, ctx.uid) if not o["metadata"].get("deletionTimestamp")]
    return owned[0] if owned else None


def apply_children(
    ctx: ReconcileContext,
    inputs: ServingInputs,
    children: Sequence[Mapping[str, Any]],
    kind: Workload,
    workload: Mapping[str, Any] | None,
) -> Mapping[str, Any] | None:
    """Server-side apply, one field manager; the workload as the apiserver returned it, if applied."""
    raw, manager = ctx.require_clients().raw, ctx.config.field_manager
    autoscaler = ctx.status.get("autoscaler")
    if inputs.spec.autoscaling is None and autoscaler:
        # First, so it does not scale the workload that spec.replicas sizes again.
        raw.delete("HorizontalPodAutoscaler", ctx.namespace, str(autoscaler))
    applies_workload = any(c["kind"] == kind for c in children)
    if inputs.spec.autoscaling is not None and workload is not None and applies_workload:
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
    written: Mapping[str, Any] | None = None
    for child in children:
        result = raw.apply(child, manager)
        result.setdefault("kind", child["kind"])
        result.setdefault("apiVersion", child["apiVersion"])
        ctx.cache.upsert(str(child["kind"]), result)  # write-through: the next look sees it
        if child["kind"] == kind:
            written = result
    return written


def recreate_missing(
    ctx: ReconcileContext, inputs: ServingInputs, children: Sequence[Mapping[str, Any]], kind: Workload
) -> tuple[Event, ...]:
    """Create again the children that are missing, nothing else (while the spec's own version waits:
    what exists stays as the last applied spec left it)."""
    missing = [
        c
        for c in children
        if ctx.cache.get(str(c["kind"]), ctx.namespace, str(c["metadata"]["name"])) is None
    ]
    if not missing:
        return ()
    apply_children(ctx, inputs, missing, kind, None)
    return tuple(
        Event(
            "ChildRecreated",
            f"the {c['kind']} {c['metadata']['name']} was missing: created it again",
            "Warning",
        )
        for c in missing
    )


def sync_children(
    ctx: ReconcileContext,
    inputs: ServingInputs,
    children: Sequence[Mapping[str, Any]],
    kind: Workload,
    workload: Mapping[str, Any] | None,
) -> tuple[Mapping[str, Any] | None, tuple[Event, ...]]:
    """Apply every child that is missing or drifted from what the watches hold (builders/drift.py:
    the desired-hash annotation, or a field the operator sets that no longer holds its value); a
    missing or hand-edited one with a Warning event. Delete the children older versions or the other
    workload kind left (`obsolete_children`). The workload as it now is."""
    stale: list[Mapping[str, Any]] = []
    events: list[Event] = []
    for child in children:
        meta = child["metadata"]
        observed = ctx.cache.get(str(child["kind"]), ctx.namespace, str(meta["name"]))
        if observed is not None and observed["metadata"].get("deletionTimestamp"):
            observed = None
        if not drifted(child, observed):
            continue
        stale.append(child)
        what = f"the {child['kind']} {meta['name']}"
        if observed is None and ctx.status.get("appliedHash") and ctx.status.get("workloadKind") == kind:
            events.append(Event("ChildRecreated", f"{what} was missing: created it again", "Warning"))
        elif observed is not None and observed_hash(observed) == observed_hash(child):
            events.append(
                Event("ChildReverted", f"{what} was edited (by hand?): applied it again", "Warning")
            )
    if stale:
        workload = apply_children(ctx, inputs, stale, kind, workload) or workload
    for other_kind, name in obsolete_children(inputs, kind):
        found = ctx.cache.get(other_kind, ctx.namespace, name)
        if found is not None and controller_uid(found) == ctx.uid:
            ctx.require_clients().raw.delete(other_kind, ctx.namespace, name)
            ctx.cache.delete(other_kind, ctx.namespace, name)
    return workload, tuple(events)


def retire_other_workload(
    ctx: ReconcileContext, inputs: ServingInputs, kind: Workload, serving: bool
) -> tuple[Event, ...]:
    """Delete the workload of the other kind once this one serves: a Deployment made before Argo
    Rollouts was installed, now replaced by a Rollout; or a Rollout (with its canary Service and
    AnalysisTemplate) after Argo Rollouts went away. A kind no longer served deletes as a 404: done."""
    if not serving:
        return ()
    other: Workload = "Deployment" if kind == "Rollout" else "Rollout"
    raw = ctx.require_clients().raw
    stale = owned_one(ctx, other)
    if stale is None:
        return ()
    name = str(stale["metadata"]["name"])
    raw.delete(other, ctx.namespace, name)
    if other == "Rollout":
        raw.delete("AnalysisTemplate", ctx.namespace, analysis_template_name(inputs))
    return (Event("WorkloadReplaced", f"the {kind} serves: deleted the {other} {name} it replaces"),)


def set_abort(ctx: ReconcileContext, rollout: Mapping[str, Any], abort: bool) -> Mapping[str, Any]:
    """Abort a Rollout's canary (the stable ReplicaSet takes all the pods again), or retry it: what
    `kubectl argo rollouts abort` / `retry` do, a merge patch of status.abort through the status
    subresource (Argo Rollouts v1.x). The Rollout as written."""
    path = resource_path("Rollout", ctx.namespace, str(rollout["metadata"]["name"])) + "/status"
    written = ctx.require_clients().raw.request(
        "PATCH", path, body={"status": {"abort": abort}}, content_type=MERGE_PATCH
    )
    written.setdefault("kind", "Rollout")
    ctx.cache.upsert("Rollout", written)
    return written
