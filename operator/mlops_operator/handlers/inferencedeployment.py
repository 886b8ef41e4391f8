"""InferenceDeployment reconcile; for now it only acknowledges the object honestly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import InferenceDeploymentSpec
from .base import Outcome, not_implemented


def reconcile(spec: InferenceDeploymentSpec, body: Mapping[str, Any]) -> Outcome:
    return not_implemented("InferenceDeployment")
