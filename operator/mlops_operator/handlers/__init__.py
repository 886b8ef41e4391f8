"""One module per kind: read the object, reconcile, return an Outcome for the status."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import dataset, inferencedeployment, modelversion, trainingrun
from .base import Outcome

Reconciler = Callable[[Any, Mapping[str, Any]], Outcome]

RECONCILERS: dict[str, Reconciler] = {
    "Dataset": dataset.reconcile,
    "TrainingRun": trainingrun.reconcile,
    "ModelVersion": modelversion.reconcile,
    "InferenceDeployment": inferencedeployment.reconcile,
}
