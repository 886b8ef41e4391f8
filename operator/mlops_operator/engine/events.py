"""Events are posted by a small pool of their own, off the reconcile path.

An event is for people reading `kubectl describe`; a reconcile should not wait for it. The queue is
bounded: when the apiserver cannot keep up, the newest events are dropped with a log line and a
metric, never the reconcile.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..k8s.rawapi import RawApi
from ..metrics import EVENTS_DROPPED

log = logging.getLogger(__name__)


class EventPoster:
    def __init__(self, raw: RawApi, *, workers: int = 4, capacity: int = 10_000) -> None:
        self._raw = raw
        self._queue: queue.Queue[tuple[str, Mapping[str, Any]] | None] = queue.Queue(capacity)
        self._threads = [
            threading.Thread(target=self._work, name=f"events-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5) -> None:
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout)

    def post(self, namespace: str, manifest: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait((namespace, manifest))
        except queue.Full:
            EVENTS_DROPPED.inc()
            log.warning("event queue full; dropped event %s", manifest.get("reason"))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            namespace, manifest = item
            try:
                self._raw.create("Event", namespace, manifest)
            except ApiException as error:  # an event is worth a log line, never a failed reconcile
                log.warning("posting event %s failed: HTTP %s", manifest.get("reason"), error.status)
            except Exception:
                log.exception("posting event %s failed", manifest.get("reason"))
