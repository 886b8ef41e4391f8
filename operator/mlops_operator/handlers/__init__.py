"""One module per kind: read the object, reconcile, return an Outcome for the status."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import dataset, inferencedeployment, modelversion, trainingrun
from .base import Outcome
from .context import ReconcileContext

Reconciler = Callable[[Any, ReconcileContext], Outcome]
DueCheck = Callable[[Any, ReconcileContext], bool]


@dataclass(frozen=True)
class KindHandler:
    """How one kind is reconciled: on every change, and on timer ticks when `is_due` says so."""

    reconcile: Reconciler
    is_due: DueCheck | None = None


HANDLERS: dict[str, KindHandler] = {
    "Dataset": KindHandler(dataset.reconcile, dataset.is_due),
    "TrainingRun": KindHandler(trainingrun.reconcile, trainingrun.is_due),
    "ModelVersion": KindHandler(modelversion.reconcile),
    "InferenceDeployment": KindHandler(inferencedeployment.reconcile),
}
