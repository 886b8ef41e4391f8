"""A registered ModelVersion after registration: its stage and aliases follow the spec (promotion),
an alias another version took is noticed, and a settled status is restated, never rebuilt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...api.v1alpha1 import ModelVersionSpec
from ...integrations.registry import RegistryRejectedError
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ..base import ENGINE_REASONS, MAX_MESSAGE, READY, Outcome, Result, Unchanged, ready
from ..context import ReconcileContext
from ..registries import REGISTRY_ERRORS, open_registry, registry_problem
from .common import PROMOTED, SPEC_ACCEPTED, registered_model, retry_after
from .registry import apply_aliases, registry_status

# Phases in which the status stands: only promotion (Ready) or a changed SpecAccepted writes again.
SETTLED_PHASES = ("Ready", "Rejected", "Failed")


def _aliases_taken_by_others(ctx: ReconcileContext, mine: Mapping[str, Any]) -> set[str]:
    """Aliases this version's status claims that another ModelVersion of the same registered model
    says it now has: the registry moved them (an alias points at one version at a time)."""
    model = registered_model(ctx.body)
    claimed = set(mine.get("aliases") or [])
    taken: set[str] = set()
    for other in ctx.cache.in_namespace("ModelVersion", ctx.namespace):
        theirs = (other.get("status") or {}).get("registry") or {}
        if other["metadata"]["name"] == ctx.name or registered_model(other) != model:
            continue
        if theirs.get("version") != mine.get("version"):
            taken |= claimed & set(theirs.get("aliases") or [])
    return taken | _aliases_moved_by_deployments(ctx, mine)


def _aliases_moved_by_deployments(ctx: ReconcileContext, mine: Mapping[str, Any]) -> set[str]:
    """Aliases whose place in this version's status an InferenceDeployment's status.registry (the
    serving aliases it moved) contradicts: claimed here, it says another version of the same
    registered model has them or, for one it took off, no version; not claimed here, it says
    this version has them."""
    model = registered_model(ctx.body)
    claimed = set(mine.get("aliases") or [])
    stale: set[str] = set()
    for idep in ctx.cache.in_namespace("InferenceDeployment", ctx.namespace):
        record = (idep.get("status") or {}).get("registry") or {}
        for slot in ("stable", "canary"):
            alias, name = record.get(f"{slot}Alias"), record.get(f"{slot}ModelVersion")
            if not alias:
                continue
            if name == ctx.name:
                if record.get(f"{slot}RegistryVersion") == mine.get("version") and alias not in claimed:
                    stale.add(alias)
            elif alias in claimed and name:
                other = ctx.cache.get("ModelVersion", ctx.namespace, name)
                if other is None or registered_model(other) == model:
                    stale.add(alias)
            elif (
                alias in claimed
                and alias not in (mine.get("appliedAliases") or [])  # this version's own spec puts it
                and model is not None
                and record.get("modelName") == model[2]
            ):
                stale.add(alias)  # taken off every version
    return stale


def promote(spec: ModelVersionSpec, ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    status = ctx.status
    current: Mapping[str, Any] = status.get("registry") or {}
    if spec.registry is None or not current.get("version"):
        return restate(ctx, accepted)
    promote = current.get("promotedGeneration") != ctx.generation
    taken = set() if promote else _aliases_taken_by_others(ctx, current)
    if not promote and not taken:
        return restate(ctx, accepted)
    version = str(current["version"])
    try:
        registry = open_registry(spec, ctx)
        if promote:
            found, applied = apply_aliases(spec, registry, version, current.get("appliedAliases") or [])
        else:
            refreshed = registry.get(version)
            if refreshed is None:
                raise RegistryRejectedError(f"version {version} no longer exists in the registry")
            found, applied = refreshed, list(current.get("appliedAliases") or [])
    except REGISTRY_ERRORS as error:
        reason, message = registry_problem(error, f"moving the aliases of version {version}")
        said = find_condition(status.get("conditions", []), READY) or {}
        return Outcome(
            "Ready",
            (
                ready("True", str(said.get("reason") or "Registered"), str(said.get("message") or "")),
                ConditionUpdate(PROMOTED, "False", reason, message[:MAX_MESSAGE]),
                accepted,
            ),
            requeue_after=retry_after(ctx, reason),
        )
    fields = {"registry": registry_status(spec, ctx, found, applied)}
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
            ready("True", "Registered", f"registered as {fields['registry']['modelName']} {summary}"),
            ConditionUpdate(PROMOTED, "True", "Archived" if found.archived else "AliasesApplied", summary),
            accepted,
        ),
        fields,
        events=events,
    )


def restate(ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    """Ready, Rejected or Failed: the status stands; only SpecAccepted may change."""
    status = ctx.status
    said = find_condition(status.get("conditions", []), READY) or {}
    before = find_condition(status.get("conditions", []), SPEC_ACCEPTED) or {}
    if (
        status.get("observedGeneration") == ctx.generation
        and before.get("reason") == accepted.reason
        and said.get("reason") not in ENGINE_REASONS
    ):
        return Unchanged()
    if said.get("reason") in ENGINE_REASONS or not said:
        # An engine error replaced the Ready condition: restate what the phase and status say.
        phase = status["phase"]
        if phase != "Ready":
            restated = ready("False", str(phase), "")
        elif (status.get("registry") or {}).get("version"):
            restated = ready("True", "Registered", "")
        else:
            restated = ready("True", "Accepted", "gates passed; not registered (spec.registry is empty)")
    else:
        restated = ConditionUpdate(READY, said["status"], said["reason"], said.get("message", ""))
    return Outcome(str(status["phase"]), (restated, accepted))
