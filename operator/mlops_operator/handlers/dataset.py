"""Dataset reconcile; for now it only acknowledges the object honestly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import DatasetSpec
from .base import Outcome, not_implemented


def reconcile(spec: DatasetSpec, body: Mapping[str, Any]) -> Outcome:
    return not_implemented("Dataset")
