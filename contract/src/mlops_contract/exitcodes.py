"""Exit codes of every workload command, and which of them another attempt can fix.

The codes follow sysexits(3), so a Kubernetes Job `podFailurePolicy` can act on them directly.
The operator reads the `retryable` field of the result summary first (under torchrun the pod's exit
code is torchrun's own) and falls back to `is_retryable(exit_code)` when there is no summary.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the workloads, and the one code a container gets from being killed."""

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
    # 128 + SIGTERM: killed by a SIGTERM the process did not handle (a drained node, a command with no
    # handler, a signal before the handler was installed). Never returned by a workload itself, but a
    # pod's exit code all the same: retryable, the next attempt resumes from the last checkpoint.
    TERMINATED = 143


RETRYABLE_EXIT_CODES: frozenset[int] = frozenset({ExitCode.INTERNAL, ExitCode.RETRYABLE, ExitCode.TERMINATED})
PERMANENT_EXIT_CODES: frozenset[int] = frozenset(
    {ExitCode.USAGE, ExitCode.DATA, ExitCode.MODEL_CHECK, ExitCode.CONFIG}
)


def is_retryable(exit_code: int) -> bool:
    """Whether another attempt can help a process that exited with `exit_code`.

    Any code not listed as retryable is permanent, including ones no workload uses (a segfault's 139,
    SIGKILL's 137): retrying blind would repeat a crash up to maxAttempts times.
    """
    return exit_code in RETRYABLE_EXIT_CODES
