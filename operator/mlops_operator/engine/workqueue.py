"""A keyed work queue with controller-runtime semantics, served by a fixed pool of threads.

- A key is queued at most once: a burst of triggers for one object (256 pod events of one run)
  becomes one reconcile.
- A key is processed by one worker at a time; a trigger that arrives while it is being processed
  marks it dirty, and it runs once more afterwards. No per-object lock is ever held while waiting,
  so one slow object occupies one worker, never the pool.
- `add_after` schedules a key for a due time; only the earliest due time per key is kept, so the
  delayed set holds at most one entry per live object.
- `forget` drops a key's error backoff and any delayed wake-up (the object was deleted).
- Fairness: with `group` (the key's namespace) and `max_per_group`, one group never holds more than
  that many workers at once; its other keys wait while other groups' keys are handed out, so one
  tenant's slow S3 or registry cannot take the whole pool.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        process: Callable[[K], float | None],
        *,
        workers: int,
        name: str = "reconcile",
        clock: Callable[[], float] = time.monotonic,
        group: Callable[[K], Hashable] | None = None,
        max_per_group: int = 0,
    ) -> None:
        """`process(key)` reconciles one key and returns the seconds until it is due again, or None."""
        self._process = process
        self._workers = workers
        self._group = group
        self._max_per_group = max_per_group if group is not None and max_per_group > 0 else 0
        self._busy_groups: dict[Hashable, int] = {}
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[K] = deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._due: dict[K, float] = {}  # the earliest delayed wake-up of each key
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._paused = False
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- feeding ------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            current = self._due.get(key)
            if current is not None and current <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, key))
            self._cond.notify_all()

    def forget(self, key: K) -> None:
        with self._cond:
            self._due.pop(key, None)  # its heap entry is skipped when it surfaces

    def _add_locked(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.append(key)
        self._cond.notify_all()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def pause(self, paused: bool) -> None:
        """A paused queue keeps collecting keys but hands none out (a standby replica)."""
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def _promote_due_locked(self) -> float | None:
        """Move due keys to the ready queue; return the seconds until the next one is due."""
        now = self._clock()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # superseded by an earlier wake-up, or forgotten
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            self._add_locked(key)
        return None

    def _next_locked(self) -> K | None:
        while not self._stopping:
            wait = self._promote_due_locked()
            key = self._pop_allowed_locked() if self._ready and not self._paused else None
            if key is not None:
                self._queued.discard(key)
                self._active.add(key)
                if self._max_per_group:
                    group = self._group(key) if self._group else None
                    self._busy_groups[group] = self._busy_groups.get(group, 0) + 1
                return key
            self._cond.wait(timeout=wait if wait is not None else 1.0)
        return None

    def _pop_allowed_locked(self) -> K | None:
        """The first ready key whose group has a worker to spare (all of them without groups)."""
        if not self._max_per_group:
            return self._ready.popleft()
        for index, key in enumerate(self._ready):
            if self._busy_groups.get(self._group(key) if self._group else None, 0) < self._max_per_group:
                del self._ready[index]
                return key
        return None

    def _release_group_locked(self, key: K) -> None:
        if not self._max_per_group:
            return
        group = self._group(key) if self._group else None
        left = self._busy_groups.get(group, 0) - 1
        if left > 0:
            self._busy_groups[group] = left
        else:
            self._busy_groups.pop(group, None)
        self._cond.notify_all()  # a key of that group may be handed out now

    def _work(self) -> None:
        while True:
            with self._cond:
                key = self._next_locked()
            if key is None:
                return
            requeue: float | None = None
            try:
                requeue = self._process(key)
            except Exception:  # the processor turns errors into conditions; this is the last guard
                log.exception("processing %s failed", key)
                requeue = 5.0
            with self._cond:
                self._active.discard(key)
                self._release_group_locked(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self._add_locked(key)
            if requeue is not None:
                self.add_after(key, requeue)

    # -- introspection (metrics, tests) ----------------------------------------------------------

    def depth(self) -> int:
        with self._cond:
            return len(self._ready)

    def delayed(self) -> int:
        with self._cond:
            return len(self._due)
