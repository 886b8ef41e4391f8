"""Stopping the local servers of tests and `mlopsctl dev` (MLflow, tritonserver): each runs in a
process group of its own (start_new_session), so their children (uvicorn, backend stubs) go too."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from types import TracebackType
from typing import Self


def signal_group(group: int, signum: int) -> bool:
    """Send `signum` to the process group; whether any process of it was there."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen[bytes], timeout: float, *, linger: float = 0) -> None:
    """SIGTERM the process's group, SIGKILL it after `timeout`; wait up to `linger` seconds for
    children that outlive the leader a moment (a port they hold must be free for a restart), then
    SIGKILL whatever is left of the group."""
    group = process.pid  # start_new_session: the group id is the leader's pid
    signal_group(group, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(group, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + linger
    while linger and signal_group(group, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_group(group, signal.SIGKILL)


class Started:
    """A local server used as a context manager: `start()` on entry, `stop()` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
