"""Kubernetes events about our objects.

Reasons and messages pass through `redact` first (a reason can come from a workload's result):
events are readable by anyone who can `kubectl describe`, so anything that looks like a credential
is masked before it leaves the operator (`redaction.redact`, re-exported here).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..redaction import redact
from ..timeutil import to_rfc3339

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """An event a reconcile wants posted on its object."""

    reason: str
    message: str
    type: EventType = "Normal"


REPORTING_COMPONENT = "mlops-operator"
_INSTANCE = socket.gethostname()[:128]


def event_manifest(obj: Mapping[str, Any], event: Event, *, now: datetime | None = None) -> dict[str, Any]:
    """A core/v1 Event about `obj` (pure: the engine posts it from its worker threads)."""
    meta = obj["metadata"]
    stamp = to_rfc3339(now or datetime.now(UTC))
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": redact(event.reason)[:128],
        "message": redact(event.message)[:1024],
        "type": event.type,
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": _INSTANCE,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


__all__ = ["Event", "EventType", "event_manifest", "redact"]
