"""The result summary: one JSON object of at most 4 KiB in the container's termination message.

A workload writes it to the termination-message path; Kubernetes copies that file into
`pod.status.containerStatuses[].state.terminated.message` (keeping at most 4096 bytes), so the
operator learns the outcome from the pod alone, without reaching S3 or the logs.

Fields (names below): `schema`, `command`, `status` (Succeeded, Failed, Preempted), `retryable`,
`exitCode`, `reason` (a CamelCase word the operator copies into conditions), `message`, then
optional ones: `metrics` (name -> number), `artifacts` (name -> URI), `checkpoint` ({uri, step}),
`wandb` ({runId, path, ...}), `steps`, `durationSeconds`, `details`, and `truncated` when fields
were dropped to fit the limit.
"""

from __future__ import annotations

import json
from typing import Any

from .exitcodes import ExitCode, is_retryable

SCHEMA = "mlops.dev/trainer-result/v1"
# What Kubernetes keeps of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
# Where the operator points the container's terminationMessagePath, and the workload's default.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# Field names.
SCHEMA_FIELD = "schema"
COMMAND = "command"
STATUS = "status"
RETRYABLE = "retryable"
EXIT_CODE = "exitCode"
REASON = "reason"
MESSAGE = "message"
METRICS = "metrics"
ARTIFACTS = "artifacts"
CHECKPOINT = "checkpoint"
WANDB = "wandb"
HISTORY = "history"
VIOLATIONS = "violations"
DETAILS = "details"
STEPS = "steps"
DURATION_SECONDS = "durationSeconds"
TRUNCATED = "truncated"

# Values of `status`.
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PREEMPTED = "Preempted"

# Fields dropped, in this order, while the summary is too large; the essential ones are kept at all costs.
DROPPABLE_FIELDS = (DETAILS, HISTORY, VIOLATIONS, ARTIFACTS, WANDB, CHECKPOINT, METRICS)
ESSENTIAL_FIELDS = (SCHEMA_FIELD, COMMAND, STATUS, RETRYABLE, EXIT_CODE, REASON, MESSAGE)
# Kept of `command` and `reason` when even the essentials do not fit.
ESSENTIAL_WORD_MAX = 128


def summary(
    command: str,
    exit_code: ExitCode,
    *,
    reason: str = SUCCEEDED,
    message: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """The summary of one command; `retryable` follows from the exit code (`exitcodes.is_retryable`)."""
    if exit_code == ExitCode.SUCCESS:
        status = SUCCEEDED
    elif reason == PREEMPTED:
        status = PREEMPTED
    else:
        status = FAILED
    return {
        SCHEMA_FIELD: SCHEMA,
        COMMAND: command,
        STATUS: status,
        RETRYABLE: is_retryable(exit_code),
        EXIT_CODE: int(exit_code),
        REASON: reason,
        MESSAGE: message,
        **{k: v for k, v in fields.items() if v is not None},
    }


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, allow_nan=False).encode()


def encode_summary(value: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> bytes:
    """Serialize compactly; past `limit`, drop the least important fields, then shorten the message.

    The result is valid JSON that keeps the essential fields, and at most `limit` bytes for any limit
    of 2 KiB or more (the essentials alone, `command` and `reason` cut to 128 characters, fit in that).
    NaN and infinities are refused (ValueError): JSON has no such numbers.
    """
    trimmed = dict(value)
    data = _encode(trimmed)
    for name in DROPPABLE_FIELDS:
        if len(data) <= limit:
            return data
        if name in trimmed:
            del trimmed[name]
            trimmed[TRUNCATED] = True
            data = _encode(trimmed)
    if len(data) > limit:
        trimmed = {k: trimmed[k] for k in ESSENTIAL_FIELDS if k in trimmed} | {TRUNCATED: True}
        for name in (COMMAND, REASON):  # one word each by rights; never let them crowd out the rest
            if isinstance(trimmed.get(name), str):
                trimmed[name] = trimmed[name][:ESSENTIAL_WORD_MAX]
        message = str(value.get(MESSAGE, ""))
        # The longest start of the message that fits, escapes and all (a character takes 1 to 12 bytes
        # of JSON): a binary search over its length, a dozen encodings of a 4 KiB object at most.
        fits, too_long = 0, min(len(message), limit) + 1
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if len(_encode(trimmed | {MESSAGE: message[:middle] + "…"})) <= limit:
                fits = middle
            else:
                too_long = middle
        trimmed[MESSAGE] = message[:fits] + "…" if fits else ""
        data = _encode(trimmed)
    return data


def parse_summary(message: str | bytes | None) -> dict[str, Any] | None:
    """The JSON object in a termination message, or None when it holds none (empty, a log tail).

    Any JSON object is returned, ours or another workload's; `is_summary` tells ours apart.
    """
    if not message:
        return None
    try:
        value = json.loads(message)
    except ValueError:  # also UnicodeDecodeError for bytes that are not UTF-8
        return None
    return value if isinstance(value, dict) else None


def is_summary(value: object) -> bool:
    """Whether a parsed termination message is a result summary of this schema."""
    return isinstance(value, dict) and value.get(SCHEMA_FIELD) == SCHEMA
