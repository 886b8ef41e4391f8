"""Finalizers and deletion of a ModelVersion.

- `mlops.dev/in-use` protects a version an InferenceDeployment serves (its status.stableVersion, or
  its canaryVersion while the canary takes traffic), the way Kubernetes protects a
  PersistentVolumeClaim a pod uses: it is added while anything serves the version and removed when
  nothing does. A canary at 0% (not started, or aborted: the InferenceDeployment aborts the canary of
  a version being deleted) serves nothing, so a deleted canary version goes once its canary stops.
  A deletion meanwhile waits (the InUse condition names who serves it; a DeletionBlocked event), and
  so does the registry's archive.
- `mlops.dev/registry` (from registration on) lets deletion archive the registry's version
  (deletionPolicy Archive). The version is found by the UID tag the registration put on it, not by
  what status recorded: a delete that lands while registration runs (its status write then fails)
  still archives the version just made. An SRE lets a deletion through an unreachable registry with
  the annotation SKIP_CLEANUP_ANNOTATION.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...api.v1alpha1 import ModelVersionSpec
from ...engine.cache import Cache
from ...integrations.registry import RegistryVersionNotFoundError
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ..base import Outcome, Result, Unchanged, ready
from ..context import ReconcileContext
from ..registries import REGISTRY_ERRORS, open_registry, registry_problem
from .common import finalizers, patch_finalizers, retry_after
from .registry import FINALIZER

IN_USE_FINALIZER = "mlops.dev/in-use"
IN_USE = "InUse"
# The InUse reason while a deletion waits; the event that says so is DeletionBlocked (a different
# reason: the engine posts no event of its own for a condition that turns True, and would drop one
# of the same reason).
SERVED = "ServedByInferenceDeployment"
# Set to "true" on a ModelVersion being deleted: remove the finalizer without touching the registry
# (the documented way through a registry that will not come back).
SKIP_CLEANUP_ANNOTATION = "mlops.dev/skip-registry-cleanup"
# The InferenceDeployment status fields that name the ModelVersions it serves, and their roles.
SERVING_FIELDS = {"stableVersion": "stable", "canaryVersion": "canary"}


def serving(cache: Cache, namespace: str, name: str) -> list[str]:
    """Who serves the ModelVersion `name`: "InferenceDeployment <name> (<role>)", sorted."""
    users = []
    for idep in cache.in_namespace("InferenceDeployment", namespace):
        status = idep.get("status") or {}
        roles = [role for field, role in SERVING_FIELDS.items() if status.get(field) == name]
        if "canary" in roles and not int(status.get("canaryWeight") or 0):
            roles.remove("canary")  # no traffic: not started yet, or aborted
        if roles:
            users.append(f"InferenceDeployment {idep['metadata']['name']} ({', '.join(roles)})")
    return sorted(users)


def served_by(cache: Cache, idep: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
    """The ModelVersions an InferenceDeployment change may take into or out of use: the ones its
    status names, and every one that holds the in-use finalizer in its namespace (what it served
    before is no longer in its status)."""
    namespace = str(idep["metadata"]["namespace"])
    status = idep.get("status") or {}
    named = {str(status[f]) for f in SERVING_FIELDS if status.get(f)}
    for mv in cache.in_namespace("ModelVersion", namespace):
        name = str(mv["metadata"]["name"])
        if name in named or IN_USE_FINALIZER in (mv["metadata"].get("finalizers") or []):
            yield ("ModelVersion", namespace, name)


def protect_while_in_use(ctx: ReconcileContext) -> bool:
    """Add the in-use finalizer to a version something serves, remove it from one nothing serves;
    True when metadata was written (the reconcile then ends: the status write would conflict)."""
    held = finalizers(ctx)
    used = bool(serving(ctx.cache, ctx.namespace, ctx.name))
    if used == (IN_USE_FINALIZER in held):
        return False
    patch_finalizers(ctx, [*held, IN_USE_FINALIZER] if used else [f for f in held if f != IN_USE_FINALIZER])
    return True


@dataclass(frozen=True)
class DeletionStep:
    """What a reconcile of a ModelVersion being deleted does next."""

    action: Literal["wait", "archive", "release", "nothing"]
    users: Sequence[str] = ()


def deletion_step(spec: ModelVersionSpec, metadata: Mapping[str, Any], users: Sequence[str]) -> DeletionStep:
    """wait while anything serves it; else archive (deletionPolicy Archive, with the registry
    finalizer held and no skip annotation: the version is looked up by UID, whatever status says);
    else release our finalizers."""
    held = set(metadata.get("finalizers") or []) & {FINALIZER, IN_USE_FINALIZER}
    if not held:
        return DeletionStep("nothing")
    if users:
        return DeletionStep("wait", users)
    skip = (metadata.get("annotations") or {}).get(SKIP_CLEANUP_ANNOTATION) == "true"
    archive = spec.registry is not None and spec.registry.deletion_policy == "Archive"
    if FINALIZER in held and archive and not skip:
        return DeletionStep("archive")
    return DeletionStep("release")


def _blocked(ctx: ReconcileContext, users: Sequence[str]) -> Outcome:
    message = (
        f"deletion waits until nothing serves this version: {', '.join(users)} serves it; the "
        "registry keeps it as it is until then"
    )
    said: Mapping[str, Any] = find_condition(ctx.status.get("conditions", []), IN_USE) or {}
    news = said.get("reason") != SERVED or said.get("message") != message
    return Outcome(
        str(ctx.status.get("phase") or "Pending"),
        (ConditionUpdate(IN_USE, "True", SERVED, message),),
        events=(Event("DeletionBlocked", message),) if news else (),
    )


def deleting(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    held = finalizers(ctx)
    step = deletion_step(spec, ctx.body["metadata"], serving(ctx.cache, ctx.namespace, ctx.name))
    if step.action == "nothing":
        return Unchanged()
    if step.action == "wait":
        return _blocked(ctx, step.users)
    if step.action == "archive":
        try:
            registry = open_registry(spec, ctx)
            found = registry.find(ctx.uid)
            if found is not None:
                registry.archive(found.version)
        except RegistryVersionNotFoundError:
            pass  # deleted in the registry between the two requests: nothing left to archive
        except REGISTRY_ERRORS as error:
            reason, message = registry_problem(error, "deletion waits to archive this version")
            message += (
                f". To delete without archiving: kubectl annotate modelversion {ctx.name} -n {ctx.namespace} "
                f"{SKIP_CLEANUP_ANNOTATION}=true"
            )
            return Outcome(
                str(ctx.status.get("phase") or "Pending"),
                (ready("False", reason, message),),
                requeue_after=retry_after(ctx, reason),
            )
    patch_finalizers(ctx, [f for f in held if f not in (FINALIZER, IN_USE_FINALIZER)])
    return Unchanged()
