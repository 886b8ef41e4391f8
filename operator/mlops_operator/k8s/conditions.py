"""Condition bookkeeping with `meta.SetStatusCondition` semantics.

A condition's lastTransitionTime changes only when its status changes; setting a condition to what
it already says changes nothing, so the caller can skip the status write entirely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..timeutil import to_rfc3339

ConditionStatus = Literal["True", "False", "Unknown"]

# metav1.Condition's reason: CamelCase, at most 1024 characters (we keep them far shorter).
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MAX_REASON = 128


def condition_reason(text: str) -> str:
    """`text` as a valid condition reason: a trainer's free-form reason becomes CamelCase words."""
    if REASON.match(text) and len(text) <= MAX_REASON:
        return text
    words = re.findall(r"[A-Za-z0-9]+", text)
    reason = "".join(w[:1].upper() + w[1:] for w in words).lstrip("0123456789")[:MAX_REASON]
    return reason or "Unknown"


def now_rfc3339() -> str:
    return to_rfc3339(datetime.now(UTC))


@dataclass(frozen=True)
class ConditionUpdate:
    """What a reconcile wants a condition to say."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    update: ConditionUpdate,
    *,
    generation: int | None,
    now: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Return (new conditions, changed). Order is kept; a new type is appended."""
    result: list[dict[str, Any]] = []
    changed = True
    found = False
    for existing in conditions:
        current = dict(existing)
        if current.get("type") == update.type:
            found = True
            desired = {
                "type": update.type,
                "status": update.status,
                "reason": update.reason,
                "message": update.message,
                "observedGeneration": generation,
                "lastTransitionTime": current.get("lastTransitionTime") or now or now_rfc3339(),
            }
            if current.get("status") != update.status:
                desired["lastTransitionTime"] = now or now_rfc3339()
            if generation is None:
                desired.pop("observedGeneration")
            changed = desired != current
            current = desired
        result.append(current)
    if not found:
        new: dict[str, Any] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": now or now_rfc3339(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        result.append(new)
    return result, changed


def set_conditions(
    conditions: Iterable[Mapping[str, Any]],
    updates: Iterable[ConditionUpdate],
    *,
    generation: int | None,
    now: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Apply several updates; changed is True when any of them changed something."""
    current = [dict(c) for c in conditions]
    any_changed = False
    for update in updates:
        current, changed = set_condition(current, update, generation=generation, now=now)
        any_changed = any_changed or changed
    return current, any_changed


def find_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    cond = find_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"
