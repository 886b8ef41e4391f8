"""Which ModelVersions a change of another object wakes (the engine queues them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...engine.cache import Cache, ObjectKey
from .common import KIND, registered_model


def _not_started(mv: Mapping[str, Any]) -> bool:
    return not (mv.get("status") or {}).get("specHash")


def waiting_on_training(cache: Cache, run: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """ModelVersions not compiling yet that promote this TrainingRun."""
    meta = run["metadata"]
    for mv in cache.in_namespace(KIND, str(meta["namespace"])):
        ref = ((mv.get("spec") or {}).get("source") or {}).get("trainingRunRef") or {}
        if ref.get("name") == meta["name"] and _not_started(mv):
            yield (KIND, str(meta["namespace"]), str(mv["metadata"]["name"]))


def waiting_on_dataset(cache: Cache, dataset: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """ModelVersions not compiling yet that name this Dataset for evaluation or calibration."""
    meta = dataset["metadata"]
    for mv in cache.in_namespace(KIND, str(meta["namespace"])):
        spec = mv.get("spec") or {}
        named = {
            ((spec.get("evaluation") or {}).get("datasetRef") or {}).get("name"),
            (((spec.get("compile") or {}).get("calibration") or {}).get("datasetRef") or {}).get("name"),
        }
        if meta["name"] in named and _not_started(mv):
            yield (KIND, str(meta["namespace"]), str(mv["metadata"]["name"]))


def sharing_a_model(cache: Cache, mv: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Ready ModelVersions of the same registered model: an alias this one took may have left them."""
    model = registered_model(mv)
    if model is None or not ((mv.get("status") or {}).get("registry") or {}).get("aliases"):
        return
    meta = mv["metadata"]
    for other in cache.in_namespace(KIND, str(meta["namespace"])):
        if other["metadata"]["name"] == meta["name"]:
            continue
        if (other.get("status") or {}).get("registry") and registered_model(other) == model:
            yield (KIND, str(meta["namespace"]), str(other["metadata"]["name"]))


def aliases_moved_by(cache: Cache, idep: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Registered ModelVersions whose aliases an InferenceDeployment's status.registry may have
    moved: the ones it names, and the ones claiming one of its aliases."""
    record = (idep.get("status") or {}).get("registry") or {}
    aliases = {record.get("stableAlias"), record.get("canaryAlias")} - {None}
    if not aliases:
        return
    named = {record.get("stableModelVersion"), record.get("canaryModelVersion")}
    namespace = str(idep["metadata"]["namespace"])
    for mv in cache.in_namespace(KIND, namespace):
        registry = (mv.get("status") or {}).get("registry") or {}
        claims = aliases & set(registry.get("aliases") or [])
        if registry.get("version") and (claims or mv["metadata"]["name"] in named):
            yield (KIND, namespace, str(mv["metadata"]["name"]))
