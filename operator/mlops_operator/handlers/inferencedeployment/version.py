"""Which ModelVersion an InferenceDeployment rolls out, and whether it can be."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...api.v1alpha1 import InferenceDeploymentSpec
from ...builders.serving import MODELVERSION_ANNOTATION
from ...engine.cache import Cache, ObjectKey
from ...k8s.conditions import find_condition
from ..base import READY

# A ModelVersion being deleted (the in-use finalizer keeps it while something serves it): never
# rolled out anew, but the stable version it is goes on serving until the spec names another.
DELETING = "ModelVersionDeleting"
NOT_FOUND = "ModelVersionNotFound"
NOT_READY = "ModelVersionNotReady"


def waiting_on_modelversion(cache: Cache, mv: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """InferenceDeployments that serve, roll out or wait for this ModelVersion (the spec names it, or
    the status serves it as stable or canary)."""
    meta = mv["metadata"]
    for idep in cache.in_namespace("InferenceDeployment", str(meta["namespace"])):
        status = idep.get("status") or {}
        named = ((idep.get("spec") or {}).get("modelVersionRef") or {}).get("name")
        if meta["name"] in (named, status.get("stableVersion"), status.get("canaryVersion")):
            yield ("InferenceDeployment", str(meta["namespace"]), str(idep["metadata"]["name"]))


def template_version(workload: Mapping[str, Any] | None) -> str | None:
    """The ModelVersion the workload's pod template runs (the canary's while a canary runs)."""
    if workload is None:
        return None
    template = (workload.get("spec") or {}).get("template") or {}
    version = ((template.get("metadata") or {}).get("annotations") or {}).get(MODELVERSION_ANNOTATION)
    return str(version) if version else None


def not_servable(
    spec: InferenceDeploymentSpec, mv: Mapping[str, Any] | None, name: str, *, deleting_ok: bool = False
) -> tuple[str, str] | None:
    """(reason, message) when this ModelVersion cannot be rolled out (yet), else None. With
    `deleting_ok`, a version being deleted is judged on the rest (it serves on as stable)."""
    if mv is None:
        return NOT_FOUND, f"ModelVersion {name} does not exist"
    if mv["metadata"].get("deletionTimestamp") and not deleting_ok:
        return DELETING, (
            f"ModelVersion {name} is being deleted (since {mv['metadata']['deletionTimestamp']}): "
            "it is not rolled out"
        )
    status = mv.get("status") or {}
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if status.get("phase") != "Ready" or ready.get("status") != "True":
        why = f"{ready.get('reason')}: {ready.get('message', '')}" if ready else "not reconciled yet"
        return NOT_READY, f"ModelVersion {name} is {status.get('phase') or 'Pending'} ({why})"
    engine = status.get("engine") or {}
    if not engine.get("uri") or not engine.get("metadataURI"):
        return NOT_READY, f"ModelVersion {name} has no compiled engine in its status"
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
