"""Deleting a ModelVersion: with deletionPolicy Archive, the registry's version is archived before the
finalizer lets the object go; an SRE lets a deletion through an unreachable registry with the
annotation SKIP_CLEANUP_ANNOTATION."""

from __future__ import annotations

from ...api.v1alpha1 import ModelVersionSpec
from ..base import Outcome, Result, Unchanged, ready
from ..context import ReconcileContext
from .common import finalizers, patch_finalizers, retry_after
from .registry import FINALIZER, REGISTRY_ERRORS, open_registry, registry_problem

# Set to "true" on a ModelVersion being deleted: remove the finalizer without touching the registry
# (the documented way through a registry that will not come back).
SKIP_CLEANUP_ANNOTATION = "mlops.dev/skip-registry-cleanup"


def deleting(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    held = finalizers(ctx)
    if FINALIZER not in held:
        return Unchanged()
    current = ctx.status.get("registry") or {}
    skip = (ctx.body["metadata"].get("annotations") or {}).get(SKIP_CLEANUP_ANNOTATION) == "true"
    archive = (
        spec.registry is not None and spec.registry.deletion_policy == "Archive" and current.get("version")
    )
    if archive and not skip:
        version = str(current["version"])
        try:
            open_registry(spec, ctx).archive(version)
        except REGISTRY_ERRORS as error:
            reason, message = registry_problem(error, f"deletion waits to archive version {version}")
            message += (
                f". To delete without archiving: kubectl annotate modelversion {ctx.name} -n {ctx.namespace} "
                f"{SKIP_CLEANUP_ANNOTATION}=true"
            )
            return Outcome(
                str(ctx.status.get("phase") or "Pending"),
                (ready("False", reason, message),),
                requeue_after=retry_after(ctx, reason),
            )
    patch_finalizers(ctx, [f for f in held if f != FINALIZER])
    return Unchanged()
