"""ModelVersion reconcile decisions on a settled version, as data (no clients: a call would raise)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.builders.modelversion import compile_hash
from mlops_operator.handlers import modelversion
from mlops_operator.handlers.base import Outcome, Unchanged
from mlops_operator.handlers.context import ReconcileContext
from tests.samples import load, valid_samples

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SAMPLE = load(next(p for p in valid_samples() if "modelversion" in p.name))
UNREGISTERED = ModelVersionSpec.model_validate({k: v for k, v in SAMPLE["spec"].items() if k != "registry"})
REGISTERED = ModelVersionSpec.model_validate(SAMPLE["spec"])


def _body(spec: ModelVersionSpec, phase: str, ready: dict[str, str], **status: Any) -> dict[str, Any]:
    conditions = [
        {"type": "Ready", **ready},
        {"type": "SpecAccepted", "status": "True", "reason": "Accepted", "message": ""},
    ]
    full = {"phase": phase, "observedGeneration": 1, "specHash": compile_hash(spec), "conditions": conditions}
    return {
        "metadata": {"name": "mv", "namespace": "ns", "uid": "mv-uid", "generation": 1},
        "status": full | status,
    }


def _reconcile(spec: ModelVersionSpec, body: dict[str, Any]) -> Outcome | Unchanged:
    result = modelversion.reconcile(spec, ReconcileContext(body, None, now=lambda: NOW))
    assert isinstance(result, Outcome | Unchanged)
    return result


def test_a_settled_version_costs_nothing():
    ready = {"status": "True", "reason": "Accepted", "message": "gates passed"}
    assert isinstance(_reconcile(UNREGISTERED, _body(UNREGISTERED, "Ready", ready)), Unchanged)


@pytest.mark.parametrize(
    ("spec", "phase", "registry", "expected"),
    [
        (UNREGISTERED, "Ready", None, ("True", "Accepted")),
        (REGISTERED, "Ready", {"version": "3", "promotedGeneration": 1}, ("True", "Registered")),
        (UNREGISTERED, "Rejected", None, ("False", "Rejected")),
    ],
)
def test_an_engine_error_on_a_settled_version_is_replaced_by_what_the_status_says(
    spec, phase, registry, expected
):
    # A transient apiserver error (ApiError) replaced Ready; the next reconcile restates the phase's
    # condition: a version that was never registered must not be told Registered.
    extra = {"registry": registry} if registry else {}
    error = {"status": "False", "reason": "ApiError", "message": "500 from the apiserver"}
    outcome = _reconcile(spec, _body(spec, phase, error, **extra))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == phase
    ready = next(c for c in outcome.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == expected
