"""Failure classes, each with the exit code the operator reads from the pod.

The exit codes and which of them are retryable are the operator's contract (`mlops_contract.exitcodes`,
re-exported here): permanent failures fail the run at once, retryable ones are retried from the last
checkpoint.
"""

from __future__ import annotations

from typing import Any

from mlops_contract.exitcodes import ExitCode, is_retryable

__all__ = [
    "ConfigError",
    "DataError",
    "ExitCode",
    "ModelCheckError",
    "PreemptedError",
    "StorageUnavailableError",
    "TensorRTUnavailableError",
    "TrainerError",
]


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
        return is_retryable(self.exit_code)


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
