"""Failure classes and the exit codes the operator reads from the pod.

Exit codes follow sysexits(3) so a Kubernetes Job `podFailurePolicy` can act on them directly:
permanent failures fail the Job at once, retryable ones are retried (from the last checkpoint).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes of every `mlops-trainer` command."""

    SUCCESS = 0
    # An unexpected error (a bug, a crashed collective): retried, bounded by the run's maxAttempts.
    INTERNAL = 1
    # argparse's own code for a malformed command line: permanent.
    USAGE = 2
    # Permanent: the data set violates its contract or cannot be decoded (EX_DATAERR).
    DATA = 65
    # Permanent: the model failed a check that retrying cannot fix, e.g. ONNX parity (EX_SOFTWARE).
    MODEL_CHECK = 70
    # Retryable: preempted / SIGTERM after a checkpoint, or storage temporarily unreachable (EX_TEMPFAIL).
    RETRYABLE = 75
    # Permanent: bad configuration, unknown model, missing credentials, TensorRT absent (EX_CONFIG).
    CONFIG = 78


RETRYABLE_EXIT_CODES = frozenset({ExitCode.INTERNAL, ExitCode.RETRYABLE})
PERMANENT_EXIT_CODES = frozenset({ExitCode.USAGE, ExitCode.DATA, ExitCode.MODEL_CHECK, ExitCode.CONFIG})


class TrainerError(Exception):
    """A failure with a known class; `reason` is a CamelCase word the operator copies into conditions."""

    exit_code: ExitCode = ExitCode.INTERNAL
    reason: str = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        # Extra summary fields (e.g. the step and checkpoint a preempted run stopped at).
        self.details: dict[str, Any] = details or {}

    @property
    def retryable(self) -> bool:
        return self.exit_code in RETRYABLE_EXIT_CODES


class ConfigError(TrainerError):
    exit_code = ExitCode.CONFIG
    reason = "InvalidConfig"


class TensorRTUnavailableError(ConfigError):
    reason = "TensorRTUnavailable"


class DataError(TrainerError):
    exit_code = ExitCode.DATA
    reason = "InvalidData"


class ModelCheckError(TrainerError):
    exit_code = ExitCode.MODEL_CHECK
    reason = "ModelCheckFailed"


class PreemptedError(TrainerError):
    exit_code = ExitCode.RETRYABLE
    reason = "Preempted"


class StorageUnavailableError(TrainerError):
    exit_code = ExitCode.RETRYABLE
    reason = "StorageUnavailable"
