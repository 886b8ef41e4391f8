"""TrainingRun reconcile; for now it only acknowledges the object honestly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import TrainingRunSpec
from .base import Outcome, not_implemented


def reconcile(spec: TrainingRunSpec, body: Mapping[str, Any]) -> Outcome:
    return not_implemented("TrainingRun")
