"""Which ModelVersion an InferenceDeployment rolls out, and whether it can be.

The version is the one spec.modelVersionRef names, or, with spec.modelVersionFrom, the one the
followed ModelPipeline's status.latestPromoted names (`resolve`): Git says "serve what pipeline X
promotes", and each promotion rolls out through the canary as a changed modelVersionRef does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...api.v1alpha1 import InferenceDeploymentSpec
from ...builders.serving import MODELVERSION_ANNOTATION
from ...engine.cache import Cache, ObjectKey
from ...k8s.conditions import find_condition
from ...k8s.events import Event
from ..base import READY

# A ModelVersion being deleted (the in-use finalizer keeps it while something serves it): never
# rolled out anew, but the stable version it is goes on serving until the spec names another.
DELETING = "ModelVersionDeleting"
NOT_FOUND = "ModelVersionNotFound"
NOT_READY = "ModelVersionNotReady"
# spec.modelVersionFrom names a ModelPipeline that does not exist, or one that promoted nothing yet.
PIPELINE_NOT_FOUND = "ModelPipelineNotFound"
NO_PROMOTED = "NoPromotedVersion"
RESOLVED = "ModelVersionResolved"  # the event of a follower whose pipeline promoted another version


@dataclass(frozen=True)
class Resolution:
    """The ModelVersion to roll out, from the spec or the followed pipeline."""

    name: str | None  # None: there is none to roll out (`problem` says why)
    problem: tuple[str, str] | None = None  # (Ready reason, message)
    # status.resolvedFrom (None: the spec names the version); a key it no longer has is None, so
    # the status merge patch removes it (once: the next status lacks it too).
    record: Mapping[str, str | None] | None = None
    events: tuple[Event, ...] = ()


def followed_pipeline(spec: Mapping[str, Any]) -> str | None:
    """The ModelPipeline an InferenceDeployment's spec (as stored) follows, if any."""
    ref = ((spec.get("modelVersionFrom") or {}).get("pipelineRef") or {}).get("name")
    return str(ref) if ref else None


def resolve(
    spec: InferenceDeploymentSpec,
    pipeline: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> Resolution:
    """The ModelVersion to roll out: spec.modelVersionRef's, or the latestPromoted of `pipeline`
    (the spec's modelVersionFrom.pipelineRef, as read; None: it does not exist). `previous` is
    status.resolvedFrom: a change of what the pipeline names is an event, and resolvedTime stays
    while it names the same version."""
    if spec.model_version_from is None:
        assert spec.model_version_ref is not None  # the schema's rule: exactly one
        return Resolution(spec.model_version_ref.name)
    followed = spec.model_version_from.pipeline_ref.name
    name: str | None = None
    problem: tuple[str, str] | None = None
    if pipeline is None:
        problem = PIPELINE_NOT_FOUND, f"ModelPipeline {followed} (spec.modelVersionFrom) does not exist"
    else:
        promoted = (pipeline.get("status") or {}).get("latestPromoted")
        if promoted:
            name = str(promoted)
        else:
            problem = (
                NO_PROMOTED,
                (
                    f"ModelPipeline {followed} has promoted no ModelVersion yet: nothing to roll out until "
                    "its champion/challenger gate promotes one"
                ),
            )
    previous = previous or {}
    same = previous.get("pipeline") == followed and previous.get("modelVersion") == name
    record: dict[str, str | None] = {**dict.fromkeys(previous), "pipeline": followed}
    if name is not None:
        record["modelVersion"] = name
    when = previous.get("resolvedTime") if same else now
    if when:
        record["resolvedTime"] = str(when)
    events: tuple[Event, ...] = ()
    if name is not None and not same:
        events = (Event(RESOLVED, f"ModelPipeline {followed} promoted {name}: rolling out"),)
    return Resolution(name, problem, record, events)


def waiting_on_modelversion(cache: Cache, mv: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """InferenceDeployments that serve, roll out or wait for this ModelVersion (the spec names it, the
    followed pipeline resolved to it, or the status serves it as stable or canary)."""
    meta = mv["metadata"]
    for idep in cache.in_namespace("InferenceDeployment", str(meta["namespace"])):
        status = idep.get("status") or {}
        named = ((idep.get("spec") or {}).get("modelVersionRef") or {}).get("name")
        resolved = (status.get("resolvedFrom") or {}).get("modelVersion")
        if meta["name"] in (named, resolved, status.get("stableVersion"), status.get("canaryVersion")):
            yield ("InferenceDeployment", str(meta["namespace"]), str(idep["metadata"]["name"]))


def following_pipeline(cache: Cache, pipeline: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """InferenceDeployments that follow this ModelPipeline (spec.modelVersionFrom): a promotion, or the
    pipeline appearing or going, changes what they roll out."""
    meta = pipeline["metadata"]
    for idep in cache.in_namespace("InferenceDeployment", str(meta["namespace"])):
        if followed_pipeline(idep.get("spec") or {}) == meta["name"]:
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
