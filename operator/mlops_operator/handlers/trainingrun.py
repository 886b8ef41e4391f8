"""TrainingRun reconcile; for now it only acknowledges the object honestly."""

from __future__ import annotations

from ..api.v1alpha1 import TrainingRunSpec
from .base import Outcome, not_implemented
from .context import ReconcileContext


def reconcile(spec: TrainingRunSpec, ctx: ReconcileContext) -> Outcome:
    return not_implemented("TrainingRun")
