"""ModelVersion reconcile; for now it only acknowledges the object honestly."""

from __future__ import annotations

from ..api.v1alpha1 import ModelVersionSpec
from .base import Outcome, not_implemented
from .context import ReconcileContext


def reconcile(spec: ModelVersionSpec, ctx: ReconcileContext) -> Outcome:
    return not_implemented("ModelVersion")
