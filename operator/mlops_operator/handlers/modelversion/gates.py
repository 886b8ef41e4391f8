"""The verdict on an evaluated ModelVersion: the acceptance gates against the evaluator's metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...api.v1alpha1 import ModelVersionSpec
from ...builders.modelversion import check_gates
from ...k8s.conditions import ConditionUpdate
from ...metrics import MODELVERSION_GATE_FAILURES
from ..base import Outcome, ready


def judge(
    spec: ModelVersionSpec,
    metrics: Mapping[str, float],
    fields: Mapping[str, Any],
    finished: str,
    accepted: ConditionUpdate,
) -> Outcome:
    """Rejected when a gate fails (nothing is registered); else Registering, or Ready without a
    registry. `fields` (the evaluation's results) are recorded either way."""
    gates = check_gates(spec.gates, metrics)
    fields = {**fields, "gates": [g.wire() for g in gates]}
    failed = [g for g in gates if not g.passed]
    if failed:
        for gate in failed:
            MODELVERSION_GATE_FAILURES.labels(gate=gate.name).inc()
        named = "; ".join(f"{g.name}: {g.message}" for g in failed)
        message = f"{len(failed)} of {len(gates)} acceptance gates failed, nothing was registered: {named}"
        return Outcome(
            "Rejected",
            (ready("False", "GateFailed", message), accepted),
            {**fields, "completionTime": finished},
        )
    passed = f"{len(gates)} acceptance gates passed" if gates else "no acceptance gates set"
    if spec.registry is None:
        return Outcome(
            "Ready",
            (ready("True", "Accepted", f"{passed}; not registered (spec.registry is empty)"), accepted),
            {**fields, "completionTime": finished},
        )
    return Outcome(
        "Registering",
        (ready("False", "Registering", f"{passed}; registering in {spec.registry.provider}"), accepted),
        fields,
        requeue_after=0.0,
    )
