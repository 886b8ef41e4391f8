"""What every kind's handler shares: spec parsing, the outcome of a reconcile, and the status patch.

A kind's `reconcile` returns an `Outcome` (desired phase, conditions, status fields). `status_patch`
turns it into the minimal status patch against what the object already says, or into nothing at all
when nothing changed, so an idle operator makes no writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..k8s.conditions import ConditionUpdate, find_condition, set_conditions
from ..k8s.events import Event

READY = "Ready"

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded; pure data, turned into a status patch by `status_patch`."""

    phase: str
    conditions: tuple[ConditionUpdate, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()  # posted besides the ones for condition transitions


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed: worth an event."""

    type: str
    status: str
    reason: str
    message: str


def parse_spec(model: type[SpecT], spec: Mapping[str, Any]) -> SpecT | Outcome:
    """The typed spec, or an InvalidSpec outcome for what the schema could not catch."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()[:5]
        )
        return Outcome(
            phase="Failed",
            conditions=(ConditionUpdate(READY, "False", "InvalidSpec", problems),),
        )


def status_patch(
    status: Mapping[str, Any] | None,
    outcome: Outcome,
    generation: int | None,
    *,
    now: str | None = None,
) -> tuple[dict[str, Any], list[Transition]]:
    """The status fields to patch (empty when nothing changed) and the condition transitions."""
    status = status or {}
    old_conditions = list(status.get("conditions") or [])
    conditions, conditions_changed = set_conditions(
        old_conditions, outcome.conditions, generation=generation, now=now
    )
    patch: dict[str, Any] = {}
    if conditions_changed:
        patch["conditions"] = conditions
    desired = {"phase": outcome.phase, "observedGeneration": generation, **outcome.fields}
    for key, value in desired.items():
        if status.get(key) != value:
            patch[key] = value
    transitions = []
    for update in outcome.conditions:
        before = find_condition(old_conditions, update.type)
        if before is None or before.get("status") != update.status or before.get("reason") != update.reason:
            transitions.append(Transition(update.type, update.status, update.reason, update.message))
    return patch, transitions


def not_implemented(kind: str) -> Outcome:
    """The honest outcome of a kind whose controller has not been written yet."""
    return Outcome(
        phase="Pending",
        conditions=(
            ConditionUpdate(
                READY,
                "False",
                "NotImplemented",
                f"the {kind} controller is not implemented in this operator version; the spec is valid",
            ),
        ),
    )
