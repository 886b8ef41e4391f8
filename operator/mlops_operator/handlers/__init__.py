"""One module per kind: reconcile an object from what the watches delivered, return its Outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.cache import Cache, ObjectKey
from . import dataset, driftmonitor, inferencedeployment, modelpipeline, modelversion, trainingrun
from .base import Result
from .context import ReconcileContext

Reconciler = Callable[[Any, ReconcileContext], Result]
Dependents = Callable[[Cache, Mapping[str, Any]], Iterable[ObjectKey]]


def _none(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    return ()


@dataclass(frozen=True)
class KindHandler:
    """How one kind is reconciled, and which other objects wait on a change of one of its objects."""

    reconcile: Reconciler
    dependents: Dependents = _none


def _all(*functions: Dependents) -> Dependents:
    def dependents(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
        for function in functions:
            yield from function(cache, body)

    return dependents


HANDLERS: dict[str, KindHandler] = {
    "Dataset": KindHandler(
        dataset.reconcile,
        _all(
            trainingrun.waiting_on_dataset,
            modelversion.waiting_on_dataset,
            driftmonitor.watching_dataset,
            modelpipeline.watching_dataset,
        ),
    ),
    "TrainingRun": KindHandler(
        trainingrun.reconcile,
        _all(modelversion.waiting_on_training, driftmonitor.watching_training, modelpipeline.owning_run),
    ),
    "ModelVersion": KindHandler(
        modelversion.reconcile,
        _all(
            modelversion.sharing_a_model,
            inferencedeployment.waiting_on_modelversion,
            driftmonitor.watching_modelversion,
            modelpipeline.owning_run,
        ),
    ),
    "InferenceDeployment": KindHandler(
        inferencedeployment.reconcile,
        _all(modelversion.served_by, modelversion.aliases_moved_by, driftmonitor.watching_deployment),
    ),
    "DriftMonitor": KindHandler(driftmonitor.reconcile, modelpipeline.watching_monitor),
    "ModelPipeline": KindHandler(modelpipeline.reconcile, inferencedeployment.following_pipeline),
}
