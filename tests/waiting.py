"""Polling with a deadline and a useful failure message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 30, interval: float = 0.25) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def wait_for_events(
    core: Any, namespace: str, name: str, check: Callable[[list[Any]], bool], what: str, timeout: float = 10
) -> list[Any]:
    """The events of object `name` once `check` accepts them. The operator posts events from a
    queue after it patches status, so a test that has just seen a status must wait for its events."""

    def probe() -> list[Any] | None:
        events = list(
            core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        )
        return events if check(events) else None

    return wait_for(probe, what, timeout)
