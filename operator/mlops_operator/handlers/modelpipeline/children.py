"""A ModelPipeline's children: its runs' TrainingRuns and ModelVersions and the ModelVersions that
score a champion. Create (never update: a run's spec is its template when it started) and delete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ...api.v1alpha1 import GROUP, VERSION
from ...builders.champion_gate import CHAMPION_OF_LABEL, champion_evaluation_name
from ...builders.modelpipeline import RUN_LABEL, SUPERSEDED
from ..context import ReconcileContext

CHILDREN = (("TrainingRun", "trainingruns"), ("ModelVersion", "modelversions"))


def _path(plural: str, namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def create(ctx: ReconcileContext, kind: str, plural: str, manifest: Mapping[str, Any]) -> None:
    """Create a child; one that exists already (made by an earlier look) is left as it is."""
    try:
        created = ctx.require_clients().raw.request("POST", _path(plural, ctx.namespace), body=manifest)
    except ApiException as error:
        if error.status != 409:
            raise
        return
    created.setdefault("kind", kind)
    ctx.cache.upsert(kind, created)


def _delete(ctx: ReconcileContext, kind: str, plural: str, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    try:
        ctx.require_clients().raw.request("DELETE", _path(plural, ctx.namespace, name), body=body)
    except ApiException as error:
        if error.status != 404:
            raise
    ctx.cache.delete(kind, ctx.namespace, name)


def delete_champion_evaluation(ctx: ReconcileContext, run: str) -> None:
    _delete(ctx, "ModelVersion", "modelversions", champion_evaluation_name(run))


def delete_run(ctx: ReconcileContext, name: str) -> None:
    """Delete a run's TrainingRun and ModelVersion, and its champion's scoring ModelVersion."""
    for kind, plural in CHILDREN:
        _delete(ctx, kind, plural, name)
    delete_champion_evaluation(ctx, name)


def supersede(ctx: ReconcileContext, run: dict[str, Any], by: str, now: str) -> None:
    """Replace: delete a running run's children and record it Superseded by run `by`."""
    delete_run(ctx, str(run["name"]))
    run.update(
        outcome=SUPERSEDED,
        completionTime=now,
        message=f"replaced by run {by} (concurrencyPolicy Replace)",
        childrenDeleted=True,
    )


def runs_children(ctx: ReconcileContext) -> dict[int, dict[str, Mapping[str, Any]]]:
    """The owned TrainingRuns and ModelVersions by run number (champion scorings are not among them)."""
    out: dict[int, dict[str, Mapping[str, Any]]] = {}
    for kind, _ in CHILDREN:
        for obj in ctx.cache.owned(kind, ctx.uid):
            labels = obj["metadata"].get("labels") or {}
            number = labels.get(RUN_LABEL, "")
            if number.isdigit() and CHAMPION_OF_LABEL not in labels:
                out.setdefault(int(number), {})[kind] = obj
    return out


def champion_evaluations(ctx: ReconcileContext) -> dict[str, Mapping[str, Any]]:
    """The owned champion-scoring ModelVersions by name."""
    return {
        str(obj["metadata"]["name"]): obj
        for obj in ctx.cache.owned("ModelVersion", ctx.uid)
        if CHAMPION_OF_LABEL in (obj["metadata"].get("labels") or {})
    }
