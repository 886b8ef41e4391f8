"""Why a pod does not run, as its status says: shared by training attempts and serving pods. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..redaction import redact

# Why a container has not started, as the kubelet says it. The ones a new attempt with the same spec
# cannot fix fail a training attempt as not retryable once the start deadline passes.
STUCK_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
PERMANENT_START_FAILURES = frozenset({"InvalidImageName", "ErrImageNeverPull"})
MAX_MESSAGE = 1024


def stuck_container(
    pod: Mapping[str, Any], reasons: frozenset[str] = STUCK_REASONS, *, init_containers: bool = False
) -> tuple[str, str] | None:
    """The first container (init containers first, if asked) waiting for one of `reasons`: the
    reason and the kubelet's message, with the container's last termination message when it has
    one (a crash loop's own words: the log tail, redacted)."""
    status = pod.get("status") or {}
    statuses = list(status.get("containerStatuses") or [])
    if init_containers:
        statuses = [*(status.get("initContainerStatuses") or []), *statuses]
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in reasons:
            continue
        message = str(waiting.get("message") or waiting["reason"])
        last = (container.get("lastState") or {}).get("terminated") or {}
        if last.get("message"):
            tail = redact(str(last["message"])).strip()[-MAX_MESSAGE // 2 :]
            message = f"{message}; last exit {last.get('exitCode')}: {tail}"
        return str(waiting["reason"]), message
    return None


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message for a pod no node can take."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message") or "Unschedulable")
    return None
