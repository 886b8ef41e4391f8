"""The result contract: one JSON summary of at most 4 KiB written to the termination-message path.

Kubernetes copies that file into `pod.status.containerStatuses[].state.terminated.message` (it keeps
at most 4096 bytes), so the operator reads the outcome from the pod without reaching S3 or logs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ExitCode

SCHEMA = "mlops.dev/trainer-result/v1"
TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_PATH_ENV = "MLOPS_TERMINATION_MESSAGE_PATH"

# Fields dropped, in this order, while the summary is too large; the rest are kept at all costs.
_DROPPABLE = ("details", "history", "violations", "artifacts", "wandb", "checkpoint", "metrics")
_ESSENTIAL = ("schema", "command", "status", "retryable", "exitCode", "reason", "message")


def summary(
    command: str,
    exit_code: ExitCode,
    *,
    reason: str = "Succeeded",
    message: str = "",
    **fields: Any,
) -> dict[str, Any]:
    if exit_code == ExitCode.SUCCESS:
        status = "Succeeded"
    elif reason == "Preempted":
        status = "Preempted"
    else:
        status = "Failed"
    return {
        "schema": SCHEMA,
        "command": command,
        "status": status,
        "retryable": exit_code in (ExitCode.RETRYABLE, ExitCode.INTERNAL),
        "exitCode": int(exit_code),
        "reason": reason,
        "message": message,
        **{k: v for k, v in fields.items() if v is not None},
    }


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, allow_nan=False).encode()


def encode_summary(value: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> bytes:
    """Serialize compactly; past `limit`, drop the least important fields, then shorten the message."""
    trimmed = dict(value)
    data = _encode(trimmed)
    for name in _DROPPABLE:
        if len(data) <= limit:
            return data
        if name in trimmed:
            del trimmed[name]
            trimmed["truncated"] = True
            data = _encode(trimmed)
    if len(data) > limit:
        trimmed = {k: trimmed[k] for k in _ESSENTIAL if k in trimmed} | {"truncated": True}
        trimmed["message"] = ""
        room = limit - len(_encode(trimmed)) - 8  # slack for JSON escapes of the cut message
        message = str(value.get("message", ""))
        while room > 0:
            trimmed["message"] = message[:room] + "…"
            data = _encode(trimmed)
            if len(data) <= limit:
                return data
            room -= max(1, len(data) - limit)
        trimmed["message"] = ""
        data = _encode(trimmed)
    return data


def termination_message_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(TERMINATION_PATH_ENV) or DEFAULT_TERMINATION_MESSAGE_PATH)


def write_termination_message(value: dict[str, Any], path: str | Path | None = None) -> bytes:
    """Write the summary where Kubernetes reads it, and print it as the last log line."""
    data = encode_summary(value)
    target = Path(path) if path is not None else termination_message_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:  # outside a pod /dev/termination-log may not be writable: the log line remains
        print(f"mlops-trainer: cannot write termination message to {target}: {exc}", file=sys.stderr)
    print(data.decode(), flush=True)
    return data
