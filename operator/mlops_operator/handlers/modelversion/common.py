"""What the concerns of the ModelVersion controller share: names, the pinned spec, finalizers, and
the retry delay of an outage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ...api.v1alpha1 import ModelVersionSpec
from ..base import outage_requeue
from ..context import ReconcileContext

KIND = "ModelVersion"
PLURAL = "modelversions"
SPEC_ACCEPTED = "SpecAccepted"
PROMOTED = "Promoted"


def retry_after(ctx: ReconcileContext, reason: str) -> float:
    """Seconds until a ModelVersion whose Ready says `reason` (an outage) is looked at again."""
    return outage_requeue(ctx.status.get("conditions"), reason, ctx.now(), ctx.config)


def canonical_sha256(value: Any) -> str:
    """SHA-256 (hex) of `value` as canonical JSON: the same value always gives the same digest."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def registered_model(mv: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(provider, tracking URI, registered model name) of a ModelVersion's spec; None: no registry."""
    registry = (mv.get("spec") or {}).get("registry")
    if not registry:
        return None
    name = registry.get("collection") or (mv.get("spec") or {}).get("modelName")
    return str(registry.get("provider", "wandb")), str(registry.get("trackingURI") or ""), str(name)


def pinned_spec(ctx: ReconcileContext, spec: ModelVersionSpec) -> ModelVersionSpec:
    """The spec compile started with, with today's promotion, scheduling and deadline fields."""
    pinned = (ctx.status.get("pinned") or {}).get("spec")
    if not pinned:
        return spec
    current = spec.wire()
    merged = dict(pinned)
    for name in ("stage", "scheduling", "serviceAccountName"):
        merged.pop(name, None)
        if name in current:
            merged[name] = current[name]
    for section in ("compile", "evaluation"):
        deadline = (current.get(section) or {}).get("deadlineSeconds")
        merged[section] = {k: v for k, v in (merged.get(section) or {}).items() if k != "deadlineSeconds"}
        if deadline is not None:
            merged[section]["deadlineSeconds"] = deadline
    if merged.get("registry") and spec.registry:
        registry = dict(merged["registry"])
        for name in ("aliases", "credentialsSecretRef", "deletionPolicy"):
            registry.pop(name, None)
            if name in current["registry"]:
                registry[name] = current["registry"][name]
        merged["registry"] = registry
    return ModelVersionSpec.model_validate(merged)


def with_status(ctx: ReconcileContext, fields: Mapping[str, Any]) -> ReconcileContext:
    """`ctx` as it will be once `fields` are in its status (to build a Job from what is recorded with it)."""
    body = {**ctx.body, "status": {**ctx.status, **fields}}
    return ReconcileContext(body, ctx.clients, ctx.config, ctx.now, ctx.cache)


def patch_finalizers(ctx: ReconcileContext, finalizers: list[str]) -> None:
    """Write metadata.finalizers (conditioned on the resourceVersion the reconcile read), and keep
    what was written in the cache."""
    meta = ctx.body["metadata"]
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": finalizers or None}}
    written = ctx.require_clients().raw.patch_object(PLURAL, ctx.namespace, ctx.name, patch)
    written.setdefault("kind", KIND)
    ctx.cache.upsert(KIND, written)


def finalizers(ctx: ReconcileContext) -> list[str]:
    return list(ctx.body["metadata"].get("finalizers") or [])
