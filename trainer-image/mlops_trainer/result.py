"""Writing the result summary where Kubernetes reads it.

The summary itself (schema, fields, the 4 KiB limit and how it is trimmed to fit) is the operator's
contract, `mlops_contract.result`; this module only puts it in the termination-message file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mlops_contract import envvars
from mlops_contract.result import (
    SCHEMA,
    TERMINATION_MESSAGE_LIMIT,
    TERMINATION_MESSAGE_PATH,
    encode_summary,
    summary,
)

__all__ = [
    "SCHEMA",
    "TERMINATION_MESSAGE_LIMIT",
    "encode_summary",
    "summary",
    "termination_message_path",
    "write_termination_message",
]


def termination_message_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(envvars.TERMINATION_MESSAGE_PATH) or TERMINATION_MESSAGE_PATH)


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
