"""A ModelVersion in the model registry: opening the tenant's registry, registering the version
(idempotent by the UID tag), and pointing the spec's and the stage's aliases at it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...api.v1alpha1 import ModelVersionSpec
from ...builders.triton import triton_model_version
from ...integrations.registry import ModelRegistry, RegisteredVersion
from ...k8s.conditions import ConditionUpdate
from ...metrics import MODELVERSION_REGISTRATIONS
from ...timeutil import to_rfc3339
from ..base import Outcome, Result, Unchanged, ready
from ..context import ReconcileContext
from ..registries import REGISTRY_ERRORS, open_registry, registered_model_name, registry_problem
from .common import finalizers, patch_finalizers, retry_after
from .package import PackageUnavailableError, version_request

# Held from registration on, so that deletion can archive the version (deletionPolicy Archive).
FINALIZER = "mlops.dev/registry"
STAGE_ALIASES = {"Development": "development", "Staging": "staging", "Production": "production"}


def desired_aliases(spec: ModelVersionSpec) -> list[str]:
    aliases = list(spec.registry.aliases) if spec.registry else []
    stage_alias = STAGE_ALIASES.get(spec.stage)
    if stage_alias and stage_alias not in aliases:
        aliases.append(stage_alias)
    return sorted(aliases)


def registry_status(
    spec: ModelVersionSpec, ctx: ReconcileContext, version: RegisteredVersion, applied: Sequence[str]
) -> dict[str, Any]:
    assert spec.registry is not None
    return {
        "provider": spec.registry.provider,
        "modelName": registered_model_name(spec),
        "version": version.version,
        "url": version.url,
        "aliases": sorted(version.aliases),
        "appliedAliases": sorted(applied),
        "archived": version.archived,
        "promotedGeneration": ctx.generation,
    }


def _tags(ctx: ReconcileContext, spec: ModelVersionSpec) -> dict[str, str]:
    status = ctx.status
    lineage: Mapping[str, Any] = status.get("lineage") or {}
    engine: Mapping[str, Any] = status.get("engine") or {}
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


def apply_aliases(
    spec: ModelVersionSpec, registry: ModelRegistry, version: str, applied_before: Sequence[str]
) -> tuple[RegisteredVersion, list[str]]:
    """Stage Archived archives the version; otherwise the spec's aliases and the stage's alias point
    at it, and aliases the operator put there before and the spec no longer names come off."""
    if spec.stage == "Archived":
        return registry.archive(version), []
    desired = desired_aliases(spec)
    removed = sorted(set(applied_before) - set(desired))
    return registry.set_aliases(version, add=desired, remove=removed), desired


def register(spec: ModelVersionSpec, ctx: ReconcileContext, accepted: ConditionUpdate) -> Result:
    assert spec.registry is not None
    held = finalizers(ctx)
    if FINALIZER not in held:
        # First the finalizer, in a reconcile of its own: the patch changes the resourceVersion the
        # status write of this reconcile would be conditioned on. Its watch event brings us back.
        patch_finalizers(ctx, [*held, FINALIZER])
        return Unchanged(requeue_after=1.0)
    try:
        registry = open_registry(spec, ctx)
        # Registered before (a lost response, a restart): no need to read the package again.
        registered = registry.find(ctx.uid) or registry.register(version_request(spec, ctx, _tags(ctx, spec)))
        version, applied = apply_aliases(spec, registry, registered.version, [])
    except PackageUnavailableError as error:
        reason = "SourceUnavailable"
        message = f"registering {spec.model_name}: {error}; retrying"
        return Outcome(
            "Registering", (ready("False", reason, message), accepted), requeue_after=retry_after(ctx, reason)
        )
    except REGISTRY_ERRORS as error:
        reason, message = registry_problem(error, f"registering {spec.model_name}")
        return Outcome(
            "Registering", (ready("False", reason, message), accepted), requeue_after=retry_after(ctx, reason)
        )
    MODELVERSION_REGISTRATIONS.labels(provider=spec.registry.provider).inc()
    aliases = ", ".join(version.aliases) or "none"
    return Outcome(
        "Ready",
        (
            ready(
                "True",
                "Registered",
                f"registered in {spec.registry.provider} as {spec.registry.collection or spec.model_name} "
                f"version {version.version} (aliases: {aliases})",
            ),
            accepted,
        ),
        {
            "registry": registry_status(spec, ctx, version, applied),
            # What Triton serves it as: the registry's number, so responses and metrics name it too.
            "servingVersion": triton_model_version(version.version),
            "completionTime": to_rfc3339(ctx.now()),
        },
    )
