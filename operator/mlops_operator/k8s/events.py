"""Kubernetes events about our objects.

Messages pass through `redact` first: events are readable by anyone who can `kubectl describe`, so
anything that looks like a credential is masked before it leaves the operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import kopf

_SECRETISH = re.compile(
    r"(?i)((?:aws_secret_access_key|secret|password|token|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"',;]+)"
)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """An event a reconcile wants posted on its object."""

    reason: str
    message: str
    type: EventType = "Normal"


def redact(text: str) -> str:
    """Mask values that follow credential-like keys, and AWS access key ids."""
    text = _SECRETISH.sub(lambda m: m.group(1) + "***", text)
    return _AWS_KEY_ID.sub("***", text)


def post_event(
    body: kopf.Body,
    reason: str,
    message: str,
    *,
    type_: EventType = "Normal",
) -> None:
    """Post an event on `body` (kopf queues and batches the API call)."""
    kopf.event(body, type=type_, reason=reason, message=redact(message)[:1024])
