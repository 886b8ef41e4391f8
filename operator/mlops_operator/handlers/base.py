"""What every kind's handler shares: spec parsing, the outcome of a reconcile, and the status patch.

A kind's `reconcile` returns an `Outcome` (desired phase, conditions, status fields, and when the
object is due again), or `Unchanged` when nothing is due. `status_patch` turns an Outcome into the
minimal status patch against what the object already says, or into nothing at all when nothing
changed, so an idle operator makes no writes. `checked_status` proves the result against the kind's
status model before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..k8s.conditions import ConditionUpdate, condition_reason, find_condition, set_conditions
from ..k8s.events import Event
from ..observation.serving import SERVING_STUCK_REASONS
from ..redaction import redact
from ..settings import OperatorConfig
from ..timeutil import from_rfc3339

READY = "Ready"
# Ready reasons that only the engine sets, on an unexpected error; a handler restating its own Ready
# replaces them once the error is gone.
ENGINE_REASONS = frozenset({"ChildRejected", "Forbidden", "ApiError", "ReconcileError", "InvalidStatus"})
# Ready=False reasons that need someone's attention (a Warning event) although the phase is not
# Failed: the object waits on something broken outside it, or was refused.
ATTENTION_REASONS = frozenset(
    {
        "GateFailed",
        "RegistryUnavailable",
        "RegistryRejected",
        "SourceUnavailable",
        "CredentialsUnavailable",
        "EndpointNotAllowed",
        "AnalysisFailed",
        "EngineGPUMismatch",
        "RepositoryUnavailable",
        "InvalidModel",
        "FailedCreate",
        "ProgressDeadlineExceeded",
        # Queued, but no node could ever take the pods as they ask; or Kueue evicted a running Job.
        "NoNodeFits",
        "Preempted",
    }
    # Pods that do not start; not Unschedulable: waiting for GPUs to free up is a queue, not a fault.
    | SERVING_STUCK_REASONS
)
# Ready=False reasons that a later look may heal with no change to the object or its children: an
# outage, a Secret not created yet, an allow-list an administrator may widen, an API error. The engine
# requeues every outcome with one of these that names no due time of its own, with the same backoff
# (half the time it has been failing, within the retry settings): one rule for all kinds.
TRANSIENT_REASONS = frozenset(
    {
        "SourceUnavailable",
        "RegistryUnavailable",
        "RegistryBusy",
        "RepositoryUnavailable",
        "CredentialsUnavailable",
        "EndpointNotAllowed",
        "MetricsUnavailable",
        "AnalysisError",
        "RolloutsUnavailable",
    }
    | ENGINE_REASONS
)
# Conditions whose True is the abnormal state (Kubernetes' "abnormal-true" polarity, like a node's
# MemoryPressure): their turning False is good news, so no transition event.
ABNORMAL_TRUE = frozenset({"CanaryWaiting", "AnalysisDisabled", "Drifted", "DriftUnfixable"})
MAX_MESSAGE = 1024  # condition and event messages: enough to act on, bounded for etcd and kubectl
# Status fields written as they are: `pinned` is the operator's copy of specs (which hold only
# Secret references, never values) that retries are built from; masking it would change a retry.
UNREDACTED_FIELDS = frozenset({"pinned"})

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded; pure data, turned into a status patch by `status_patch`."""

    phase: str
    conditions: tuple[ConditionUpdate, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()  # posted besides the ones for condition transitions
    # Seconds until something this object names is due (a backoff end, a refresh, a TTL, a start
    # deadline); None: nothing is due, only a change of the object or its children wakes it.
    requeue_after: float | None = None


@dataclass(frozen=True)
class Unchanged:
    """Nothing to do now: the status stands as it is; look again after `requeue_after` seconds."""

    requeue_after: float | None = None


Result = Outcome | Unchanged


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


def redacted(value: Any) -> Any:
    """`value` with every string in it passed through `redact`, mapping keys too: a workload names
    the keys of `status.metrics` and could put a secret there."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(k) if isinstance(k, str) else k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def status_patch(
    status: Mapping[str, Any] | None,
    outcome: Outcome,
    generation: int | None,
    *,
    now: str | None = None,
) -> tuple[dict[str, Any], list[Transition]]:
    """The status fields to patch (empty when nothing changed) and the condition transitions.

    The one path every status write takes, so the one place secrets are masked: condition messages
    and string fields (a trainer's message, a log tail) are redacted before they are compared with
    what the status already says, and before they become events.
    """
    status = status or {}
    old_conditions = list(status.get("conditions") or [])
    updates = [
        ConditionUpdate(u.type, u.status, condition_reason(redact(u.reason)), redact(u.message)[:MAX_MESSAGE])
        for u in outcome.conditions
    ]
    conditions, conditions_changed = set_conditions(old_conditions, updates, generation=generation, now=now)
    patch: dict[str, Any] = {}
    if conditions_changed:
        patch["conditions"] = conditions
    fields = {k: v if k in UNREDACTED_FIELDS else redacted(v) for k, v in outcome.fields.items()}
    desired = {"phase": outcome.phase, "observedGeneration": generation, **fields}
    for key, value in desired.items():
        if status.get(key) != value:
            patch[key] = value
    transitions = []
    for update in updates:
        before = find_condition(old_conditions, update.type)
        if update.type in ABNORMAL_TRUE and update.status == "False":
            continue  # good news: no event (least of all a Warning)
        if before is None or before.get("status") != update.status or before.get("reason") != update.reason:
            transitions.append(Transition(update.type, update.status, update.reason, update.message))
    return patch, transitions


def checked_status(
    model: type[BaseModel], status: Mapping[str, Any] | None, patch: Mapping[str, Any]
) -> dict[str, Any]:
    """The patch, once the status it produces has passed the kind's status model (raises otherwise).

    Valid by construction: a NaN, an over-long string or a wrong type is caught here, in the
    operator, with a message naming the field, instead of as a 422 from the apiserver.
    """
    merged = {**(status or {}), **{k: v for k, v in patch.items() if v is not None}}
    model.model_validate_json(json.dumps(merged, allow_nan=True), strict=True)
    return dict(patch)


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


def ready(status: str, reason: str, message: str) -> ConditionUpdate:
    """The Ready condition of an outcome, its message cut to MAX_MESSAGE."""
    return ConditionUpdate(READY, status, reason, message[:MAX_MESSAGE])  # type: ignore[arg-type]


def outage_retry_delay(
    failing_since: str | None, now: datetime, *, minimum: timedelta, maximum: timedelta
) -> timedelta:
    """When to look again at something unavailable since `failing_since` (RFC 3339; None: since
    now): after half the time it has been failing, within minimum..maximum. Quick after a blip,
    gentle on a long outage, and no retry counter to keep in status."""
    failing_for = now - from_rfc3339(failing_since) if failing_since else timedelta(0)
    return min(max(failing_for / 2, minimum), maximum)


def outage_requeue(
    conditions: list[Mapping[str, Any]] | None,
    reason: str,
    now: datetime,
    config: OperatorConfig,
    *,
    failing_since: str | None = None,
) -> float:
    """Seconds until an object whose Ready says `reason` (something unavailable) is looked at again:
    the one retry rule of every kind and of the engine (`outage_retry_delay` within the operator's
    retry settings), measured from when Ready took that reason (else `failing_since`, else now)."""
    ready: Mapping[str, Any] = find_condition(conditions or [], READY) or {}
    since = ready.get("lastTransitionTime") if ready.get("reason") == reason else failing_since
    delay = outage_retry_delay(
        since,
        now,
        minimum=timedelta(seconds=config.retry_min_seconds),
        maximum=timedelta(seconds=config.retry_max_seconds),
    )
    return delay.total_seconds()
